"""Data: from recorded oracle episodes to what the two models train on.

`labels` turns an episode's stored per-step code labels into training labels (code, key-step flag,
memory, past actions, cache info) and implements the paper's subtask-boundary shift augmentation
(section 5.2). `grid` holds the coarse 10x10 grid positions and object questions of the VLM's
auxiliary detection loss (spec 6.3, 6.6).
"""

from c2a_jax.data.labels import (
    DONE_CODE,
    LEVELS,
    Segment,
    StepLabel,
    labels_from_segments,
    segments_of,
    shift_labels,
    step_labels,
)

__all__ = [
    "DONE_CODE",
    "LEVELS",
    "Segment",
    "StepLabel",
    "labels_from_segments",
    "segments_of",
    "shift_labels",
    "step_labels",
]
