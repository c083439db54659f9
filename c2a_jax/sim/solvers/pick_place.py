"""Pick, place and carry: `PickMove3dPlaceSolver` over `PickSolver`, `Move3dSolver` and
`PlaceSolver` / `PlaceOnActorSolver` (clevrskills_spec.md 5.3-5.5).

Placing on an actor puts the object on the middle of its top, except on a flat *area* (a 1 cm
tile: FollowOrder, Sort2d, Neighbour), where, as the source samples placements over the target's
surface, `area_placement` draws a free point the Panda can reach: areas hold several objects,
and those of Sort2d reach beyond the arm at their far edge."""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import placement
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.solvers.base import (
    GRIPPER_OFF,
    GRIPPER_ON,
    AbstractSolver,
    Move3dSolver,
    orbit_quat,
    pose_json,
    quat_angle_deg,
    quat_mul,
    ref,
)

AREA_MAX_HEIGHT = 0.02  # a target actor this flat is an area (spec 2.1: areas are 1 cm high)
PLACE_REACH = (0.33, 0.72)  # x-y distance from the base where the Panda lowers an object tool-down
AREA_CANDIDATES = 100
AREA_CLEARANCE = 0.02  # from the other objects' footprints (the source grows bounds by 2 cm)


def _inv(q) -> np.ndarray:
    return np.asarray(sapien.Pose(q=q).inv().q)


def is_area(obj) -> bool:
    return float(obj.spec.size[2]) <= AREA_MAX_HEIGHT


def area_placement(env, actor, area) -> np.ndarray:
    """An x-y point on `area` for `actor`'s centre (world frame).

    Candidates are drawn uniformly over the area's footprint box from the episode generator. Of
    those whose whole disc lies on the area, keeps `AREA_CLEARANCE` from every other object and
    which the arm reaches (`PLACE_REACH`), the one farthest from the area's middle is taken, which
    leaves the middle free for the objects still to come (a triangular area holds two objects only
    so). Failing that, the first whose centre lies at least half the actor's radius inside the area
    and which is free and reached; failing that, the first free one; failing that, the area's centre."""
    hull = placement.footprint(area.world_vertices())
    lo, hi = hull.min(0), hull.max(0)
    radius = float(np.max(np.linalg.norm(actor.local_vertices[:, :2], axis=1)))
    angles = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
    disc = radius / np.cos(np.pi / 16) * np.stack([np.cos(angles), np.sin(angles)], 1)
    others = [placement.footprint(o.world_vertices()) for o in env.task.objects
              if o is not actor and o is not area and o.pose().p[2] > -1.0]  # fmt: skip
    base = np.asarray(robot_lib.BASE_POSE.p[:2])
    middle = hull.mean(0)
    free, reached, edge = None, None, []
    for xy in env.rng.uniform(lo, hi, size=(AREA_CANDIDATES, 2)):
        if not _inside(xy, hull, 0.5 * radius):
            continue
        if any(placement.polygon_distance(disc + xy, o) < AREA_CLEARANCE for o in others):
            continue
        if PLACE_REACH[0] <= float(np.linalg.norm(xy - base)) <= PLACE_REACH[1]:
            reached = xy if reached is None else reached
            if _inside(xy, hull, radius):
                edge.append(xy)
        free = xy if free is None else free
    if edge:
        return max(edge, key=lambda xy: float(np.linalg.norm(xy - middle)))
    for choice in (reached, free):
        if choice is not None:
            return choice
    return np.asarray(area.pose().p[:2], float)


