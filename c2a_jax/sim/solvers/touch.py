"""Touching, pushing away and toppling: `Move3dTouchSolver` over `Move3dSolver` and `TouchSolver`
(clevrskills_spec.md 5.7)."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver, Move3dSolver, quat_mul, quat_z, ref

SPACE = 0.03
MIN_REACH = 0.40  # horizontal distance from the base below which the tool cannot point down low
HEAD_CLEARANCE = 0.05  # room the vacuum head needs around the approach point


def _box_gap(point: np.ndarray, footprint: np.ndarray) -> float:
    """Distance from a point to the axis-aligned box around a footprint (0 inside)."""
    gap = np.maximum(0.0, np.maximum(footprint.min(0) - point, point - footprint.max(0)))
    return float(np.linalg.norm(gap))


def _stacked(a: np.ndarray, b: np.ndarray) -> bool:
    """Does one object stand on the other: x-y boxes overlapping, heights apart? Vertices (N, 3), world."""
    overlap_xy = np.all(a[:, :2].min(0) < b[:, :2].max(0)) and np.all(b[:, :2].min(0) < a[:, :2].max(0))
    apart_z = a[:, 2].min() >= b[:, 2].max() - 0.005 or b[:, 2].min() >= a[:, 2].max() - 0.005
    return bool(overlap_xy and apart_z)


def choose_side(
    env, actor, heading: float, turns, standoff: float, z: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Where to put the tool beside `actor` to stroke or push it along `heading` turned by one of
    `turns` (tried in order): `standoff` beyond the actor's edge on the opposite side.

    Ranked by room for the vacuum head next to the other objects, then reachability (the Panda
    cannot point the tool down right next to its base), then, when nothing is reachable, distance
    from the base. With the stroke height `z`, objects the head passes above (top 2 cm or more below
    `z`) and objects stacked with the actor (on or under it: they go with it) leave room.
    Returns (point, unit push direction); the caller sets the height.
    """
    a = np.asarray(actor.pose().p)
    base = np.asarray(robot_lib.BASE_POSE.p[:2])
    mine = actor.world_vertices()
    verts = mine[:, :2] - a[:2]
    others = []
    for o in env.task.objects:
        if o is actor or o.pose().p[2] < -1.0:
            continue
        v = o.world_vertices()
        if z is not None and (v[:, 2].max() < z - 0.02 or _stacked(v, mine)):
            continue
        others.append(v[:, :2])
    best = None
    for k, turn in enumerate(turns):
        d = np.array([np.cos(heading + turn), np.sin(heading + turn), 0.0])
        reach = float(np.max(verts @ -d[:2]))  # the actor's extent towards the approach side
        p = a - (reach + standoff) * d
        clear = min((_box_gap(p[:2], o) for o in others), default=1.0)
        distance = float(np.linalg.norm(p[:2] - base))
        key = (clear >= HEAD_CLEARANCE, distance >= MIN_REACH, 0.0 if distance >= MIN_REACH else distance, -k)
        if best is None or key > best[0]:
            best = (key, p, d)
    return best[1], best[2]


def stroke_height(actor, topple: bool) -> float:
    """TCP height of the stroke: 3 cm above the bottom to touch or push, 1.5 cm below the top to topple."""
    return actor.top_z() - 0.015 if topple else actor.bottom_z() + SPACE


def side_quat(direction: np.ndarray) -> np.ndarray:
    """Tool down, its x axis along the horizontal push direction."""
    return quat_mul(quat_z(float(np.arctan2(direction[1], direction[0]))), robot_lib.NEUTRAL_EE_QUAT)


class TouchSolver(AbstractSolver):
    """Horizontal strokes towards the actor's centre: touch until contact, push 0.15 m, or topple."""

    def __init__(self, env, actor, push: bool = False, topple: bool = False):
        super().__init__(env, actor=ref(actor), push=push, topple=topple)
        self.actor, self.push, self.topple = actor, push, topple
        self.start = np.asarray(actor.pose().p)
        self.z = stroke_height(actor, topple)
        self.direction = None
        self.touched = False

    def step(self) -> np.ndarray:
        tcp = np.asarray(self.tcp().p)
        a = np.asarray(self.actor.pose().p)
        if self.direction is None:
            d = a[:2] - tcp[:2]
            self.direction = np.append(d / max(np.linalg.norm(d), 1e-6), 0.0)
        touched = bool(self.env.contact_ids(self.actor.id) & self.env.gripper_ids())
        self.touched = self.touched or touched  # the task counts only actors the gripper touched
        if self.topple:
            z_axis = self.actor.pose().to_transformation_matrix()[:3, 2]
            if np.degrees(np.arccos(min(1.0, abs(z_axis[2])))) >= 50.0 and self.touched:
                self.done = True
            step = 0.1
        elif self.push:
            if np.linalg.norm(a[:2] - self.start[:2]) > 0.15 and self.touched:
                self.done = True
            step = 0.05
        else:
            if touched:
                self.done = True
            step = min(0.02, float(np.linalg.norm(a[:2] - tcp[:2])) + 0.001)
        if self.done:
            return self.hold(GRIPPER_OFF)
        goal = np.array([tcp[0], tcp[1], self.z]) + step * self.direction
        return self.move_to(sapien.Pose(goal, side_quat(self.direction)), GRIPPER_OFF)


class Move3dTouchSolver(AbstractSolver):
    """Approach beside the actor (on the side facing the robot, so strokes go away from it), then
    stroke; afterwards retreat upwards."""

    def __init__(self, env, actor, push: bool = False, topple: bool = False):
        super().__init__(env, actor=ref(actor), push=push, topple=topple)
        self.actor, self.push, self.topple = actor, push, topple
        self.role = None

    def approach_pose(self) -> sapien.Pose:
        """Beside the actor, stroking away from the robot when that is reachable and clear of the
        other objects; otherwise from another side."""
        a = np.asarray(self.actor.pose().p)
        heading = float(np.arctan2(*(a[:2] - np.asarray(robot_lib.BASE_POSE.p[:2]))[::-1]))
        turns = (0.0, np.pi / 4, -np.pi / 4, np.pi / 2, -np.pi / 2, 3 * np.pi / 4, -3 * np.pi / 4)
        z = stroke_height(self.actor, self.topple)
        p, d = choose_side(self.env, self.actor, heading, turns, SPACE + 0.02, z=z)
        p[2] = z
        return sapien.Pose(p, side_quat(d))

    def step(self) -> np.ndarray:
        if self.done:
            if self.role != "retreat":
                tcp = self.tcp()
                self.sub, self.role = Move3dSolver(self.env, sapien.Pose(np.asarray(tcp.p) + [0, 0, 0.1], tcp.q),
                                                  match_ori=True, role="retreat"), "retreat"  # fmt: skip
            return self.sub.step() if not self.sub.done else self.hold(GRIPPER_OFF)
        if self.role == "touch":
            action = self.sub.step()
            if self.sub.done:
                self.done = True
            return action
        target = self.approach_pose()
        tcp = np.asarray(self.tcp().p)
        if np.linalg.norm(tcp[:2] - target.p[:2]) < 0.02 and abs(tcp[2] - target.p[2]) < 0.01:
            self.sub, self.role = TouchSolver(self.env, self.actor, self.push, self.topple), "touch"
            return self.sub.step()
        if self.role != "approach" or self.sub.done:
            self.sub, self.role = Move3dSolver(self.env, target, match_ori=True, role="approach",
                                               target_actor=self.actor), "approach"  # fmt: skip
        return self.sub.step()
