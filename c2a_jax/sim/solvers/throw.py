"""Throwing: `PickMove3dThrowSolver` over `PickSolver`, `Move3dSolver` and `ThrowSolver`
(clevrskills_spec.md 5.8).

Why the throw drives joint velocities: the arm's delta-pose controller (spec 1.6) sets only joint
*position* targets, and with its drives (stiffness 1e3, damping 1e2) the tool lags so much that it
never moves faster than ~0.7 m/s, while a throw to a target 0.75-0.85 m from the base needs ~1.5-2.5
m/s. During the swing `ThrowSolver` therefore also sets the arm's joint drive *velocity* targets to
the IK joint step of its action divided by the control period (a feed-forward the controller itself
never writes), and clears them when it finishes. The recorded 7-D action is still the delta-pose
action of the same motion. Nothing outside this module changes the controller.

Differences from the source's xArm6 motion: the Panda winds up 0.3 m from its base *towards* the
target (not 0.25 m beside it) and swings straight outwards and upwards with the tool pointing down
(no wrist flick); after release it follows through for a few steps, since a braking tool above the
object would knock it down.
"""

from __future__ import annotations

import numpy as np
import sapien
import torch

from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.predicates import ballistic_path
from c2a_jax.sim.solvers.base import GRIPPER_OFF, GRIPPER_ON, AbstractSolver, Move3dSolver, orbit_quat, ref
from c2a_jax.sim.solvers.pick_place import PickSolver

WIND_RADIUS, WIND_HEIGHT, WIND_JITTER = 0.3, 0.3, 0.02  # pre-throw pose: from the base towards the target
WIND_TOLERANCE = 0.05
THROW_UP = 0.8  # upward component of the swing direction (horizontal part has length 1)
THROW_ACCEL = 0.02  # the tool's step grows by this much per control step ...
THROW_STEP = 0.1  # ... up to this (m per control step: 2 m/s)
FOLLOW_THROUGH = 5  # steps of swing after the release; done then (spec: done 5 steps after release)
TOPPLE_AIM = 0.4  # to topple, the object's centre arrives in this top fraction of the target's height
AIM_HEIGHT = 0.7  # otherwise in this top fraction
FLAT, AREA_INSET = 0.02, 0.25  # a target this low is an area: land this fraction of its depth inside
REACH = 0.8  # objects farther than this from the base are not picked up again


def set_arm_velocity(env, velocity: np.ndarray) -> None:
    """Joint drive velocity targets of the arm (zeros: the controller's own behaviour)."""
    arm = env.agent.arm
    arm.articulation.set_joint_drive_velocity_targets(
        torch.as_tensor(np.asarray(velocity, dtype=np.float32)[None]), arm.joints, arm.active_joint_indices
    )


def ik_joint_step(env, target: sapien.Pose) -> np.ndarray | None:
    """Arm joint change that brings the TCP to `target` (the controller's IK), or None."""
    arm = env.agent.arm
    qpos = arm._px.get_qpos()
    local = arm._px.root_pose.inv() * target
    result, ok, _ = arm._pmodel.compute_inverse_kinematics(
        arm._tcp_index, local, initial_qpos=qpos, active_qmask=arm._qmask, max_iterations=robot_lib.IK_ITERATIONS
    )
    return (result - qpos)[arm._arm_idx] if ok else None


def reaches_target(actor, target, topple: bool) -> bool:
    """Would the actor, let go now, reach the target? Its ballistic flight (from its current
    velocity) is followed along the line from the actor to the target: to a flat area, it must land
    `AREA_INSET` of the area's depth past the near edge; to an upright target, its centre must be at
    least `AIM_HEIGHT` (`TOPPLE_AIM` to topple) up the target when its leading edge gets to the
    target's near face. Thrown ever faster, the object first falls short, then gets there: the
    first step at which it gets there is the release."""
    p = np.asarray(actor.pose().p)
    v, _ = actor.velocity()
    c = np.asarray(target.pose().p)
    d = c[:2] - p[:2]
    distance = float(np.linalg.norm(d))
    u = d / max(distance, 1e-6)
    tv, av = target.world_vertices(), actor.world_vertices() - p
    t_half = float(np.max((tv[:, :2] - c[:2]) @ u))
    a_half = float(np.max(av[:, :2] @ u))
    z_lo, z_hi = float(tv[:, 2].min()), float(tv[:, 2].max())
    path = ballistic_path(p, v, 1.5, 300)
    progress = (path[:, :2] - p[:2]) @ u
    bottom = path[:, 2] + float(av[:, 2].min())
    if z_hi - z_lo <= FLAT:
        landed = np.flatnonzero((bottom <= z_hi) & (np.arange(len(path)) > 0) & (v[2] <= 0 or path[:, 2] < p[2]))
        if not len(landed):
            return False
        return bool(progress[landed[0]] >= distance - t_half + 2 * AREA_INSET * t_half)
    ahead = np.flatnonzero(progress >= distance - t_half - a_half)
    if not len(ahead) or np.any(bottom[: ahead[0] + 1] < 0.0):
        return False
    aim = TOPPLE_AIM if topple else AIM_HEIGHT
    return bool(path[ahead[0], 2] >= z_hi - aim * (z_hi - z_lo))


