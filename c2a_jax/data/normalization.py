"""Per-dimension normalisation of actions and proprioception to [-1, 1], saved with the model.

Why: diffusion policies denoise in a fixed range (diffusion_policy's ``LinearNormalizer``, Octo's
``NormalizationType.BOUNDS``); a policy is only usable with the exact statistics it was trained
with, so they travel as JSON inside every checkpoint (anchors.md section 6). Bounds come from the
dataset's ``dataset_statistics.json`` (written by the RLDS builder): ``min``/``max`` or the
outlier-robust ``p01``/``p99`` (OpenVLA's BOUNDS_Q99). Dimensions can be left untouched by index
(a binary gripper / vacuum command is already in [-1, 1] and must stay exactly binary), and a
constant dimension (max == min) maps to 0 and back to its constant.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from c2a_jax.fileio import atomic_write_text

BOUNDS = {"min_max": ("min", "max"), "p01_p99": ("p01", "p99")}
# Below this span a dimension counts as constant.
EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Affine map of each dimension from [low, high] to [-1, 1]; `skip` dimensions pass through."""

    low: np.ndarray
    high: np.ndarray
    skip: tuple[int, ...] = ()
    clip: bool = True  # values outside [low, high] (p01/p99 bounds) are clipped to [-1, 1]

    def __post_init__(self):
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"low and high must be vectors of one shape, got {low.shape} and {high.shape}")
        if np.any(high < low):
            raise ValueError(f"normalisation bounds with high < low at dims {np.flatnonzero(high < low).tolist()}")
        bad = [i for i in self.skip if not 0 <= i < low.size]
        if bad:
            raise ValueError(f"skip dims {bad} outside 0..{low.size - 1}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "skip", tuple(sorted(set(int(i) for i in self.skip))))

    @property
    def dim(self) -> int:
        return int(self.low.size)

    def _scale(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        span = self.high - self.low
        constant = span < EPS
        active = np.ones(self.dim, bool)
        active[list(self.skip)] = False
        return span, constant, active

    def normalize(self, x: Any) -> np.ndarray:
        """x (..., dim) -> [-1, 1] per dimension (skip dims unchanged, constant dims 0)."""
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {x.shape}")
        span, constant, active = self._scale()
        y = 2.0 * (x - self.low) / np.where(constant, 1.0, span) - 1.0
        if self.clip:
            y = np.clip(y, -1.0, 1.0)
        y = np.where(constant, 0.0, y)
        return np.where(active, y, x).astype(np.float32)

    def unnormalize(self, y: Any) -> np.ndarray:
        """The inverse of `normalize` on [-1, 1] (model outputs are clipped to it first)."""
        y = np.asarray(y, np.float32)
        if y.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {y.shape}")
        span, constant, active = self._scale()
        x = (np.clip(y, -1.0, 1.0) + 1.0) / 2.0 * span + self.low
        x = np.where(constant, self.low, x)
        return np.where(active, x, y).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "skip": list(self.skip), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        try:
            return cls(np.asarray(d["low"]), np.asarray(d["high"]), tuple(d.get("skip", ())), bool(d.get("clip", True)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a normalizer: {e}") from e

    @classmethod
    def from_statistics(
        cls, stats: Mapping[str, Any], key: str, bounds: str = "min_max", skip: Sequence[int] = (), clip: bool = True
    ) -> Normalizer:
        """From a ``dataset_statistics.json`` dict: field `key` (``action``, ``state``, ...)."""
        if bounds not in BOUNDS:
            raise ValueError(f"unknown bounds {bounds!r}; expected one of {sorted(BOUNDS)}")
        if key not in stats:
            raise KeyError(f"dataset statistics have no {key!r} (have {sorted(stats)})")
        lo, hi = BOUNDS[bounds]
        return cls(np.asarray(stats[key][lo]), np.asarray(stats[key][hi]), tuple(skip), clip)


def load_statistics(path: str | os.PathLike) -> dict[str, Any]:
    """``dataset_statistics.json`` from a dataset version directory or the file itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "dataset_statistics.json")
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"dataset statistics {path} not found (written by data_pipelines/build_rlds.py beside the data)"
        ) from e
    except ValueError as e:
        raise ValueError(f"dataset statistics {path} is not valid JSON: {e}") from e
    if not isinstance(stats, dict):
        raise ValueError(f"dataset statistics {path} is not a JSON object")
    return stats


def save_normalizers(normalizers: Mapping[str, Normalizer], path: str | os.PathLike) -> None:
    """Write named normalizers as one JSON file (atomically): what a checkpoint keeps."""
    atomic_write_text(path, json.dumps({k: v.to_dict() for k, v in normalizers.items()}, indent=2) + "\n")


def load_normalizers(path: str | os.PathLike) -> dict[str, Normalizer]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return {k: Normalizer.from_dict(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"cannot read normalisation statistics {os.fspath(path)}: {e}") from e
