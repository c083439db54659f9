"""Swap (clevrskills_spec.md 3.11, 6.9), and its Markovian form for the paper's DP+Oracle baseline.

Swap the positions of two objects through a free "buffer" pose: A to the buffer, B to A's start,
A to B's start. The oracle remembers both starts: the first call stores them in `pose_dict`, which
is what makes the task non-Markovian for a policy that only sees the current frame.

`SwapMarkovian` (or `Swap` with `markovian=True`) writes the oracle's positions into the prompt,
"Swap positions of the A and the B: the A is at (x, y), the B is at (x, y), the free space is at
(x, y)" (world x-y in metres, two decimals), so that a policy without memory has what it needs
(the paper's DP+Oracle, section 5.3). The scene, predicates, oracle and code are Swap's.

`push=True` (Swap by pushing, benchmark `swap_push`) moves the objects by pushing them along the
table instead (`AtPositionPushed`, 3 cm tolerance, never grasped). `SwapRotate` also turns both
objects by the prompt's angle as they swap (`target_pose = rotate_z(Pose(pose_dict['A'].p,
pose_dict['B'].q), angle)`).

`objects` scripts the scene: (colour, shape) pairs used instead of the random draw.
"""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim.tasks.base import Task, obj, register_task, sample_int
from c2a_jax.sim.tasks.rotate import rotated_about_own_z


def position_text(pose: sapien.Pose) -> str:
    """A pose's x-y as the Markovian prompt writes it: "(-0.21, 0.13)"."""
    x, y = (float(v) for v in np.asarray(pose.p)[:2])
    return f"({x:.2f}, {y:.2f})".replace("-0.00", "0.00")


@register_task("Swap")
class Swap(Task):
    pools = "Swap"
    workspace = ((-0.35, -0.30), (0.00, 0.30))

    def __init__(self, env, rng, split="train", num_actors: int = 2, push: bool = False,
                 sample_num_actors: bool = True, markovian: bool = False, objects=None, **kw):  # fmt: skip
        super().__init__(env, rng, split, **kw)
        self.push = bool(push)
        if num_actors < 2:
            raise ValueError(f"Swap needs at least 2 actors, got num_actors={num_actors}")
        self.markovian = bool(markovian)
        self.scripted = [tuple(o) for o in objects] if objects is not None else None
        if self.scripted is not None and len(self.scripted) < 2:
            raise ValueError("a scripted Swap needs at least 2 objects")
        self.num_actors = len(self.scripted) if self.scripted else sample_int(rng, 2, num_actors, sample_num_actors)

    def setup(self) -> None:
        self.layout()
        a, b = self.actor_a, self.actor_b
        at = P.AtPositionPushed if self.push else P.AtPosition
        p1, p2, p3 = at(self.env, a, self.buffer), at(self.env, b, self.start_a), at(self.env, a, self.start_b)
        # what the trace converter needs to write spec 6.9's code (merged into the solver's action state)
        p1.action_state_extra = {"target_pose_function": "free_space", "store_pose": [[a.name, a.id], [b.name, b.id]]}
        p2.action_state_extra = {"target_pose_function": "swap", "target_actor": [a.name, a.id]}
        p3.action_state_extra = {"target_pose_function": "swap", "target_actor": [b.name, b.id]}
        self.steps = [p1, p2, p3]
        self.predicate = P.SwapPredicate("Swap the actors", self.steps)
        self.max_reward = self.predicate.max_reward

    def after_settle(self) -> None:
        for leaf in self.steps:
            if isinstance(leaf, P.AtPositionPushed):
                leaf.reset()

    def layout(self) -> None:
        """Draw the objects, their start poses and the free-space (buffer) pose (spec 3.11)."""
        if self.scripted:
            actors = [self.add_object(c, s) for c, s in self.scripted]
        else:
            colours = self.factory.get_random_top_textures(self.num_actors)
            actors = [self.add_object(c, self.factory.get_random_top_object(c)) for c in colours]
        sizes = [np.ptp(o.local_vertices, axis=0) for o in actors]
        largest = max(sizes, key=lambda s: float(np.prod(s)))
        poses = placement.random_non_overlapping_poses_2d_with_sizes(
            self.rng, len(actors) + 1, self.workspace, sizes + [largest]
        )
        for o, (x, y, z, yaw) in zip(actors, poses[:-1], strict=True):
            self.place(o, sapien.Pose([x, y, z], placement.quat_from_yaw(yaw)))
        x, y, z, yaw = poses[-1]
        self.buffer = sapien.Pose([x, y, z], placement.quat_from_yaw(yaw))  # the free-space pose
        self.actors = actors
        a, b = actors[0], actors[1]
        self.actor_a, self.actor_b = a, b
        self.start_a, self.start_b = self.placed[a.id][1], self.placed[b.id][1]

    def task_actors(self):
        return list(self.actors)

    def prompts(self) -> list[str]:
        a, b = self.actor_a, self.actor_b
        prompt = "Swap positions of " + obj(a) + " and " + obj(b)
        if self.push:
            prompt += " by pushing"
        if self.markovian:
            prompt += (
                ":" + obj(a) + " is at " + position_text(self.start_a) + "," + obj(b) + " is at "
                + position_text(self.start_b) + ", the free space is at " + position_text(self.buffer)
            )  # fmt: skip
        return [prompt]

    def describe(self) -> dict:
        d = super().describe()
        xyz = lambda pose: [round(float(v), 4) for v in pose.p]  # noqa: E731
        d["swap_poses"] = {"a_start": xyz(self.start_a), "b_start": xyz(self.start_b), "free_space": xyz(self.buffer)}
        return d


