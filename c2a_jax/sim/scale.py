"""The balance scale of BalanceScale, built procedurally as a SAPIEN articulation (spec 3.15).

Geometry and joint settings follow ClevrSkills' `_add_scale`: a fixed root box at the pivot, a
beam (0.5 x 0.04 x 0.04 m along y) on a revolute joint about x limited to +-20 deg, with a weak
drive (stiffness 0.1, damping 0.1) towards level, and two 10 x 10 cm plates hanging 0.6 m below
the beam's ends on free revolute joints (+-89 deg), so they stay level as the beam tilts. Joint
friction 1e-4, damping 0.01. Links are boxes, density 1000 (SAPIEN's default). No assets.

`ScalePart` gives a link the `SceneObject` interface (pose, vertices, contacts by id), so the
pick-and-place solvers can take a plate as their target actor.
"""

from __future__ import annotations

import numpy as np
import sapien

from c2a_jax.sim import objects
from c2a_jax.sim.tasks.base import SceneObject

PIVOT = sapien.Pose([-0.05, 0.0, 0.7])
ARM_LENGTH = 0.25
LIMIT = np.deg2rad(20.0)
PLATE_DROP = 0.6
PLATE_HALF = (0.05, 0.05, 0.01)
JOINT_FRICTION, JOINT_DAMPING = 1e-4, 0.01
DRIVE_STIFFNESS, DRIVE_DAMPING = 0.1, 0.1
PLATE_RGBA = (0.0, 1.0, 0.0, 1.0)


class ScalePart(SceneObject):
    """An articulation link seen as a scene object (a box of `half_size`)."""

    def __init__(self, name: str, link, half_size):
        self.spec = objects.ObjectSpec.make(None, "cube", size=tuple(2 * h for h in half_size))
        self.name = name
        self.actor = link
        self.body = link._objs[0]
        self.entity = self.body.entity
        self.id = int(self.entity.per_scene_id)
        self.local_vertices = self.spec.vertices

    @property
    def dynamic(self) -> bool:
        return False  # moved by its joints, never set free

    def velocity(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.body.linear_velocity), np.asarray(self.body.angular_velocity)


def _material(rgba):
    return sapien.render.RenderMaterial(base_color=list(rgba))


def build_scale(scene, name: str = "scale"):
    """(articulation, physx articulation, plate1, plate2) at `PIVOT`, level."""
    builder = scene.create_articulation_builder()
    builder.initial_pose = PIVOT
    root = builder.create_link_builder()
    root.set_name("scales_root")
    root.add_box_collision(half_size=[0.05, 0.015, 0.015])
    root.add_box_visual(half_size=[0.05, 0.015, 0.015], material=_material((1.0, 0.0, 0.0, 1.0)))
    arm = builder.create_link_builder(root)
    arm.set_name("scales_arm")
    arm.set_joint_name("scales_arm")
    arm.set_joint_properties("revolute", limits=[[-LIMIT, LIMIT]], pose_in_parent=sapien.Pose(),
                             pose_in_child=sapien.Pose(), friction=JOINT_FRICTION, damping=JOINT_DAMPING)  # fmt: skip
    half_beam = [0.02, ARM_LENGTH, 0.02]  # along y (the source turns an x-box by 90 deg about z)
    arm.add_box_collision(half_size=half_beam)
    arm.add_box_visual(half_size=half_beam, material=_material(PLATE_RGBA))
    plates = []
    for k, sign in ((1, -1.0), (2, 1.0)):
        plate = builder.create_link_builder(arm)
        plate.set_name(f"plate{k}")
        plate.set_joint_name(f"plate{k}")
        plate.set_joint_properties(
            "revolute", limits=[[-np.deg2rad(89), np.deg2rad(89)]],
            pose_in_parent=sapien.Pose([0.0, sign * ARM_LENGTH, 0.0]), pose_in_child=sapien.Pose([0.0, 0.0, PLATE_DROP]),
            friction=JOINT_FRICTION, damping=JOINT_DAMPING,
        )  # fmt: skip
        plate.add_box_collision(half_size=list(PLATE_HALF))
        plate.add_box_visual(half_size=list(PLATE_HALF), material=_material(PLATE_RGBA))
        plates.append(plate)
    art = builder.build(name=name, fix_root_link=True)
    px = art._objs[0]
    for joint in px.get_active_joints():  # the builder's friction does not reach PhysX (0.05 there,
        joint.set_friction(JOINT_FRICTION)  # which, scaled by the joint's load, locks the beam)
    beam = px.get_active_joints()[0]
    beam.set_drive_properties(DRIVE_STIFFNESS, DRIVE_DAMPING)
    beam.set_drive_target(0.0)
    links = {link.name: link for link in art.links}
    parts = [ScalePart(f"plate{k}", links[f"plate{k}"], PLATE_HALF) for k in (1, 2)]
    return art, px, parts[0], parts[1]


def level(px) -> None:
    """Put the scale at rest, level."""
    px.set_qpos(np.zeros(px.dof, dtype=np.float32))
    px.set_qvel(np.zeros(px.dof, dtype=np.float32))
