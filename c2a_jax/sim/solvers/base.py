"""The solver interface and the motion primitive every oracle uses (clevrskills_spec.md 5.1, 5.6).

A solver keeps an `action_state` dict (its class, a per-instance id, its arguments) and at most one
active sub-solver; `step()` returns a 7-D action. The chain of active solvers, top first, is the
step's *action trace* (spec 5.9); `c2a_jax.codeapi.trace` turns it into code at both granularities.

`Move3dSolver` replaces mplib (which cannot live beside JAX, see design.md section 2): inverse
kinematics is the controller's (SAPIEN's pinocchio), and the path is planned from the scene's
object bounds: lift to a safe height above every object under the path (the carried object
included), traverse, descend. That covers tabletop transits between primitives.
"""

from __future__ import annotations

import itertools

import numpy as np
import sapien

from c2a_jax.sim import robot as robot_lib

_ids = itertools.count(1)

GRIPPER_ON, GRIPPER_OFF = 1.0, -1.0


# Ours: an object heavier than any default-size one (the 0.5 kg cube), e.g. NovelAdjective's x1.5,
# is carried at `HEAVY_SPEED` of the controller's bound; at full speed it swings off the cups.
HEAVY_MASS, HEAVY_SPEED = 0.6, 0.4


def quat_z(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def quat_mul(a, b) -> np.ndarray:
    return np.asarray((sapien.Pose(q=a) * sapien.Pose(q=b)).q)


def orbit_quat(position) -> np.ndarray:
    """Tool down, turned about world z to face away from the robot base (spec 5.4)."""
    rel = np.asarray(position) - np.asarray(robot_lib.BASE_POSE.p)
    return quat_mul(quat_z(float(np.arctan2(rel[1], rel[0]))), robot_lib.NEUTRAL_EE_QUAT)


def ref(obj) -> list:
    """JSON form of an actor in the action trace: [name, id]."""
    return [obj.name, obj.id]


def pose_json(pose: sapien.Pose) -> list:
    return [np.round(np.asarray(pose.p, float), 5).tolist(), np.round(np.asarray(pose.q, float), 5).tolist()]


class AbstractSolver:
    """Base of all solvers: action state, sub-solver, action helpers."""

    def __init__(self, env, **fields):
        self.env = env
        self.sub: AbstractSolver | None = None
        self.done = False
        self.action_state = {"solver_class": type(self).__name__, "solver_id": next(_ids), **fields}

    # --- trace -----------------------------------------------------------------------------
    def chain(self) -> list[AbstractSolver]:
        out, s = [], self
        while s is not None:
            out.append(s)
            s = s.sub
        return out

    def trace(self) -> list[dict]:
        """JSON-able copies of the action states of the active chain, top first."""
        return [dict(s.action_state) for s in self.chain()]

    # --- actions ---------------------------------------------------------------------------
    @property
    def agent(self):
        return self.env.agent

    def tcp(self) -> sapien.Pose:
        return self.agent.tcp_pose()

    def move_to(self, target: sapien.Pose, vacuum: float) -> np.ndarray:
        action = robot_lib.delta_action_to(self.tcp(), target, vacuum)
        if vacuum > 0 and any(float(b.mass) > HEAVY_MASS for b in self.agent.vacuum.grasping):
            action[:6] *= min(1.0, HEAVY_SPEED / max(float(np.abs(action[:6]).max()), 1e-9))
        return action

    def hold(self, vacuum: float) -> np.ndarray:
        return np.array([0, 0, 0, 0, 0, 0, vacuum], dtype=np.float32)

    def grasped(self, obj) -> bool:
        return self.agent.check_grasp(obj.body)

    def run_sub(self, solver: AbstractSolver) -> np.ndarray:
        self.sub = solver
        return solver.step()

    def step(self) -> np.ndarray:
        raise NotImplementedError

    def stop(self) -> None:
        """Called when the solver is abandoned before it is done: undo any setting outside the
        action (only the throw's joint-velocity feed-forward has one)."""
        if self.sub is not None:
            self.sub.stop()


class Move3dSolver(AbstractSolver):
    """Move the TCP to a pose along a lift-traverse-descend path clear of the scene's objects.

    `role` says what the move is for ("approach", "carry", "hold", "retreat"); with the actors it
    names, it is what the fine-grained code label shows.
    """

    clearance = 0.04

    def __init__(self, env, target: sapien.Pose, match_ori: bool = True, vacuum: bool = False,
                 check_done: bool = True, role: str = "approach", actor=None, target_actor=None, extra=None):  # fmt: skip
        if not match_ori:
            target = sapien.Pose(target.p, orbit_quat(target.p))
        super().__init__(
            env, target_pose=pose_json(target), match_ori=match_ori, vacuum=vacuum, check_done=check_done, role=role,
            actor=ref(actor) if actor is not None else None,
            target_actor=ref(target_actor) if target_actor is not None else None, **(extra or {}),
        )  # fmt: skip
        self.target = target
        self.vacuum = GRIPPER_ON if vacuum else GRIPPER_OFF
        self.check_done = check_done
        self.carried = actor
        self.waypoints = self.plan()
        self.last_qpos = None
        self.still = 0

    def _footprint_hits(self, start, end, obj, margin) -> bool:
        """Does the x-y segment start->end pass within `margin` of the object's footprint box?"""
        verts = obj.world_vertices()
        lo, hi = verts[:, :2].min(0) - margin, verts[:, :2].max(0) + margin
        for t in np.linspace(0.0, 1.0, 21):
            p = start[:2] + t * (end[:2] - start[:2])
            if np.all(p >= lo) and np.all(p <= hi):
                return True
        return False

    def plan(self) -> list[sapien.Pose]:
        start = np.asarray(self.tcp().p, float)
        end = np.asarray(self.target.p, float)
        below = 0.0
        grasped = [o for o in self.env.task.objects if self.grasped(o)]
        if grasped:
            below = max(start[2] - o.bottom_z() for o in grasped)
        radius = 0.06 + (0.05 if grasped else 0.0)
        obstacles = [o for o in self.env.task.objects if o not in grasped and o.pose().p[2] > -1.0]
        tops = [o.top_z() for o in obstacles if self._footprint_hits(start, end, o, radius)]
        if not tops:
            return [self.target]
        safe = max(tops) + self.clearance + below
        if min(start[2], end[2]) >= safe:
            return [self.target]
        h = max(safe, start[2], end[2])
        points = []
        if start[2] < h - 0.01:
            points.append(sapien.Pose([start[0], start[1], h], self.target.q))
        if np.linalg.norm(end[:2] - start[:2]) > 0.01:
            points.append(sapien.Pose([end[0], end[1], h], self.target.q))
        points.append(self.target)
        return points

    def is_done(self) -> bool:
        if not self.check_done:
            return False
        tcp = self.tcp()
        return bool(
            np.linalg.norm(np.asarray(tcp.p) - self.target.p) < 0.01 and quat_angle_deg(tcp.q, self.target.q) < 1.0
        )

    def step(self) -> np.ndarray:
        if self.is_done():
            self.done = True
            return self.hold(self.vacuum)
        qpos = self.agent.qpos()[:7]
        if self.last_qpos is not None and np.degrees(np.linalg.norm(qpos - self.last_qpos)) < 0.1:
            self.still += 1
            if self.still >= 3:  # no progress: re-plan from here
                self.waypoints, self.still = self.plan(), 0
        else:
            self.still = 0
        self.last_qpos = qpos
        tcp = np.asarray(self.tcp().p)
        while len(self.waypoints) > 1 and np.linalg.norm(tcp - self.waypoints[0].p) < 0.02:
            self.waypoints.pop(0)
        return self.move_to(self.waypoints[0], self.vacuum)


def quat_angle_deg(q1, q2) -> float:
    d = abs(float(np.dot(np.asarray(q1, float), np.asarray(q2, float))))
    return float(np.degrees(2.0 * np.arccos(min(1.0, d))))
