"""Training metrics: throughput, MFU, and where they go (JSONL file, TensorBoard, a progress bar).

Throughput is measured between log steps on the host's wall clock (the step is asynchronous;
fetching the logged metrics synchronises), from the examples and tokens the global batch holds.

MFU (model FLOPs utilisation, MaxText's definition) = model FLOPs per second / peak FLOPs per
second of all devices. Model FLOPs per token, `TransformerFlops` (PaLM, Chowdhery et al. 2022,
appendix B; MaxText's ``calculate_tflops_training_per_device`` has the same two parts)::

    6 * N            dense matmuls, forward (2N) + backward (4N), N = matmul parameters
                     (embedding lookups excluded; an LM head counts)
  + 12 * L * d * T   attention scores and weighted values (QK^T and AV: 2 matmuls x 2 FLOPs x T x d
                     per layer forward, x3 with the backward), L layers, width d, sequence T;
                     x attention_fraction: 1 for full attention (PaLM's formula), 0.5 for a purely
                     causal mask (MaxText halves it since its PR #1988)

Hardware FLOPs (remat recomputation) are not counted: MFU is about the model, not the schedule.
Peak FLOP/s per device come from the config (``train.peak_flops_per_device``) or the device table
`PEAK_FLOPS` (dense bf16, per chip); on CPU or an unknown device the MFU is left out.

TensorBoard scalars are written with ``tf.summary.write`` and the scalars plugin's metadata (what
``tf.summary.scalar`` does, without needing the ``tensorboard`` package at training time; install
it to view the logs). TensorFlow is imported only when the first scalar is written, with GPUs
hidden from it (it is for data and logs only, design.md section 5).
The JSONL file gets one complete line per log step in one ``write`` (readers never see half a
line), flushed and fsynced; on resume, lines of steps after the restored one are dropped
atomically (`truncate_jsonl`), so a resumed run's file reads like an uninterrupted one's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from c2a_jax.fileio import append_jsonl, atomic_write_text, read_jsonl

# Dense bf16 FLOP/s per chip (vendor figures). Matched in order against ``device.device_kind``.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H100|H200|GH200", 989e12),  # H200/GH200: the H100's compute die
    (r"A100", 312e12),
    (r"TPU v4", 275e12),
    (r"TPU v5 ?lite|TPU v5e", 197e12),
    (r"TPU v5p|TPU v5$", 459e12),
)


def peak_flops_per_device(configured: float | None = None, device_kind: str | None = None) -> float | None:
    """`configured` if positive, else the table's figure for `device_kind` (default: this
    process's first device), else None (CPU, unknown devices: MFU is omitted)."""
    if configured and configured > 0:
        return float(configured)
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for pattern, flops in PEAK_FLOPS:
        if re.search(pattern, kind):
            return flops
    return None


@dataclasses.dataclass(frozen=True)
class TransformerFlops:
    """Training FLOPs per token of a transformer (see the module docstring)."""

    params: int  # N, matmul parameters
    layers: int  # L
    width: int  # d (d_model = heads x head_dim)
    seq_len: int  # T
    attention_fraction: float = 1.0

    @property
    def dense(self) -> float:
        return 6.0 * self.params

    @property
    def attention(self) -> float:
        return 12.0 * self.layers * self.width * self.seq_len * self.attention_fraction

    @property
    def per_token(self) -> float:
        return self.dense + self.attention

    def terms(self) -> dict[str, float]:
        return {"dense_6N": self.dense, "attention_12LdT": self.attention, "per_token": self.per_token}

    def describe(self) -> str:
        frac = "" if self.attention_fraction == 1.0 else f" x {self.attention_fraction}"
        return (
            f"model FLOPs/token = 6*N + 12*L*d*T{frac} = 6*{self.params:,} + 12*{self.layers}*{self.width}*"
            f"{self.seq_len}{frac} = {self.dense:.4g} + {self.attention:.4g} = {self.per_token:.4g}"
        )


def matmul_param_count(params: Any, exclude: Sequence[str] = (r".*embed_tokens/.*", r".*position_embedding")) -> int:
    """Parameters of a state that take part in matmuls: every array of rank >= 2 whose path does
    not match `exclude` (embedding lookups; learned position tables are added, not multiplied)."""
    from c2a_jax.train.optimizer import param_path

    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf.ndim >= 2 and not any(re.fullmatch(p, param_path(path)) for p in exclude):
            total += int(leaf.size)
    return total


class Throughput:
    """Examples/s, tokens/s and MFU over the steps since the last call of `rates`."""

    def __init__(self, num_devices: int, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.num_devices = num_devices
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._examples = 0.0
        self._tokens = 0.0
        self._steps = 0

    def add(self, examples: float, tokens: float | None = None) -> None:
        self._examples += examples
        self._tokens += tokens or 0.0
        self._steps += 1

    def rates(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._start
        out: dict[str, float] = {}
        if self._steps and elapsed > 0:
            out["steps_per_s"] = self._steps / elapsed
            out["examples_per_s"] = self._examples / elapsed
            if self._tokens:
                out["tokens_per_s"] = self._tokens / elapsed
                out["tokens_per_s_per_device"] = out["tokens_per_s"] / self.num_devices
                if self.flops_per_token and self.peak_flops:
                    achieved = self.flops_per_token * out["tokens_per_s"]
                    out["model_tflops_per_s_per_device"] = achieved / self.num_devices / 1e12
                    out["mfu"] = achieved / (self.peak_flops * self.num_devices)
        self.reset()
        return out


def truncate_jsonl(path: str, last_step: int) -> None:
    """Keep the records with ``step <= last_step`` (atomically): a resumed run rewrites the rest."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _scalar(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class MetricsWriter:
    """Per-log-step sink: JSONL file, TensorBoard scalars and a tqdm bar (primary process only)."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
        primary: bool = True,
    ):
        self.primary = primary
        self.jsonl = os.path.join(workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(workdir, "tensorboard")
        self._tensorboard = tensorboard and primary
        self._tb_writer = None
        self._bar = None
        if primary:
            os.makedirs(workdir, exist_ok=True)
            truncate_jsonl(self.jsonl, start_step)
            if progress:
                from tqdm import tqdm

                self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _tb(self):
        if self._tb_writer is None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # already initialised
                pass
            plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            self._tb_meta = summary_pb2.SummaryMetadata(plugin_data=plugin)
            self._tb_writer = tf.summary.create_file_writer(self.tb_dir)
        return self._tb_writer

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        scalars = {k: f for k, v in metrics.items() if (f := _scalar(v)) is not None}
        if not self.primary:
            return scalars
        append_jsonl(self.jsonl, {"step": int(step), **scalars}, sort_keys=True)
        if self._tensorboard:
            import tensorflow as tf

            writer = self._tb()
            with writer.as_default():
                for k, v in scalars.items():
                    tf.summary.write(k, tf.constant(v, tf.float32), step=int(step), metadata=self._tb_meta)
            writer.flush()
        if self._bar is not None:
            shown = {k: f"{scalars[k]:.4g}" for k in ("loss", "grad_norm", "learning_rate", "mfu") if k in scalars}
            self._bar.set_postfix(shown, refresh=False)
        return scalars

    def print(self, message: str) -> None:
        if not self.primary:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