def _inside(point: np.ndarray, hull: np.ndarray, margin: float) -> bool:
    """Is `point` inside the counter-clockwise convex polygon `hull`, `margin` from every edge?"""
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([edges[:, 1], -edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
    return bool(np.all(np.einsum("ij,ij->i", point - hull, normals) <= -margin))


class PickSolver(AbstractSolver):
    """Descend onto the actor's top with the vacuum on, grasp, lift until its bottom is at `lift`."""

    def __init__(self, env, actor, lift: float = 0.1):
        super().__init__(env, actor=ref(actor), lift=lift)
        self.actor, self.lift = actor, lift

    def step(self) -> np.ndarray:
        tcp = self.tcp()
        p = np.asarray(tcp.p)
        q = orbit_quat(p)
        a = np.asarray(self.actor.pose().p)
        if self.grasped(self.actor):
            if self.actor.bottom_z() >= self.lift:
                self.done = True
                return self.move_to(sapien.Pose(p + [0, 0, 0.01], q), GRIPPER_ON)
            return self.move_to(sapien.Pose(p + [0, 0, 0.025], q), GRIPPER_ON)
        wrist = self.agent.qpos()[6]
        if wrist < -np.pi / 2 or wrist > np.pi / 2 + 0.9:  # unwind the wrist before descending
            turn = 0.5 if wrist < -np.pi / 2 else -0.5
            return self.move_to(tcp * sapien.Pose(q=[np.cos(turn / 2), 0, 0, np.sin(turn / 2)]), GRIPPER_OFF)
        top = self.actor.top_z()
        d_xy = float(np.linalg.norm(a[:2] - p[:2]))
        if d_xy < 0.02:
            dz = min(top - p[2], -0.001)
            return self.move_to(sapien.Pose([a[0], a[1], p[2] + dz], q), GRIPPER_ON)
        safe = max(0.2, top + 0.03)
        if p[2] < safe - 0.03:
            if d_xy < 0.05:
                return self.move_to(sapien.Pose([a[0], a[1], safe - 0.025], q), GRIPPER_OFF)
            return self.move_to(sapien.Pose(p + [0, 0, 0.05], q), GRIPPER_OFF)
        return self.move_to(sapien.Pose([a[0], a[1], safe + 0.03], q), GRIPPER_OFF)


class PlaceSolver(AbstractSolver):
    """Align the grasped actor over the target, lower it to `drop_distance` above, release."""

    def __init__(self, env, actor, target: sapien.Pose, match_ori_2d: bool = False, drop_distance: float = 0.02,
                 target_actor=None, **fields):  # fmt: skip
        extra = {"target_actor": ref(target_actor)} if target_actor is not None else {}
        super().__init__(env, actor=ref(actor), target_pose=pose_json(target), match_ori_2d=match_ori_2d,
                         drop_distance=drop_distance, **extra, **fields)  # fmt: skip
        self.actor, self.target, self.match_ori_2d, self.drop = actor, target, match_ori_2d, drop_distance
        self.target_actor = target_actor

    def current_target(self) -> sapien.Pose:
        return self.target

    def step(self) -> np.ndarray:
        if not self.grasped(self.actor):
            self.done = True
            return self.hold(GRIPPER_OFF)
        target = self.current_target()
        tcp = self.tcp()
        pose = self.actor.pose()
        if self.match_ori_2d:
            q_ee = quat_mul(quat_mul(target.q, _inv(pose.q)), tcp.q)
        else:
            q_ee = orbit_quat(tcp.p)
        offset = np.asarray(tcp.p) - np.asarray(pose.p)
        at_xy = float(np.linalg.norm(np.asarray(pose.p[:2]) - target.p[:2])) < 0.01
        at_rot = not self.match_ori_2d or quat_angle_deg(pose.q, target.q) < 1.0
        bottom = self.actor.bottom_z()
        target_bottom = float(target.p[2]) - (float(pose.p[2]) - bottom)
        if at_xy and at_rot:
            if bottom < target_bottom + self.drop:
                self.done = True
                return self.hold(GRIPPER_OFF)
            dz = bottom - (target_bottom + self.drop) + 0.002
            return self.move_to(sapien.Pose(np.asarray(tcp.p) - [0, 0, dz], q_ee), GRIPPER_ON)
        goal = np.array([target.p[0], target.p[1], max(float(pose.p[2]), float(target.p[2]) + self.drop)])
        return self.move_to(sapien.Pose(goal + offset, q_ee), GRIPPER_ON)


class PlaceOnActorSolver(PlaceSolver):
    """`PlaceSolver` whose target rides on a destination actor (recomputed every step)."""

    def __init__(self, env, actor, dest, relative: sapien.Pose, drop_distance: float = 0.02):
        self.dest, self.relative = dest, relative
        super().__init__(env, actor, dest.pose() * relative, drop_distance=drop_distance, target_actor=dest)

    def current_target(self) -> sapien.Pose:
        return sapien.Pose((self.dest.pose() * self.relative).p, self.actor.pose().q)


class PickMove3dPlaceSolver(AbstractSolver):
    """Pick an actor, carry it and place it on `target_actor` or at `target_pose`; with neither,
    lift it by `lift` and hold it (spec 5.3)."""

    def __init__(self, env, actor, target_pose: sapien.Pose | None = None, target_actor=None, match_ori: bool = False,
                 lift: float = 0.03, target_pose_name: str | None = None, extra: dict | None = None):  # fmt: skip
        super().__init__(
            env, actor=ref(actor), target_actor=ref(target_actor) if target_actor is not None else None,
            target_pose=pose_json(target_pose) if target_pose is not None else None,
            target_pose_name=target_pose_name, match_ori=match_ori, lift=lift, **(extra or {}),
        )  # fmt: skip
        self.actor, self.target_actor, self.match_ori, self.lift = actor, target_actor, match_ori, lift
        self.lift_only = target_pose is None and target_actor is None
        start = actor.pose()
        if self.lift_only:
            self.fixed_target = sapien.Pose(np.asarray(start.p) + [0, 0, lift], start.q)
        else:
            self.fixed_target = target_pose
        self.on_area = False
        if target_actor is not None:
            # on top of the target actor, 1 cm above its top, keeping the actor's orientation
            height = float(start.p[2]) - actor.bottom_z()
            dest = target_actor.pose()
            above = target_actor.top_z() - float(dest.p[2]) + height + 0.01
            self.relative = sapien.Pose([0.0, 0.0, above])
            self.on_area = is_area(target_actor)
            if self.on_area:  # a point on the area, kept in the area's frame
                xy = area_placement(env, actor, target_actor)
                offset = np.array([xy[0] - dest.p[0], xy[1] - dest.p[1], above])
                self.relative = sapien.Pose(dest.inv().to_transformation_matrix()[:3, :3] @ offset)
        self.role = None

    def target(self) -> sapien.Pose:
        if self.target_actor is not None:
            dest = self.target_actor.pose()
            p = (dest * self.relative).p if self.on_area else np.asarray(dest.p) + self.relative.p
            return sapien.Pose(p, self.actor.pose().q)
        return self.fixed_target

    def _keep(self, role: str, make) -> np.ndarray:
        """Run the sub-solver of `role`, reusing the current one while it has that role."""
        if self.sub is None or self.role != role or self.sub.done:
            self.sub, self.role = make(), role
        return self.sub.step()

    def at_target(self) -> bool:
        target, pose = self.target(), self.actor.pose()
        if np.linalg.norm(np.asarray(pose.p) - target.p) > 0.03:
            return False
        return not self.match_ori or quat_angle_deg(pose.q, target.q) <= 5.0

    def step(self) -> np.ndarray:
        actor = self.actor
        tcp = self.tcp()
        if self.grasped(actor):
            if self.lift_only:
                return self._keep("hold", lambda: Move3dSolver(
                    self.env, sapien.Pose(np.asarray(tcp.p) + [0, 0, 0.05], tcp.q), match_ori=False, vacuum=True,
                    check_done=False, role="hold", actor=actor))  # fmt: skip
            target = self.target()
            if float(np.linalg.norm(np.asarray(actor.pose().p[:2]) - target.p[:2])) < 0.03:
                if self.target_actor is not None:
                    return self._keep("place", lambda: PlaceOnActorSolver(
                        self.env, actor, self.target_actor, self.relative, drop_distance=self.lift))  # fmt: skip
                return self._keep("place", lambda: PlaceSolver(
                    self.env, actor, target, match_ori_2d=self.match_ori, drop_distance=self.lift))  # fmt: skip

            def carry():
                raised = np.asarray(target.p) + [0, 0, self.lift]
                goal_p = np.asarray(tcp.p) + (raised - np.asarray(actor.pose().p))
                q_actor = np.asarray(actor.pose().q)
                if np.dot(q_actor, target.q) < 0:
                    q_actor = -q_actor
                # turn the tool by the world-frame rotation that takes the actor to the target
                goal_q = quat_mul(quat_mul(target.q, _inv(q_actor)), tcp.q) if self.match_ori else tcp.q
                return Move3dSolver(self.env, sapien.Pose(goal_p, goal_q), match_ori=self.match_ori, vacuum=True,
                                    role="carry", actor=actor, target_actor=self.target_actor,
                                    extra={"target_pose_name": self.action_state.get("target_pose_name")})  # fmt: skip

            return self._keep("carry", carry)
        if self.at_target() and not self.lift_only:
            self.done = True
        if self.done:
            self.sub = None
            return self.hold(GRIPPER_OFF)
        if not self.env.contact_ids(actor.id):  # falling after release
            near = float(np.linalg.norm(np.asarray(tcp.p) - [*actor.pose().p[:2], actor.top_z()])) < 0.005
            self.sub = None
            return self.hold(GRIPPER_ON if near else GRIPPER_OFF)
        a = np.asarray(actor.pose().p)
        if float(np.linalg.norm(np.asarray(tcp.p[:2]) - a[:2])) < 0.03:
            lift = 0.1 if self.lift_only else self.lift
            return self._keep("pick", lambda: PickSolver(self.env, actor, lift=lift))
        return self._keep("approach", lambda: Move3dSolver(
            self.env, sapien.Pose([a[0], a[1], actor.top_z() + 0.03]), match_ori=False, vacuum=False,
            role="approach", target_actor=actor))  # fmt: skip
