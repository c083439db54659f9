"""The ClevrSkills RLDS dataset: a TFDS builder in the Open X-Embodiment template's layout.

The builder lives in `clevrskills_rlds_dataset_builder` so that ``tfds build
data_pipelines/clevrskills_rlds --manual_dir <demos>`` finds it, as it finds every
``kpertsch/rlds_dataset_builder`` dataset.
"""

from .clevrskills_rlds_dataset_builder import (
    DEFAULT_ROBOT,
    ROBOTS,
    ClevrskillsRlds,
    ClevrskillsRldsConfig,
    EpisodeFileError,
    compute_statistics,
    discover_episodes,
    episode_robot,
    robot_of_episodes,
    task_level,
    write_statistics,
)

__all__ = [
    "DEFAULT_ROBOT",
    "ROBOTS",
    "ClevrskillsRlds",
    "ClevrskillsRldsConfig",
    "EpisodeFileError",
    "compute_statistics",
    "discover_episodes",
    "episode_robot",
    "robot_of_episodes",
    "task_level",
    "write_statistics",
]
