#!/usr/bin/env python
"""Build the ClevrSkills RLDS (TFDS) dataset from generated demonstrations, with its statistics.

    python data_pipelines/build_rlds.py --demos runs/demos --out runs/rlds [--overwrite] [--robot auto]

``--demos`` is the ``--out`` of ``data_pipelines/generate_demos.py`` or of
``data_pipelines/convert_clevrskills.py`` (one or more dataset directories, each with
``episodes/seed_*.json`` + ``.npz``). The builder config is the episodes' robot (``--robot auto``,
the default, reads the ``robot`` field of the first episode's JSON; our own recorder's episodes have
none and are ``panda_vacuum``; the released ClevrSkills data is ``xarm6_vacuum``); an episode of
another robot stops the build with a message naming it. Shards of ``generate_demos.py --num-shards n``
(``<demos>/shard-XXXXX-of-YYYYY/<dataset>/``) are read as one dataset; a missing shard stops the build
(exit status 2) unless ``--allow-missing-shards``. The dataset is written to
``<out>/clevrskills_rlds/<robot>/1.0.0`` with ``dataset_statistics.json`` beside it, and can be read
with plain TFDS: ``tfds.builder_from_directory("<out>/clevrskills_rlds/panda_vacuum/1.0.0")``.

The same as ``tfds build data_pipelines/clevrskills_rlds --manual_dir <demos> --data_dir <out>
[--config <robot>]``,
without the TFDS CLI's extra dependencies (tensorflow-datasets 4.9.10's CLI imports apache-beam
and mlcroissant at start-up), and with one progress bar per split. A corrupt or missing episode
file stops the build with a message naming it; exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", required=True, help="directory of generate_demos.py datasets (TFDS manual_dir)")
    ap.add_argument("--out", required=True, help="TFDS data_dir to build into")
    ap.add_argument("--overwrite", action="store_true", help="rebuild if the dataset already exists")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--robot",
        default="auto",
        choices=("auto", "panda_vacuum", "xarm6_vacuum"),
        help="builder config: the episodes' robot (auto: from the first episode's JSON)",
    )
    ap.add_argument(
        "--allow-missing-shards", action="store_true", help="build from the shards present even if some are missing"
    )
    args = ap.parse_args(argv)
    if not os.path.isdir(args.demos):
        ap.error(f"--demos {args.demos!r} is not a directory")
    return args


def build(demos: str, out: str, overwrite: bool = False, progress: bool = True, robot: str | None = None):
    """Build (or reuse) the dataset in `out` from `demos`; returns the prepared builder. `robot`
    (the builder config) defaults to the robot of the first episode in `demos`."""
    import tensorflow_datasets as tfds

    from data_pipelines.clevrskills_rlds import ROBOTS, ClevrskillsRlds, discover_episodes, robot_of_episodes

    if robot in (None, "auto"):
        robot = robot_of_episodes(discover_episodes(demos))
    if robot not in ROBOTS:
        raise ValueError(f"unknown robot {robot!r}; known: {sorted(ROBOTS)}")
    builder = ClevrskillsRlds(data_dir=out, config=robot)
    builder.show_progress = progress
    tfds.disable_progress_bar()  # ours (one bar per split) instead of TFDS' per-shard ones
    mode = tfds.download.GenerateMode
    mode = mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS
    config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(demos), download_mode=mode)
    builder.download_and_prepare(download_config=config)
    return builder


def _episode_error(error: BaseException):
    """The EpisodeFileError / FileNotFoundError behind `error`, if any (TFDS may wrap it)."""
    from data_pipelines.clevrskills_rlds import EpisodeFileError

    while error is not None:
        if isinstance(error, EpisodeFileError | FileNotFoundError):
            return error
        error = error.__cause__ or error.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from c2a_jax.data.demo_shards import missing_shards

    problems = missing_shards(args.demos)
    if problems and not args.allow_missing_shards:
        print(f"error: {args.demos}: {'; '.join(problems)} (or pass --allow-missing-shards)", file=sys.stderr)
        return 2
    try:
        builder = build(args.demos, args.out, overwrite=args.overwrite, progress=not args.no_progress, robot=args.robot)
    except Exception as e:  # noqa: BLE001  (report bad input files plainly, re-raise anything else)
        cause = _episode_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    from data_pipelines.clevrskills_rlds.clevrskills_rlds_dataset_builder import STATISTICS_FILE

    summary = {
        "data_dir": os.fspath(builder.data_dir),
        "robot": builder.robot,
        "splits": {name: split.num_examples for name, split in builder.info.splits.items()},
        "statistics": os.path.join(os.fspath(builder.data_dir), STATISTICS_FILE),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
