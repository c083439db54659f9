"""Pushing an object along the table: `PushSolver` over `Move3dSolver` and `PushAlongPathSolver`
(clevrskills_spec.md 5.7). By default the path is the straight line to the target, which a tabletop
with a few primitives leaves free in the push tasks; with `plan_path` (Swap by pushing, where the
other object often stands on that line) the pushed object follows a 2-D path around the others
(`c2a_jax.sim.push_path`), one straight push per leg, and the tool's yaw is the one of its two
equivalent yaws (the vacuum head is symmetric under a half turn) nearer the arm's natural yaw
there. The solver re-approaches when contact is lost."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import push_path
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.solvers.base import (
    GRIPPER_OFF,
    AbstractSolver,
    Move3dSolver,
    orbit_quat,
    pose_json,
    quat_angle_deg,
    ref,
)
from c2a_jax.sim.solvers.touch import MIN_REACH, choose_side, side_quat

PUSH_HEIGHT = 0.025  # TCP height above the table while pushing
CLEARANCE = 0.02
DONE_DISTANCE = 0.02
RETREAT = 0.04
PATH_BOUNDS = ((-0.45, -0.40), (0.10, 0.40))  # where a planned path may take the pushed object
TURNS = (0.0, np.pi / 8, -np.pi / 8, np.pi / 4, -np.pi / 4)  # push headings tried, relative to the target
APPROACH_LIMIT = 150  # steps an approach may take (with `plan_path`) before another heading is tried


def push_quat(direction: np.ndarray, at, flip: bool) -> np.ndarray:
    """Tool orientation for a push along `direction` at `at`: `side_quat`, or with `flip` whichever of
    it and its half turn is nearer the tool's orbit orientation there (easier on the wrist)."""
    q = side_quat(direction)
    if not flip:
        return q
    other = side_quat(-np.asarray(direction, float))
    natural = orbit_quat(np.asarray(at, float))
    return other if quat_angle_deg(other, natural) < quat_angle_deg(q, natural) else q


class PushAlongPathSolver(AbstractSolver):
    """Move the TCP in steps of at most 5 cm along a fixed push direction until the actor is as close
    to the target as that line gets."""

    def __init__(self, env, actor, target: sapien.Pose, direction: np.ndarray, target_actor=None, quat=None):
        extra = {"target_actor": ref(target_actor)} if target_actor is not None else {}
        super().__init__(env, actor=ref(actor), current_target_pos=pose_json(target)[0], **extra)
        self.actor, self.target, self.direction = actor, target, np.asarray(direction, float)
        self.quat = side_quat(self.direction) if quat is None else quat
        self.lost = False

    def step(self) -> np.ndarray:
        a = np.asarray(self.actor.pose().p)
        remaining = np.asarray(self.target.p)[:2] - a[:2]
        ahead = float(remaining @ self.direction[:2])  # how much further along the line the target lies
        if np.linalg.norm(remaining) < DONE_DISTANCE or ahead < 0.01:
            self.done = True
            return self.hold(GRIPPER_OFF)
        tcp = np.asarray(self.tcp().p)
        # the tool must stay behind the actor on the push line, else contact is lost
        rel = a[:2] - tcp[:2]
        off_line = abs(float(rel @ np.array([-self.direction[1], self.direction[0]])))
        if off_line > 0.05 or float(rel @ self.direction[:2]) < 0.0:
            self.done = self.lost = True  # the parent re-approaches
            return self.hold(GRIPPER_OFF)
        step = min(ahead, 0.05)
        goal = np.array([*(tcp[:2] + step * self.direction[:2]), PUSH_HEIGHT])
        return self.move_to(sapien.Pose(goal, self.quat), GRIPPER_OFF)


