"""Checkpoints: orbax `CheckpointManager` (async, keep-N, every K steps), self-describing, exact resume.

Each checkpoint ``<workdir>/checkpoints/<step>/`` holds these orbax items:

* ``state``: the `TrainState` (step, parameters, model variables, optimizer state, RNG key),
  saved sharded from every process (``StandardSave``) and restored straight into the target
  shardings of an abstract state (``StandardRestore``), so no host ever holds the whole model;
* ``config``: the resolved run config (JSON);
* ``tokenizer``: a reference to the tokenizer (e.g. ``{"name": "c2a-tiny"}`` or a local directory
  and its hash), so a checkpoint can be decoded without its run directory;
* ``dataset_statistics``: the normalisation statistics the model was trained with;
* ``data_iterator``: every process's data position (`c2a_jax.train.resumable`), gathered to the
  primary process: ``{"process_count": n, "states": [state of process 0, ...]}``.

Saving is asynchronous (orbax copies the arrays off the devices, then writes in a background
thread while training goes on); a checkpoint directory appears under its final name only when
complete, so a crash mid-write leaves the previous checkpoints intact. `wait` blocks until pending
writes are done (the loop calls it at exit).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

JSON_ITEMS = ("config", "tokenizer", "dataset_statistics", "data_iterator")
ITEMS = ("state", *JSON_ITEMS)


def _allgather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-serialisable), in process order, on every process."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(gathered, lengths, strict=True)]


def _jsonable(obj: Any) -> Any:
    """A JSON round trip (tuples -> lists, numpy scalars -> numbers); errors name the bad value."""
    try:
        return json.loads(json.dumps(obj, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint item is not JSON-serialisable: {e}") from None


class Checkpointer:
    """A run's checkpoints (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        save_every: int = 1000,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if save_every < 1:
            raise ValueError(f"train.checkpoint_every must be >= 1, got {save_every}")
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Every ``save_every`` steps (orbax's own policy would also save the first step it sees)."""
        return step > 0 and step % self.save_every == 0

    def save(
        self,
        step: int,
        state: Any,
        *,
        items: Mapping[str, Any] | None = None,
        data_state: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save `state` and the JSON `items` (keys among ``config``, ``tokenizer``,
        ``dataset_statistics``) plus this process's `data_state`. Collective: every process calls it
        at the same steps. Returns whether a save was started: steps off the ``save_every`` interval
        are skipped unless `force`, and so is a step that is already saved."""
        items = dict(items or {})
        unknown = set(items) - set(JSON_ITEMS[:-1])
        if unknown:
            raise ValueError(f"unknown checkpoint items {sorted(unknown)}; known: {list(JSON_ITEMS[:-1])}")
        if step in self._manager.all_steps():
            return False
        if not force and not self.should_save(step):
            return False
        states = _allgather_json(_jsonable(dict(data_state or {})))
        json_items = {name: _jsonable(items.get(name) or {}) for name in JSON_ITEMS[:-1]}
        json_items["data_iterator"] = {"process_count": len(states), "states": states}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            **{name: ocp.args.JsonSave(value) for name, value in json_items.items()},
        )
        return self._manager.save(step, args=args, force=True)

    def restore(
        self, abstract_state: Any, step: int | None = None, *, data_position: bool = True
    ) -> tuple[Any, dict[str, Any], dict | None]:
        """``(state, items, data_state)`` of checkpoint `step` (default: the latest).

        `abstract_state`: the state's `jax.ShapeDtypeStruct` tree *with the target shardings*
        (`c2a_jax.parallel.rules.with_shardings`); arrays are read straight into them. `data_state`
        is this process's saved data position (None if the checkpoint has none, or with
        ``data_position=False``, for reading weights only); resuming a checkpoint written by a
        different number of processes is refused, naming both counts."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            **{name: ocp.args.JsonRestore() for name in JSON_ITEMS},
        )
        restored = self._manager.restore(step, args=args)
        items = {name: restored[name] for name in JSON_ITEMS[:-1]}
        data = restored["data_iterator"] or {}
        states = data.get("states") or []
        data_state = None
        if states and data_position:
            if len(states) != jax.process_count():
                raise ValueError(
                    f"checkpoint {self.directory}/{step} holds data positions of {len(states)} processes, this run "
                    f"has {jax.process_count()}; resume with the same number of processes"
                )
            data_state = states[jax.process_index()] or None
        return restored["state"], items, data_state

    def read_items(self, step: int | None = None) -> dict[str, Any]:
        """The JSON items of a checkpoint (no arrays read): config, tokenizer, statistics, data."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(**{name: ocp.args.JsonRestore() for name in JSON_ITEMS})
        restored = self._manager.restore(step, args=args)
        return {name: restored[name] for name in JSON_ITEMS}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
