"""Pushing an object along the table: `PushSolver` over `Move3dSolver` and `PushAlongPathSolver`
(clevrskills_spec.md 5.7). The path is the straight line to the target; a tabletop with a few
primitives leaves it free in the push tasks, and the solver re-approaches when contact is lost."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim.solvers.base import GRIPPER_OFF, AbstractSolver, Move3dSolver, pose_json, ref
from c2a_jax.sim.solvers.touch import side_quat

PUSH_HEIGHT = 0.025  # TCP height above the table while pushing
CLEARANCE = 0.02
DONE_DISTANCE = 0.02
RETREAT = 0.04


class PushAlongPathSolver(AbstractSolver):
    """Move the TCP towards the target in steps of at most 5 cm, keeping the push direction."""

    def __init__(self, env, actor, target: sapien.Pose, target_actor=None):
        extra = {"target_actor": ref(target_actor)} if target_actor is not None else {}
        super().__init__(env, actor=ref(actor), current_target_pos=pose_json(target)[0], **extra)
        self.actor, self.target = actor, target
        self.lost = 0

    def step(self) -> np.ndarray:
        a = np.asarray(self.actor.pose().p)
        t = np.asarray(self.target.p)
        remaining = t[:2] - a[:2]
        if np.linalg.norm(remaining) < DONE_DISTANCE:
            self.done = True
            return self.hold(GRIPPER_OFF)
        direction = np.append(remaining / np.linalg.norm(remaining), 0.0)
        tcp = np.asarray(self.tcp().p)
        # keep the tool behind the actor's centre on the line to the target
        behind = a - direction * (float(np.max((self.actor.world_vertices()[:, :2] - a[:2]) @ -direction[:2])) + 0.012)
        off_line = np.linalg.norm((tcp - behind)[:2] - ((tcp - behind)[:2] @ direction[:2]) * direction[:2])
        if off_line > 0.05:
            self.done = True  # contact lost: the parent re-approaches
            return self.hold(GRIPPER_OFF)
        step = min(float(np.linalg.norm(remaining)), 0.05)
        goal = np.array([*(tcp[:2] + step * direction[:2]), PUSH_HEIGHT])
        return self.move_to(sapien.Pose(goal, side_quat(direction)), GRIPPER_OFF)


class PushSolver(AbstractSolver):
    """Go to a pushing pose behind the actor (seen from the target), push it to the target, back off."""

    def __init__(self, env, actor, target: sapien.Pose, target_actor=None, extra: dict | None = None):
        super().__init__(env, actor=ref(actor), target_pose=pose_json(target),
                         target_actor=ref(target_actor) if target_actor is not None else None, **(extra or {}))  # fmt: skip
        self.actor, self.target, self.target_actor = actor, target, target_actor
        self.role = None

    def push_pose(self) -> sapien.Pose:
        a = np.asarray(self.actor.pose().p)
        d = np.asarray(self.target.p)[:2] - a[:2]
        d = np.append(d / max(np.linalg.norm(d), 1e-9), 0.0)
        reach = float(np.max((self.actor.world_vertices()[:, :2] - a[:2]) @ -d[:2]))
        p = a - (reach + CLEARANCE + 0.02) * d
        p[2] = PUSH_HEIGHT
        return sapien.Pose(p, side_quat(d))

    def step(self) -> np.ndarray:
        a = np.asarray(self.actor.pose().p)
        tcp = self.tcp()
        if np.linalg.norm(a[:2] - np.asarray(self.target.p)[:2]) < DONE_DISTANCE or self.role == "retreat":
            if self.role != "retreat":
                away = np.asarray(tcp.p)[:2] - a[:2]
                away = RETREAT * away / max(np.linalg.norm(away), 1e-9)
                goal = sapien.Pose(np.asarray(tcp.p) + [away[0], away[1], RETREAT], tcp.q)
                self.sub, self.role = Move3dSolver(self.env, goal, match_ori=True, role="retreat"), "retreat"
            if self.sub.done:
                self.done = True
                return self.hold(GRIPPER_OFF)
            return self.sub.step()
        if self.role == "push" and not self.sub.done:
            return self.sub.step()
        target = self.push_pose()
        p = np.asarray(tcp.p)
        if np.linalg.norm(p[:2] - target.p[:2]) < 0.02 and abs(p[2] - target.p[2]) < 0.01:
            self.sub, self.role = PushAlongPathSolver(self.env, self.actor, self.target, self.target_actor), "push"
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
        return self.sub.step()