@register_task("SwapMarkovian")
class SwapMarkovian(Swap):
    """`Swap` with the oracle's positions in the prompt (`markovian=True`), for DP+Oracle."""

    def __init__(self, env, rng, split="train", markovian: bool = True, **kw):
        super().__init__(env, rng, split, markovian=markovian, **kw)


@register_task("SwapRotate")
class SwapRotate(Swap):
    """Swap two objects and turn both by the same angle about their vertical axes (benchmark
    `swap_rotate`): A to the free space, B to A's start turned, A to B's start turned."""

    pools = "SwapRotate"

    def __init__(self, env, rng, split="train", num_actors: int = 2, sample_num_actors: bool = True, **kw):
        super().__init__(env, rng, split, num_actors=num_actors, sample_num_actors=sample_num_actors, **kw)
        if self.push or self.markovian:
            raise NotImplementedError("SwapRotate has no pushing or Markovian form")
        self.clockwise = int(rng.choice([0, 1]))
        self.degrees = int(rng.choice([30, 60, 90, 120, 150]))

    @property
    def signed_degrees(self) -> int:
        return -self.degrees if self.clockwise else self.degrees

    def setup(self) -> None:
        self.layout()
        a, b, d = self.actor_a, self.actor_b, self.signed_degrees
        p1 = P.AtPosition(self.env, a, self.buffer)
        # AtPoseRotated (spec 4.3): the other's start position, own start orientation turned by d - 1
        p2 = P.AtPosition(self.env, b, sapien.Pose(self.start_a.p, rotated_about_own_z(self.start_b, d - 1).q),
                          match_ori=True, name=f"{b.name} swapped and rotated")  # fmt: skip
        p3 = P.AtPosition(self.env, a, sapien.Pose(self.start_b.p, rotated_about_own_z(self.start_a, d - 1).q),
                          match_ori=True, name=f"{a.name} swapped and rotated")  # fmt: skip
        p1.action_state_extra = {"target_pose_function": "free_space", "store_pose": [[a.name, a.id], [b.name, b.id]]}
        p2.action_state_extra = {"target_pose_function": "swap_rotate", "target_actor": [a.name, a.id], "angle": d}
        p3.action_state_extra = {"target_pose_function": "swap_rotate", "target_actor": [b.name, b.id], "angle": d}
        self.steps = [p1, p2, p3]
        self.predicate = P.SwapPredicate("Swap and rotate the actors", self.steps)
        self.max_reward = self.predicate.max_reward

    def prompts(self) -> list[str]:
        direction = "clockwise" if self.clockwise else "anti-clockwise"
        return [
            "Swap positions of " + obj(self.actor_a) + " and " + obj(self.actor_b)
            + f" while rotating them by {self.degrees} degrees {direction}"
        ]  # fmt: skip
