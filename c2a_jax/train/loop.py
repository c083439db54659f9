"""The training loop shared by the VLM (``train_vlm.py``) and the diffusion policy (``train_dp.py``).

`train` ties the pieces together: multi-process start-up, the mesh, the optimizer, the train
state created directly in its shardings (or restored from the work directory's latest
checkpoint, with the data position), the jitted step, metrics, evaluation and checkpoints. It
knows nothing about the model beyond three callables:

* ``model_fn(rngs) -> nnx.Module``: builds the model (random init; traced, never run eagerly);
* ``loss_fn(model, batch, rng) -> (loss, metrics)``: the objective on a global batch;
* ``make_batches``: a factory returning an iterator of this process's numpy batches (deterministic
  for exact resume; wrapped in `c2a_jax.train.resumable.CountingIterator`), or an iterator that
  already has ``state()``/``restore()``.

Config keys read (defaults in `DEFAULTS`; `with_defaults` fills them in and the filled config is
what ``<workdir>/config.json`` and the checkpoints hold)::

    seed
    mesh.data / mesh.fsdp / mesh.tensor               (c2a_jax.parallel.mesh)
    sharding.rules / sharding.min_fsdp_bytes           (c2a_jax.parallel.rules)
    distributed.*                                      (c2a_jax.parallel.distributed)
    train.steps, train.batch_size (global rows; 0: not checked)
    train.learning_rate, warmup_steps, end_lr_fraction, b1, b2, eps, weight_decay,
          weight_decay_exclude, grad_clip, freeze, param_groups   (c2a_jax.train.optimizer)
    train.accum_steps, train.accum_weight_key          (c2a_jax.train.step)
    train.ema_power (0: off), ema_max_decay, ema_min_decay, ema_update_after_step,
          ema_inv_gamma                                (c2a_jax.train.ema)
    train.log_every, train.eval_every, train.checkpoint_every, train.keep_checkpoints,
          train.async_checkpoint, train.tensorboard, train.progress, train.peak_flops_per_device

Stopping: SIGTERM (preemption) and SIGINT (Ctrl-C) set a flag that the loop checks between
steps (with several processes: at log steps, agreed by all processes, so they stop after the same
step); it then saves a checkpoint of the last finished step and returns with ``stopped`` set (a
second Ctrl-C interrupts at once). Any other exception saves the last finished step too (when its
arrays are intact; single-process runs only, since saving is collective) and is re-raised. Every run ends with a checkpoint of its last step. With
several processes every process's batch iterator must last as long as the others' (the RLDS
readers repeat forever): a process whose data runs out cannot take part in the next step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from c2a_jax.config import to_json
from c2a_jax.fileio import atomic_write_text
from c2a_jax.parallel import distributed
from c2a_jax.parallel import rules as rules_lib
from c2a_jax.parallel.mesh import make_mesh
from c2a_jax.train.checkpoint import Checkpointer
from c2a_jax.train.ema import EmaConfig
from c2a_jax.train.metrics import MetricsWriter, Throughput, peak_flops_per_device
from c2a_jax.train.optimizer import DEFAULT_WEIGHT_DECAY_EXCLUDE, make_optimizer
from c2a_jax.train.resumable import resumable
from c2a_jax.train.state import init_fn_for, model_from_state, seed_key
from c2a_jax.train.step import batch_shardings, jit_train_step, make_train_step

log = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, Any]] = {
    "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
    "sharding": {"rules": rules_lib.DEFAULT_RULES, "min_fsdp_bytes": 1 << 16},
    "distributed": dict(distributed.CONFIG_DEFAULTS),
    "train": {
        "steps": 1000,
        "batch_size": 0,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "end_lr_fraction": 0.0,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "weight_decay_exclude": DEFAULT_WEIGHT_DECAY_EXCLUDE,
        "grad_clip": 1.0,
        "freeze": (),
        "param_groups": (),
        "accum_steps": 1,
        "accum_weight_key": "",
        "ema_power": 0.0,
        "ema_max_decay": 0.9999,
        "ema_min_decay": 0.0,
        "ema_update_after_step": 0,
        "ema_inv_gamma": 1.0,
        "log_every": 50,
        "eval_every": 0,
        "checkpoint_every": 500,
        "keep_checkpoints": 3,
        "async_checkpoint": True,
        "tensorboard": True,
        "progress": True,
        "peak_flops_per_device": 0.0,
    },
}


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with every key the loop reads present (missing ones from `DEFAULTS`)."""
    config = ml_collections.ConfigDict(config.to_dict())
    with config.unlocked():
        if "seed" not in config:
            config.seed = 0
        for section, values in DEFAULTS.items():
            if section not in config or config[section] is None:
                config[section] = ml_collections.ConfigDict()
            for key, value in values.items():
                if key not in config[section]:
                    config[section][key] = value
    return config


