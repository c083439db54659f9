"""Small iterator tools the input pipelines share: a shuffle buffer, batching, a prefetch thread.

Why: episodes arrive in file order and whole; training wants examples from many episodes mixed
(Octo's frame-level shuffle buffer) and wants the next batch ready before the step ends. The
prefetch thread overlaps Python-side work with the train step: tokenisation (Rust) and numpy
release the GIL for most of their time, and the train step runs in XLA.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def shuffle_buffer(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Items in a random order drawn from a buffer of `size` (1 = unshuffled); the buffer is
    emptied, in random order, when the input ends."""
    if size < 1:
        raise ValueError(f"shuffle buffer size must be >= 1, got {size}")
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = item
    order = rng.permutation(len(buffer))
    for i in order:
        yield buffer[int(i)]


def batched(items: Iterable[T], n: int, collate: Callable[[Sequence[T]], Any], drop_remainder: bool = True) -> Iterator:
    """`collate`d groups of `n` items; a last short group is dropped unless `drop_remainder` is False."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield collate(group)
            group = []
    if group and not drop_remainder:
        yield collate(group)


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
    """`items` produced by a background thread, at most `size` ahead; an exception in the
    producer is re-raised in the consumer. Closing the returned generator stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, which re-raises it)
            q.put(_Failure(e))

    thread = threading.Thread(target=produce, name="c2a-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
