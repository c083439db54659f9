"""The paper's task names and the registry task + arguments each one is evaluated as.

Why a table: the paper names tasks by behaviour ("Topple", "PushToTarget", the L0 "PlaceOnTop"),
our registry by ClevrSkills class with arguments (README task table, clevrskills_spec.md section 3).
Evaluation configs list paper names; records carry both. ``markovian`` gives the DP+Oracle form of
a task (the oracle's information written into the prompt), where the task has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# paper name -> (registry name, task_args, level)
PAPER_TASKS: dict[str, tuple[str, dict[str, Any], str]] = {
    "Pick": ("Pick", {}, "L0"),
    "PlaceOnTop": ("PlaceOnTop", {"spawn_at_gripper": True}, "L0"),
    "PlaceNextTo": ("PlaceNextTo", {"spawn_at_gripper": True}, "L0"),
    "Touch": ("Touch", {}, "L0"),
    "Push": ("Touch", {"push": True}, "L0"),
    "Topple": ("Touch", {"topple": True}, "L0"),
    "Rotate": ("Rotate", {}, "L0"),
    "PickPlaceOnTop": ("PlaceOnTop", {}, "L1"),
    "PickPlaceNextTo": ("PlaceNextTo", {}, "L1"),
    "RotateRestore": ("Rotate", {"restore": True}, "L1"),
    "PushToTarget": ("Push", {}, "L1"),
    "SingleStack": ("SingleStack", {}, "L1"),
    "ReverseStack": ("ReverseStack", {}, "L1"),
    "NovelNoun": ("NovelNoun", {}, "L1"),
    "NovelAdjective": ("NovelAdjective", {}, "L1"),
    "NovelNounAdjective": ("NovelNounAdjective", {}, "L1"),
    "Swap": ("Swap", {}, "L1"),
    "StackTopple": ("StackTopple", {}, "L2"),
    "FollowOrder": ("FollowOrder", {"num_areas": 4, "num_predicates": 4}, "L1"),
    "FollowOrderRestore": ("FollowOrder", {"num_areas": 2, "num_predicates": 2, "restore": True}, "L1"),
    "Neighbour": ("Neighbour", {"num_areas": 3}, "L1"),
    "Sort2d": ("Sort2d", {"num_actors": 4, "num_areas": 3}, "L1"),
    "RotateSymmetry": ("RotateSymmetry", {"num_actors": 4}, "L1"),
    "SwapPush": ("Swap", {"push": True}, "L2"),
    "SwapRotate": ("SwapRotate", {}, "L2"),
    "ThrowAt": ("Throw", {"spawn_at_gripper": True, "target_2d": False}, "L0"),
    "ThrowToTopple": ("Throw", {"spawn_at_gripper": True, "target_2d": False, "topple_target": True}, "L0"),
    "ThrowOnto": ("Throw", {}, "L1"),
    "ThrowAndSort": ("ThrowAndSort", {"num_actors": 4, "num_areas": 3}, "L2"),
    "BalanceScale": ("BalanceScale", {"num_actors": 4}, "L2"),  # Table 2 "Balance scale"
    "SortStack": ("SortStack", {"num_actors": 6, "num_areas": 3}, "L2"),  # Table 2 "Stack sorted_by_texture"
}
# DP+Oracle (paper 5.1, Figure 4): the Markovian form of a task, where one exists.
MARKOVIAN: dict[str, tuple[str, dict[str, Any]]] = {"Swap": ("SwapMarkovian", {})}


def resolve(name: str, *, markovian: bool = False, task_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"task": paper name, "registry": ..., "task_args": ..., "level": ...}`` for a paper task
    name or a registry name (then level from the RLDS builder's table); `task_args` are merged in."""
    if name in PAPER_TASKS:
        registry, args, level = PAPER_TASKS[name]
    else:
        from c2a_jax.sim.tasks import task_names

        if name not in task_names():
            known = sorted(set(PAPER_TASKS) | set(task_names()))
            raise ValueError(f"unknown task {name!r}; known: {known}")
        registry, args, level = name, {}, ""
    if markovian:
        if name not in MARKOVIAN:
            raise ValueError(f"task {name!r} has no Markovian (DP+Oracle) form; those that do: {sorted(MARKOVIAN)}")
        registry, extra = MARKOVIAN[name]
        args = {**args, **extra}
    return {"task": name, "registry": registry, "task_args": {**args, **dict(task_args or {})}, "level": level}
