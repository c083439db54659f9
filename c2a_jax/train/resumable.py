"""Resumable batch iterators: the data position saved in a checkpoint and restored on resume.

Protocol (`Resumable`): an iterator with ``state() -> dict`` (JSON-serialisable, describing the
position *after* the last batch it returned) and ``restore(state: dict) -> None`` (continue from
there). The train loop saves ``state()`` next to every checkpoint and calls ``restore`` on resume,
so a resumed run sees exactly the batches an uninterrupted one would have.

`CountingIterator` makes any deterministic iterator factory resumable: it counts the batches it
hands out, and on restore it rebuilds the iterator from the factory and skips that many batches.
Cost: restoring after ``n`` batches redoes the input pipeline's work for those ``n`` batches
(reading, decoding, tokenising; nothing reaches the device), i.e. roughly the pipeline's share of
the run so far, serially on the host; with a pipeline faster than the train step (``bench/data.py``)
this is a fraction of the time already trained, paid once per resume. It is only exact if the
factory is deterministic (seeded shuffles, a fixed file order, no wall-clock or thread-timing
dependence in the order). A natively checkpointable source (a tf.data iterator checkpoint, a
Grain ``DataLoader``, an index-based sampler over an array-record file) can save its real
position and restore in O(1); give such a source ``state``/``restore`` and the loop uses it as is.

The counting wrapper must be the outermost layer: a prefetching layer inside it is fine (its
read-ahead is rebuilt by the factory), one outside it would make the count run ahead of the
batches the loop actually trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Resumable(Protocol):
    def __next__(self) -> Any: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


class CountingIterator:
    """Iterator over ``factory()`` with ``state() == {"consumed": n}``; ``restore`` skips ahead."""

    def __init__(self, factory: Callable[[], Iterator[Any]]):
        self._factory = factory
        self._it: Iterator[Any] | None = None
        self._consumed = 0

    def __iter__(self) -> CountingIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._factory())
        item = next(self._it)
        self._consumed += 1
        return item

    def state(self) -> dict:
        return {"consumed": self._consumed}

    def restore(self, state: dict) -> None:
        consumed = int(state["consumed"])
        if consumed < 0:
            raise ValueError(f"iterator state has a negative position: {state!r}")
        self._it = iter(self._factory())
        for i in range(consumed):
            try:
                next(self._it)
            except StopIteration:
                raise ValueError(
                    f"cannot restore the data position: the iterator ends after {i} batches, the checkpoint "
                    f"was taken after {consumed}"
                ) from None
        self._consumed = consumed


def resumable(source: Any) -> Resumable:
    """`source` itself if it already has ``state``/``restore``, else a factory (a callable returning
    a fresh iterator) wrapped in `CountingIterator`."""
    if isinstance(source, Resumable):
        return source
    if callable(source):
        built = source()
        if isinstance(built, Resumable):
            return built
        first = [built]

        def factory():
            return first.pop() if first else source()

        return CountingIterator(factory)
    raise TypeError(
        "make_batches must be a factory (a callable returning an iterator of batches) or an iterator with "
        f"state()/restore(); got {type(source).__name__}"
    )