class PushSolver(AbstractSolver):
    """Go to a pushing pose behind the actor (seen from the target), push it to the target, back off."""

    def __init__(self, env, actor, target: sapien.Pose, target_actor=None, extra: dict | None = None,
                 retries: int = 0, plan_path: bool = False):  # fmt: skip
        """`retries`: how many more pushes to make when one ends farther than `DONE_DISTANCE` from the
        target (a push turned away from the straight line leaves the actor beside it); the source
        re-plans every step until the actor is there, which `retries` bounds. `plan_path`: push
        along a planned path around the other objects (see the module docstring)."""
        super().__init__(env, actor=ref(actor), target_pose=pose_json(target),
                         target_actor=ref(target_actor) if target_actor is not None else None, **(extra or {}))  # fmt: skip
        self.actor, self.final, self.target_actor = actor, target, target_actor
        self.role = None
        self.retries = int(retries)
        self.plan_path = bool(plan_path)
        self.legs = self.plan() if self.plan_path else []
        self.target = self.leg_target()
        self.turn, self.failed_turns, self.approach_steps = 0.0, set(), 0

    def plan(self) -> list[np.ndarray]:
        """The x-y corners of a path around the other objects, before the final target (none when the
        straight line is free)."""
        others = [o.world_vertices() for o in self.env.task.objects if o is not self.actor and o.pose().p[2] > -1.0]
        radius = float(np.max(np.linalg.norm(self.actor.local_vertices[:, :2], axis=1)))
        a = np.asarray(self.actor.pose().p)
        base = np.asarray(robot_lib.BASE_POSE.p[:2])
        # no nearer the base than the pushing reach, or than the start and the goal themselves
        near = min(MIN_REACH, *(float(np.linalg.norm(np.asarray(p)[:2] - base)) - 0.02 for p in (a, self.final.p)))
        allowed = lambda xy: np.linalg.norm(xy - base, axis=1) >= near  # noqa: E731
        return push_path.plan_push_path(a, self.final.p, others, radius, PATH_BOUNDS, allowed)[:-1]

    def leg_target(self) -> sapien.Pose:
        """Where the current push goes: the next corner of the path, else the final target."""
        if self.legs:
            return sapien.Pose([*self.legs[0], float(self.final.p[2])], self.final.q)
        return self.final

    def push_pose(self) -> tuple[sapien.Pose, np.ndarray]:
        """The pose behind the actor for a push towards the target, and the push direction: straight
        at the target when the arm can reach and the head has room, else turned by up to 45 degrees
        (the actor still ends nearer the target, in roughly its direction)."""
        a = np.asarray(self.actor.pose().p)
        d0 = np.asarray(self.target.p)[:2] - a[:2]
        heading = float(np.arctan2(d0[1], d0[0]))
        turns = [t for t in TURNS if t not in self.failed_turns] or list(TURNS)
        p, d = choose_side(self.env, self.actor, heading, turns, CLEARANCE + 0.02)
        off = lambda t: abs(np.angle(np.exp(1j * (np.arctan2(d[1], d[0]) - heading - t))))  # noqa: E731
        self.turn = min(turns, key=off)
        p[2] = PUSH_HEIGHT
        return sapien.Pose(p, push_quat(d, p, self.plan_path)), d

    def step(self) -> np.ndarray:
        a = np.asarray(self.actor.pose().p)
        tcp = self.tcp()
        finished = self.role == "push" and self.sub.done and not self.sub.lost
        if finished or np.linalg.norm(a[:2] - np.asarray(self.target.p)[:2]) < DONE_DISTANCE or self.role == "retreat":
            if self.role != "retreat":
                away = np.asarray(tcp.p)[:2] - a[:2]
                away = RETREAT * away / max(np.linalg.norm(away), 1e-9)
                goal = sapien.Pose(np.asarray(tcp.p) + [away[0], away[1], RETREAT], tcp.q)
                self.sub, self.role = Move3dSolver(self.env, goal, match_ori=True, role="retreat"), "retreat"
            if not self.sub.done:
                return self.sub.step()
            if self.legs:  # a corner of the path reached (or as near as that push got): the next leg
                self.legs.pop(0)
                self.target = self.leg_target()
                self.sub, self.role = None, None
            elif self.retries > 0 and np.linalg.norm(a[:2] - np.asarray(self.target.p)[:2]) >= DONE_DISTANCE:
                self.retries -= 1
                if self.plan_path:
                    self.legs = self.plan()
                    self.target = self.leg_target()
                self.sub, self.role = None, None  # push again from where the actor is now
            else:
                self.done = True
                return self.hold(GRIPPER_OFF)
        if self.role == "push" and not self.sub.done:
            return self.sub.step()
        if self.role != "approach" or self.sub.done:
            self.approach, self.direction = self.push_pose()
        target = self.approach
        p = np.asarray(tcp.p)
        if np.linalg.norm(p[:2] - target.p[:2]) < 0.02 and abs(p[2] - target.p[2]) < 0.01:
            self.sub = PushAlongPathSolver(self.env, self.actor, self.target, self.direction, self.target_actor,
                                           quat=target.q)  # fmt: skip
            self.role, self.failed_turns = "push", set()
            return self.sub.step()
        if self.role != "approach" or self.sub.done:
            if self.role == "push":  # came off the path: lift before re-approaching
                goal = sapien.Pose(p + [0, 0, 0.05], tcp.q)
                self.sub, self.role = Move3dSolver(self.env, goal, match_ori=True, role="retreat"), "lift"
                return self.sub.step()
            if self.role == "lift" and not self.sub.done:
                return self.sub.step()
            self.sub, self.role = Move3dSolver(self.env, target, match_ori=True, role="approach",
                                               target_actor=self.actor), "approach"  # fmt: skip
            self.approach_steps = 0
        self.approach_steps += 1
        if self.plan_path and self.approach_steps > APPROACH_LIMIT:  # the arm cannot get there: another heading
            self.failed_turns.add(self.turn)
            self.sub, self.role = None, None
        return self.sub.step() if self.sub is not None else self.hold(GRIPPER_OFF)
