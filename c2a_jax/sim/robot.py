"""The Panda with the ClevrSkills vacuum tool, its EE-frame delta-pose controller and its suction.

The arm is ManiSkill3's Panda description (links 0-8, its meshes); the gripper is replaced by our
own vacuum head built from primitives (clevrskills_spec.md 1.4.2, decision 1): a mount ring, a trunk,
a plate and five suction cups on compliant prismatic joints (+-1.5 mm, stiffness 200, damping 5),
with the tool centre point `link_tcp` 0.126 m below the flange.

Control (spec 1.6): a 7-D action ``[dx, dy, dz, rx, ry, rz, vacuum]`` in [-1, 1]: translation and
axis-angle rotation in the *current TCP frame*, scaled to 0.1 m / 0.1 rad (rotation clipped by
norm), applied to the measured TCP pose, solved by SAPIEN's pinocchio IK (100 iterations from the
current joints; on failure the joints hold). The vacuum (spec 1.5) pulls an object towards every cup
that touches it with forces at the contact points; nothing is attached kinematically.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import xml.etree.ElementTree as ET

import numpy as np
import sapien
import torch
from gymnasium import spaces

from c2a_jax.fileio import atomic_write_text

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
CUP_JOINTS = tuple(f"suction_cup_{i}_joint" for i in range(1, 6))
CUP_LINKS = tuple(f"suction_cup_{i}" for i in range(1, 6))
TCP_LINK = "link_tcp"
VACUUM_BASE_LINK = "vacuum_base_link"
GRIPPER_LINKS = (TCP_LINK, VACUUM_BASE_LINK) + CUP_LINKS  # spec 1.4.1 "gripper_without_camera"

BASE_POSE = sapien.Pose([-0.65, 0.0, 0.0])
REST_QPOS = np.array([0.0, 0.0, 0.0, -2 * np.pi / 3, 0.0, 2 * np.pi / 3, np.pi / 4] + [0.0] * 5, dtype=np.float32)
NEUTRAL_EE_QUAT = np.array([0.0, -1.0, 0.0, 0.0])  # tool pointing down (wxyz)
WRIST_QPOS_INDEX = 6
HAND_CAMERA_POSE = sapien.Pose([0.0464982, -0.0200011, 0.0360011], [0.0, 0.70710678, 0.0, 0.70710678])

CUP_XY = ((0.018, -0.025), (0.018, 0.025), (-0.018, -0.025), (-0.018, 0.025), (0.0, 0.0))
CUP_RADIUS = 0.008
TCP_OFFSET = 0.126  # z of link_tcp in vacuum_base_link
CUP_BOTTOM = 0.1265  # cup faces 0.5 mm beyond the TCP: a spawned object (top 0.5 mm below the TCP) touches them

# Vacuum constants (spec 1.5).
SUCTION_FORCE_PER_CUP = 20.0
# Ours, not the source's: the pull on an object is capped at this acceleration times its mass. The
# source's 100 N on a 10 g object (NovelAdjective's x0.3) is 10,000 m/s^2: the contact solver
# cannot hold it still, it spins in the cup and is flung. 700 m/s^2 leaves every default-size object
# (the lightest, the 0.19 kg star: 131 N) and the throws (0.15 kg: 102 N) at the source's 100 N.
SUCTION_MAX_ACCEL = 700.0
MIN_IMPULSE = 1e-5

# Controller constants (spec 1.4.1 drives, 1.6 bounds).
ARM_STIFFNESS, ARM_DAMPING, ARM_FORCE_LIMIT = 1e3, 1e2, 100.0
CUP_STIFFNESS, CUP_DAMPING, CUP_FORCE_LIMIT = 200.0, 5.0, 200.0
POS_BOUND, ROT_BOUND = 0.1, 0.1
IK_ITERATIONS = 100


# --------------------------------------------------------------------------------------------
# Robot description


def _cylinder(parent: ET.Element, tag: str, radius: float, length: float, xyz, rgba=None) -> None:
    el = ET.SubElement(parent, tag)
    ET.SubElement(el, "origin", xyz=" ".join(f"{v:.6g}" for v in xyz), rpy="0 0 0")
    geometry = ET.SubElement(el, "geometry")
    ET.SubElement(geometry, "cylinder", radius=f"{radius}", length=f"{length}")
    if rgba is not None:
        material = ET.SubElement(el, "material", name=f"m{rgba}")
        ET.SubElement(material, "color", rgba=rgba)


def _box(parent: ET.Element, tag: str, size, xyz, rgba=None) -> None:
    el = ET.SubElement(parent, tag)
    ET.SubElement(el, "origin", xyz=" ".join(f"{v:.6g}" for v in xyz), rpy="0 0 0")
    geometry = ET.SubElement(el, "geometry")
    ET.SubElement(geometry, "box", size=" ".join(f"{v:.6g}" for v in size))
    if rgba is not None:
        material = ET.SubElement(el, "material", name=f"m{rgba}")
        ET.SubElement(material, "color", rgba=rgba)


def _inertial(parent: ET.Element, mass: float, xyz, inertia: float) -> None:
    el = ET.SubElement(parent, "inertial")
    ET.SubElement(el, "origin", xyz=" ".join(f"{v:.6g}" for v in xyz), rpy="0 0 0")
    ET.SubElement(el, "mass", value=f"{mass}")
    ET.SubElement(el, "inertia", ixx=f"{inertia}", ixy="0", ixz="0", iyy=f"{inertia}", iyz="0", izz=f"{inertia}")


def panda_vacuum_urdf_text() -> tuple[str, str]:
    """(URDF, SRDF) of the Panda arm with the vacuum head, mesh paths made absolute."""
    from mani_skill import PACKAGE_ASSET_DIR

    panda_dir = os.path.join(PACKAGE_ASSET_DIR, "robots", "panda")
    tree = ET.parse(os.path.join(panda_dir, "panda_v2.urdf"))
    robot = tree.getroot()
    robot.set("name", "panda_vacuum")
    hand_links = {"panda_hand", "panda_hand_tcp", "panda_leftfinger", "panda_rightfinger",
                  "panda_leftfinger_pad", "panda_rightfinger_pad"}  # fmt: skip
    for el in list(robot):
        if el.tag == "link" and el.get("name") in hand_links:
            robot.remove(el)
        elif el.tag == "joint" and el.find("child").get("link") in hand_links:
            robot.remove(el)
    for mesh in robot.iter("mesh"):
        mesh.set("filename", os.path.join(panda_dir, mesh.get("filename")))

    white, grey, black = "0.9 0.9 0.9 1", "0.5 0.5 0.5 1", "0.15 0.15 0.15 1"
    joint = ET.SubElement(robot, "joint", name="vacuum_base_joint", type="fixed")
    ET.SubElement(joint, "parent", link="panda_link8")
    ET.SubElement(joint, "child", link=VACUUM_BASE_LINK)
    ET.SubElement(joint, "origin", xyz="0 0 0", rpy=f"0 0 {-np.pi / 4}")
    base = ET.SubElement(robot, "link", name=VACUUM_BASE_LINK)
    _inertial(base, 0.656, (0, 0, 0.055), 4e-4)
    # mount ring, trunk, cup plate
    for tag, rgba in (("visual", white), ("collision", None)):
        _cylinder(base, tag, 0.04, 0.01, (0, 0, 0.005), rgba)
        _cylinder(base, tag, 0.02, 0.0945, (0, 0, 0.05725), rgba)
    _box(base, "visual", (0.06, 0.074, 0.01), (0, 0, 0.1095), grey)
    _box(base, "collision", (0.06, 0.074, 0.01), (0, 0, 0.1095))
    cup_length = CUP_BOTTOM - 0.1145
    for name, joint_name, (x, y) in zip(CUP_LINKS, CUP_JOINTS, CUP_XY, strict=True):
        cup = ET.SubElement(robot, "link", name=name)
        centre = (x, y, 0.1145 + cup_length / 2)
        _inertial(cup, 0.002, centre, 5.167e-7)
        _cylinder(cup, "visual", CUP_RADIUS, cup_length, centre, black)
        _cylinder(cup, "collision", CUP_RADIUS, cup_length, centre)
        j = ET.SubElement(robot, "joint", name=joint_name, type="prismatic")
        ET.SubElement(j, "parent", link=VACUUM_BASE_LINK)
        ET.SubElement(j, "child", link=name)
        ET.SubElement(j, "origin", xyz="0 0 0", rpy="0 0 0")
        ET.SubElement(j, "axis", xyz="0 0 1")
        ET.SubElement(j, "limit", effort="100", lower="-0.0015", upper="0.0015", velocity="0.5")
    tcp_joint = ET.SubElement(robot, "joint", name="joint_tcp", type="fixed")
    ET.SubElement(tcp_joint, "parent", link=VACUUM_BASE_LINK)
    ET.SubElement(tcp_joint, "child", link=TCP_LINK)
    ET.SubElement(tcp_joint, "origin", xyz=f"0 0 {TCP_OFFSET}", rpy="0 0 0")
    ET.SubElement(robot, "link", name=TCP_LINK)

    # Self-collision filter: the stock Panda pairs for links 0-7, plus the head against its cups,
    # the cups against each other, and the head against the last arm links.
    srdf = ET.parse(os.path.join(panda_dir, "panda_v2.srdf")).getroot()
    for el in list(srdf):
        if el.tag == "disable_collisions" and ({el.get("link1"), el.get("link2")} & hand_links):
            srdf.remove(el)
    head = [VACUUM_BASE_LINK, *CUP_LINKS]
    for i, a in enumerate(head):
        for b in head[i + 1 :] + ["panda_link7", "panda_link6", "panda_link5"]:
            ET.SubElement(srdf, "disable_collisions", link1=a, link2=b, reason="Adjacent")
    return ET.tostring(robot, encoding="unicode"), ET.tostring(srdf, encoding="unicode")


@functools.cache
def panda_vacuum_urdf_path() -> str:
    """Write the robot description into a cache directory (once per process); return the URDF path."""
    urdf, srdf = panda_vacuum_urdf_text()
    cache = os.environ.get("C2A_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "c2a_jax"))
    path = os.path.join(cache, "robots", "panda_vacuum.urdf")
    atomic_write_text(path, urdf)
    atomic_write_text(path[:-4] + "srdf", srdf)
    return path


# --------------------------------------------------------------------------------------------
# Pose helpers shared by the controller and the solvers (numpy, single environment)


def axis_angle_to_quat(v: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    axis = np.asarray(v) / angle
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """The smallest-angle axis-angle vector of a unit quaternion (wxyz)."""
    q = np.asarray(q, dtype=np.float64)
    if q[0] < 0:
        q = -q
    s = np.linalg.norm(q[1:])
    if s < 1e-12:
        return np.zeros(3)
    angle = 2 * np.arctan2(s, q[0])
    return q[1:] / s * angle


def delta_action_to(ee_pose: sapien.Pose, target: sapien.Pose, vacuum: float) -> np.ndarray:
    """The action that moves the TCP from `ee_pose` towards `target` (spec 1.6
    ``ee_pose_to_ee_delta_action``): delta in the TCP frame, divided by the bounds, and if any
    component exceeds 1 the whole 6-vector is scaled down so the direction is kept."""
    q_target = np.asarray(target.q, dtype=np.float64)
    if np.linalg.norm(q_target + np.asarray(ee_pose.q)) < 0.5:
        q_target = -q_target
    delta = ee_pose.inv() * sapien.Pose(target.p, q_target)
    six = np.concatenate([np.asarray(delta.p) / POS_BOUND, quat_to_axis_angle(delta.q) / ROT_BOUND])
    peak = np.abs(six).max()
    if peak > 1.0:
        six = six / peak
    return np.concatenate([six, [vacuum]]).astype(np.float32)


def link_components(articulation) -> dict:
    """Link name (as in the URDF) -> SAPIEN link component, for a ManiSkill articulation."""
    return {name: link._objs[0] for name, link in articulation.links_map.items()}


# --------------------------------------------------------------------------------------------
# Controllers (ManiSkill3 controller interface)

from mani_skill.agents.controllers.base_controller import BaseController, ControllerConfig  # noqa: E402


class EEDeltaPoseController(BaseController):
    """Delta pose of the TCP in its own frame, solved by pinocchio IK once per control step."""

    config: EEDeltaPoseControllerConfig
    sets_target_qpos = True
    sets_target_qvel = False

    def _initialize_action_space(self):
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)

    def set_drive_property(self):
        for joint in self.joints:
            joint.set_drive_properties(ARM_STIFFNESS, ARM_DAMPING, force_limit=ARM_FORCE_LIMIT)
            joint.set_friction(0.0)

    def _setup_ik(self):
        px = self.articulation._objs[0]
        self._px = px
        self._pmodel = px.create_pinocchio_model()
        self._tcp = link_components(self.articulation)[self.config.ee_link]
        self._tcp_index = [link.name for link in px.get_links()].index(self._tcp.name)
        names = [j.name for j in px.get_active_joints()]
        self._arm_idx = np.array(
            [next(i for i, m in enumerate(names) if m.endswith(n)) for n in self.config.joint_names]
        )
        self._qmask = np.zeros(len(names), dtype=np.int32)
        self._qmask[self._arm_idx] = 1

    def reset(self):
        self._setup_ik()
        self.last_ik_success = True

    def tcp_pose(self) -> sapien.Pose:
        return self._tcp.entity_pose

    def set_action(self, action):
        a = np.asarray(action.cpu().numpy() if isinstance(action, torch.Tensor) else action, dtype=np.float64)
        a = a.reshape(-1)[:6]
        pos = np.clip(a[:3], -1.0, 1.0) * POS_BOUND
        rot = a[3:6].copy()
        norm = np.linalg.norm(rot)
        if norm > 1.0:
            rot = rot / norm
        rot = rot * ROT_BOUND
        target = self.tcp_pose() * sapien.Pose(pos, axis_angle_to_quat(rot))
        self.set_target_pose(target)

    def set_target_pose(self, target: sapien.Pose) -> bool:
        """Drive the arm towards a world-frame TCP pose; returns whether IK converged."""
        qpos = self._px.get_qpos()
        local = self._px.root_pose.inv() * target
        result, success, _ = self._pmodel.compute_inverse_kinematics(
            self._tcp_index, local, initial_qpos=qpos, active_qmask=self._qmask, max_iterations=IK_ITERATIONS
        )
        self.last_ik_success = bool(success)
        goal = result[self._arm_idx] if success else qpos[self._arm_idx]
        self.articulation.set_joint_drive_targets(
            torch.as_tensor(goal[None], dtype=torch.float32), self.joints, self.active_joint_indices
        )
        return self.last_ik_success


@dataclasses.dataclass
class EEDeltaPoseControllerConfig(ControllerConfig):
    ee_link: str = TCP_LINK
    controller_cls = EEDeltaPoseController


class VacuumController(BaseController):
    """The five-cup suction of spec 1.5, run before every physics sub-step.

    `contacts` must be set by the environment to a callable returning the contacts of the previous
    sub-step. An object is grasped when it is touched by exactly as many cups as are active; each
    touching cup pulls it with 100 N / n at the contact point.
    """

    config: VacuumControllerConfig
    sets_target_qpos = True
    sets_target_qvel = False
    contacts = staticmethod(lambda: ())
    on = False
    grasping: list = []  # rigid-body components currently held (replaced, never mutated)
    ready = np.zeros(len(CUP_LINKS), dtype=bool)

    def _initialize_action_space(self):
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def set_drive_property(self):
        for joint in self.joints:
            joint.set_drive_properties(CUP_STIFFNESS, CUP_DAMPING, force_limit=CUP_FORCE_LIMIT)
            joint.set_friction(0.0)

    def reset(self):
        links = link_components(self.articulation)
        self.cups = [links[name] for name in CUP_LINKS]
        self._cup_index = {c.entity.per_scene_id: i for i, c in enumerate(self.cups)}
        self._base_id = links[VACUUM_BASE_LINK].entity.per_scene_id
        self.on = False
        self.history = np.zeros(len(self.cups))
        self.ready = np.zeros(len(self.cups), dtype=bool)
        self.grasping: list = []  # rigid-body components currently held
        self.articulation.set_joint_drive_targets(
            torch.zeros((1, len(self.joints))), self.joints, self.active_joint_indices
        )

    def set_action(self, action):
        value = float(action.reshape(-1)[0]) if hasattr(action, "reshape") else float(action[0])
        on = value > 0
        if not on:
            self.history[:] = 0.0
            self.grasping = []
        self.on = on

    def before_simulation_step(self):
        weight = 0.5**self._sim_steps
        touching: dict[int, list] = {}  # cup index -> [(body, point)]
        per_body: dict[int, set] = {}
        for contact in self.contacts():
            a, b = contact.body_a, contact.body_b
            ia, ib = self._cup_index.get(contact.id_a), self._cup_index.get(contact.id_b)
            if (ia is None) == (ib is None):
                continue  # neither or both are cups
            cup, other, other_id = (ia, b, contact.id_b) if ia is not None else (ib, a, contact.id_a)
            if other_id == self._base_id:
                continue
            if np.linalg.norm(contact.impulse) <= MIN_IMPULSE:
                continue
            touching.setdefault(cup, []).append((other, contact.position))
            per_body.setdefault(other_id, set()).add(cup)
        in_contact = np.array([i in touching for i in range(len(self.cups))], dtype=np.float64)
        self.ready = in_contact.astype(bool)
        if not self.on:
            self.grasping = []
            return
        if in_contact.all():
            self.history = in_contact
        else:
            self.history = weight * self.history + (1 - weight) * in_contact
        n = int((self.history > 0.5).sum())
        grasped = {}
        if n >= 1:
            force = SUCTION_FORCE_PER_CUP * len(self.cups) / n
            for cup, items in touching.items():
                axis = self.cups[cup].entity_pose.to_transformation_matrix()[:3, 2]
                for other, point in items:
                    oid = other.entity.per_scene_id
                    if len(per_body[oid]) != n:
                        continue
                    grasped[oid] = other
                    f = (self._capped(force, other) * axis).astype(np.float32)
                    self.cups[cup].add_force_at_point(f, point.astype(np.float32))
                    if hasattr(other, "add_force_at_point") and not getattr(other, "kinematic", False):
                        other.add_force_at_point(-f, point.astype(np.float32))
        self.grasping = list(grasped.values())

    def _capped(self, force: float, body) -> float:
        """`force` per cup, scaled down so that the total pull (5 cups' worth) accelerates `body`
        by at most `SUCTION_MAX_ACCEL` (kinematic and static bodies: unchanged)."""
        mass = float(getattr(body, "mass", 0.0) or 0.0)
        if mass <= 0.0 or getattr(body, "kinematic", False):
            return force
        total = SUCTION_FORCE_PER_CUP * len(self.cups)
        return force * min(1.0, SUCTION_MAX_ACCEL * mass / total)


@dataclasses.dataclass
class VacuumControllerConfig(ControllerConfig):
    controller_cls = VacuumController


# --------------------------------------------------------------------------------------------
# The agent

from mani_skill.agents.base_agent import BaseAgent, Keyframe  # noqa: E402
from mani_skill.agents.registration import register_agent  # noqa: E402


@register_agent()
class PandaVacuum(BaseAgent):
    """Panda arm + ClevrSkills vacuum head; one control mode, ``pd_ee_delta_pose``."""

    uid = "panda_vacuum"
    urdf_config = dict()
    keyframes = dict(rest=Keyframe(qpos=REST_QPOS, pose=BASE_POSE))
    disable_self_collisions = False

    def __init__(self, *args, **kwargs):
        self.urdf_path = panda_vacuum_urdf_path()
        super().__init__(*args, **kwargs)

    @property
    def _controller_configs(self):
        return dict(
            pd_ee_delta_pose=dict(
                arm=EEDeltaPoseControllerConfig(list(ARM_JOINTS)),
                gripper=VacuumControllerConfig(list(CUP_JOINTS)),
            )
        )

    @property
    def _sensor_configs(self):
        """The hand camera rides on the vacuum head and looks along the tool (spec 1.8)."""
        from mani_skill.sensors.camera import CameraConfig

        mount = self.robot.links_map[VACUUM_BASE_LINK]
        return [CameraConfig("hand_camera", HAND_CAMERA_POSE, 256, 256, np.pi / 2, 0.01, 10, mount=mount)]

    def _after_init(self):
        links = link_components(self.robot)
        self.tcp_link = links[TCP_LINK]
        self.gripper_links = [links[name] for name in GRIPPER_LINKS]
        self.robot_links = list(links.values())

    # numpy views for solvers and predicates (single environment)
    @property
    def arm(self) -> EEDeltaPoseController:
        return self.controller.controllers["arm"]

    @property
    def vacuum(self) -> VacuumController:
        return self.controller.controllers["gripper"]

    def tcp_pose(self) -> sapien.Pose:
        return self.tcp_link.entity_pose

    def qpos(self) -> np.ndarray:
        return np.asarray(self.robot._objs[0].get_qpos())

    def qvel(self) -> np.ndarray:
        return np.asarray(self.robot._objs[0].get_qvel())

    def check_grasp(self, body) -> bool:
        key = body.entity.per_scene_id
        return any(b.entity.per_scene_id == key for b in self.vacuum.grasping)