class _StopFlag:
    """SIGTERM/SIGINT -> a flag checked between steps (only installable on the main thread)."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.reason = name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _intact(state: Any) -> bool:
    return all(not getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state))


def _check_batch_size(batch: Any, expected: int) -> None:
    rows = {int(x.shape[0]) for x in jax.tree.leaves(batch) if x.ndim > 0}
    if len(rows) > 1:
        raise ValueError(f"the batch's leaves disagree on the number of rows: {sorted(rows)}")
    if expected and rows and rows != {expected}:
        raise ValueError(
            f"train.batch_size is {expected} (global rows), but the processes' batches add up to {rows.pop()} rows "
            f"({jax.process_count()} processes); each process must yield batch_size / process_count rows"
        )


def _default_count(batch: Any) -> dict[str, float]:
    leaves = [x for x in jax.tree.leaves(batch) if np.ndim(x) > 0]
    return {"examples": float(np.shape(leaves[0])[0]) if leaves else 0.0}


def _setup(config: ml_collections.ConfigDict, model_fn: Callable, mesh: Any):
    """Optimizer, init function, graph, abstract state and its shardings on `mesh`."""
    optimizer = make_optimizer(config.train)
    init_fn, graphdef = init_fn_for(model_fn, optimizer, EmaConfig.from_config(config.train))
    key = seed_key(int(config.seed))
    abstract = jax.eval_shape(init_fn, key)
    rules = rules_lib.normalize_rules(config.sharding.rules)
    shardings = rules_lib.state_shardings(abstract, mesh, rules, int(config.sharding.min_fsdp_bytes))
    return optimizer, init_fn, graphdef, key, abstract, shardings


def _pretrained(init_params: Callable[[], Mapping[str, Any]], abstract: Any, shardings: Any) -> dict[str, jax.Array]:
    """`init_params`' host arrays checked against the model and placed in the parameters' shardings."""
    from flax import nnx

    from c2a_jax.train.optimizer import param_path
    from c2a_jax.train.state import check_overrides

    host = dict(init_params())
    fresh = check_overrides(abstract.params, host)
    log.info("pretrained weights for %d parameters; %d start random: %s", len(host), len(fresh), fresh[:8])
    targets = {param_path(p): v.get_value() for p, v in nnx.to_flat_state(shardings.params)}
    dtypes = {param_path(p): v.get_value().dtype for p, v in nnx.to_flat_state(abstract.params)}
    placed = {}
    for name in list(host):
        array = np.asarray(host.pop(name), dtype=dtypes[name])
        placed[name] = jax.make_array_from_callback(array.shape, targets[name], lambda index, a=array: a[index])
    return placed


def restore_checkpoint(
    workdir: str, model_fn: Callable, *, step: int | None = None, mesh: Any = None
) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_state, graphdef, items)`` of a run's checkpoint (default: the latest), read into
    `mesh` (default: this process's first device; any mesh works, orbax reshards on read). The
    config comes from the checkpoint itself; ``model_from_state(graphdef, state, ema=True)`` gives the
    model (with its EMA weights where the run kept an average)."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        items = ckpt.read_items(step)
        config = with_defaults(ml_collections.ConfigDict(items["config"]))
        mesh = mesh if mesh is not None else make_mesh({}, jax.local_devices()[:1])
        _, _, graphdef, _, abstract, shardings = _setup(config, model_fn, mesh)
        state, items, _ = ckpt.restore(rules_lib.with_shardings(abstract, shardings), step, data_position=False)
    finally:
        ckpt.close()
    return state, graphdef, items


def train(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    model_fn: Callable,
    loss_fn: Callable,
    make_batches: Callable[[], Iterator[Any]] | Any,
    eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
    checkpoint_items: Mapping[str, Any] | None = None,
    count_fn: Callable[[Any], Mapping[str, float]] | None = None,
    flops_per_token: float | None = None,
    init_params: Callable[[], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train until ``train.steps`` (resuming from ``<workdir>/checkpoints`` if it holds any).

    `eval_fn(model, step) -> metrics` runs every ``train.eval_every`` steps (0: never) on the live
    model (with the EMA weights when ``train.ema_power`` is set); its metrics are logged with an ``eval/`` prefix. `checkpoint_items`: JSON items stored
    in every checkpoint (``tokenizer``, ``dataset_statistics``; the config is added here).
    `count_fn(local_batch) -> {"examples": ..., "tokens": ...}` counts this process's batch for
    throughput (default: rows only); `flops_per_token` (e.g. ``TransformerFlops.per_token``) turns
    tokens/s into MFU where the device's peak is known. `init_params() -> {"a/b/kernel": host array}`
    gives pretrained weights for a fresh start (not called when resuming): each array is placed
    straight into its parameter's sharding (`jax.make_array_from_callback`, so a process only
    copies its own shards to its devices) and the parameters it leaves out keep their random
    initialisation (listed in the log).

    Returns the last logged metrics plus ``step``, ``stopped`` (None, or the signal that stopped
    the run), ``wall_s`` and ``start_step``."""
    t0 = time.perf_counter()
    config = with_defaults(config)
    distributed.initialize(config)
    tc = config.train
    primary = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if primary:
        os.makedirs(workdir, exist_ok=True)
        atomic_write_text(os.path.join(workdir, "config.json"), to_json(config))

    mesh = make_mesh(config.mesh)
    rules = rules_lib.normalize_rules(config.sharding.rules)
    optimizer, init_fn, graphdef, key, abstract, shardings = _setup(config, model_fn, mesh)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=int(tc.keep_checkpoints),
        save_every=int(tc.checkpoint_every),
        async_save=bool(tc.async_checkpoint),
    )
    batches = resumable(make_batches)
    latest = ckpt.latest_step()
    if latest is not None:
        state, _, data_state = ckpt.restore(rules_lib.with_shardings(abstract, shardings), latest)
        if data_state is not None:
            batches.restore(data_state)
        else:
            log.warning("checkpoint %d holds no data position: the data starts from its beginning", latest)
        resumed = f"resumed from {workdir}/checkpoints/{latest}"
    else:
        overrides = _pretrained(init_params, abstract, shardings) if init_params is not None else None
        state = jax.jit(init_fn, out_shardings=shardings, donate_argnums=1)(key, overrides)
        del overrides
        resumed = ""
    start_step = int(jax.device_get(state.step))
    total = int(tc.steps)

    batch_sh = distributed.batch_sharding(mesh, rules)
    step_fn = make_train_step(
        graphdef,
        loss_fn,
        optimizer,
        accum_steps=int(tc.accum_steps),
        weight_key=str(tc.accum_weight_key) or None,
        batch_sharding=batch_sh,
        ema=EmaConfig.from_config(tc),
    )
    items = {**dict(checkpoint_items or {}), "config": config.to_dict()}
    count_fn = count_fn or _default_count
    throughput = Throughput(jax.device_count(), flops_per_token, peak_flops_per_device(float(tc.peak_flops_per_device)))
    writer = MetricsWriter(
        workdir,
        total_steps=total,
        start_step=start_step,
        tensorboard=bool(tc.tensorboard),
        progress=bool(tc.progress),
        primary=primary,
    )
    if resumed:
        writer.print(resumed)
    if flops_per_token and primary:
        peak = throughput.peak_flops
        writer.print(
            f"MFU: {flops_per_token:.4g} model FLOPs/token; peak "
            + (f"{peak:.4g} FLOP/s/device x {jax.device_count()}" if peak else "unknown on this device: MFU omitted")
        )

    jitted = None
    step = start_step
    last: dict[str, Any] = {}
    stopped: str | None = None
    log_every, eval_every = max(int(tc.log_every), 1), int(tc.eval_every)

    def save(force: bool) -> None:
        ckpt.save(step, state, items=items, data_state=batches.state(), force=force)

    nproc = jax.process_count()

    def stop_requested(flag: _StopFlag) -> str | None:
        """Single process: the flag, every step. Several: agreed at log steps (one tiny allgather,
        where the step syncs anyway), so that every process stops after the same step."""
        if nproc == 1:
            return flag.reason
        if step % log_every:
            return None
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(np.int32(flag.reason is not None)))
        return (flag.reason or "stop requested by another process") if flags.any() else None

    try:
        with _StopFlag() as flag:
            while step < total:
                if reason := stop_requested(flag):
                    stopped = reason
                    break
                try:
                    local = next(batches)
                except StopIteration:
                    writer.print(f"the data ran out after step {step} (of {total}); stopping")
                    stopped = "data exhausted"
                    break
                counts = count_fn(local)
                batch = distributed.global_batch(local, mesh, batch_sh)
                if jitted is None:
                    _check_batch_size(batch, int(tc.batch_size))
                    jitted = jit_train_step(step_fn, shardings, batch_shardings(batch, batch_sh))
                state, metrics = jitted(state, batch)
                step += 1
                writer.advance()
                throughput.add(counts.get("examples", 0.0) * nproc, counts.get("tokens", 0.0) * nproc)
                if step == start_step + 1:  # the first step compiled: time the ones after it
                    jax.block_until_ready(metrics)
                    throughput.reset()
                if step % log_every == 0 or step == total:
                    last = writer.write(step, {**jax.device_get(metrics), **throughput.rates()})
                if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total):
                    eval_metrics = eval_fn(model_from_state(graphdef, state, ema=True), step)
                    last.update(writer.write(step, {f"eval/{k}": v for k, v in dict(eval_metrics).items()}))
                    throughput.reset()
                if ckpt.should_save(step):
                    save(force=False)
    except BaseException:
        # Saving is collective: with several processes a failure on one of them cannot be saved
        # from alone, so only a single-process run saves here (the periodic checkpoints remain).
        if nproc == 1 and _intact(state) and step > start_step:
            with contextlib.suppress(Exception):
                save(force=True)
                ckpt.wait()
        writer.close()
        ckpt.close()
        raise
    if step > start_step or ckpt.latest_step() is None:
        save(force=True)
    ckpt.close()
    writer.close()
    if stopped and primary:
        log.warning("training stopped at step %d: %s (checkpoint saved)", step, stopped)
    return {**last, "step": step, "start_step": start_step, "stopped": stopped, "wall_s": time.perf_counter() - t0}