class ThrowSolver(AbstractSolver):
    """Swing the grasped actor outwards and upwards towards the target; release when its predicted
    flight gets to the target (`reaches_target`); follow through; done."""

    def __init__(self, env, actor, target, topple_target: bool = False):
        super().__init__(env, actor=ref(actor), target_actor=ref(target), topple_target=bool(topple_target))
        self.actor, self.target, self.topple = actor, target, topple_target
        base = np.asarray(robot_lib.BASE_POSE.p)
        d = np.asarray(target.pose().p) - base
        d[2] = 0.0
        u = d / max(np.linalg.norm(d), 1e-6)
        self.direction = (u + [0.0, 0.0, THROW_UP]) / np.linalg.norm(u + [0.0, 0.0, THROW_UP])
        self.quat = self.tcp().q
        self.steps = 0
        self.released_at: int | None = None

    def finish(self) -> np.ndarray:
        self.done = True
        self.stop()
        return self.hold(GRIPPER_OFF)

    def stop(self) -> None:
        set_arm_velocity(self.env, np.zeros(7))

    def step(self) -> np.ndarray:
        if self.done:
            return self.hold(GRIPPER_OFF)
        if self.released_at is None:
            if not self.grasped(self.actor):  # dropped during the swing
                self.released_at = self.steps
            elif reaches_target(self.actor, self.target, self.topple):
                self.released_at = self.steps
        if self.released_at is not None and self.steps - self.released_at >= FOLLOW_THROUGH:
            return self.finish()
        self.steps += 1
        speed = min(THROW_STEP, THROW_ACCEL * self.steps)
        goal = sapien.Pose(np.asarray(self.tcp().p) + speed * self.direction, self.quat)
        joints = ik_joint_step(self.env, goal)
        if joints is None:  # the arm is stretched out: let go now
            if self.released_at is None:
                self.released_at = self.steps
            set_arm_velocity(self.env, np.zeros(7))
            return self.hold(GRIPPER_OFF)
        set_arm_velocity(self.env, joints * self.env.control_freq)
        vacuum = GRIPPER_ON if self.released_at is None else GRIPPER_OFF
        return robot_lib.delta_action_to(self.tcp(), goal, vacuum)


class PickMove3dThrowSolver(AbstractSolver):
    """Pick the actor up (unless held), wind up to the pre-throw pose, throw; if it lands within
    reach and the target was missed, the top-level solver's next step picks it up again."""

    def __init__(self, env, throw_actor, target_actor, target_2d: bool = False, topple_target: bool = False):
        super().__init__(env, throw_actor=ref(throw_actor), target_actor=ref(target_actor), target_pos=None,
                         target_2d=bool(target_2d), topple_target=bool(topple_target), action="picking")  # fmt: skip
        self.actor, self.target = throw_actor, target_actor
        self.topple = bool(topple_target)
        base = np.asarray(robot_lib.BASE_POSE.p)
        d = np.asarray(target_actor.pose().p) - base
        d[2] = 0.0
        p = base + WIND_RADIUS * d / max(np.linalg.norm(d), 1e-6) + [0.0, 0.0, WIND_HEIGHT]
        p = p + env.rng.uniform(-WIND_JITTER, WIND_JITTER, size=3)
        self.wind_pose = sapien.Pose(p, orbit_quat(p))
        self.waypoints: list[sapien.Pose] = []

    def wind_path(self) -> list[sapien.Pose]:
        """Waypoints around the base (radius `WIND_RADIUS`, at most 45 deg apart) from the tool's
        bearing to the pre-throw pose: a straight move to a target behind the robot would pass
        over the base, where the arm folds up and loses the object."""
        base = np.asarray(robot_lib.BASE_POSE.p)
        rel = np.asarray(self.tcp().p) - base
        end = self.wind_pose.p - base
        a0, a1 = np.arctan2(rel[1], rel[0]), np.arctan2(end[1], end[0])
        turn = (a1 - a0 + np.pi) % (2 * np.pi) - np.pi
        n = int(np.ceil(abs(turn) / (np.pi / 4)))
        points = []
        for k in range(1, n):
            a = a0 + turn * k / n
            p = base + [WIND_RADIUS * np.cos(a), WIND_RADIUS * np.sin(a), self.wind_pose.p[2]]
            points.append(sapien.Pose(p, orbit_quat(p)))
        return [*points, self.wind_pose]

    def _set(self, action: str, solver: AbstractSolver | None) -> None:
        self.action_state["action"] = action
        self.sub = solver

    def step(self) -> np.ndarray:
        if isinstance(self.sub, ThrowSolver) and not self.sub.done:
            return self.sub.step()
        grasped = self.grasped(self.actor)
        if not grasped:
            actor_xy = np.asarray(self.actor.pose().p[:2]) - np.asarray(robot_lib.BASE_POSE.p[:2])
            if not self.actor.is_static(lin=0.01, ang=0.1) or np.linalg.norm(actor_xy) > REACH:
                if isinstance(self.sub, ThrowSolver):
                    self.done = True  # thrown and out of reach (or still moving): nothing more to do here
                if self.action_state["action"] != "waiting":
                    self._set("waiting", None)
                return self.hold(GRIPPER_OFF)
            if not isinstance(self.sub, PickSolver) or self.sub.done:
                self._set("picking", PickSolver(self.env, self.actor, lift=0.1))
            return self.sub.step()
        near = np.linalg.norm(np.asarray(self.tcp().p) - self.wind_pose.p) < WIND_TOLERANCE
        if not near and not isinstance(self.sub, ThrowSolver):
            if not isinstance(self.sub, Move3dSolver):
                self.waypoints = self.wind_path()
            if not isinstance(self.sub, Move3dSolver) or (self.sub.done and len(self.waypoints) > 1):
                if isinstance(self.sub, Move3dSolver):
                    self.waypoints.pop(0)
                self._set("winding", Move3dSolver(self.env, self.waypoints[0], match_ori=True, vacuum=True,
                                                  role="hold", actor=self.actor))  # fmt: skip
            if not self.sub.done:
                return self.sub.step()
        self._set("throwing", ThrowSolver(self.env, self.actor, self.target, self.topple))
        return self.sub.step()
