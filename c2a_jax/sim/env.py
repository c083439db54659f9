"""`ClevrSkills-v0` on ManiSkill3: the scene, physics settings, cameras, observations and contacts.

One environment (CPU physics, `physx_cpu`; rendering through lavapipe on a CPU machine) per worker
process. The scene follows clevrskills_spec.md section 1: 500 Hz physics under 20 Hz control,
contact offset 0.005, friction 1.0, restitution 0, an invisible collision ground at z = 0 with a
visual tabletop and floor, two directional lights; the Panda with the vacuum head
(`c2a_jax.sim.robot`); `base_camera` and `hand_camera` at the spec's poses and fields of view.

The task (a `c2a_jax.sim.tasks.Task`) builds and places its objects at every reset from the episode
seed, so the same seed gives the same scene. After ManiSkill's reset, 25 settling steps hold the TCP
at its initial pose (vacuum on for tasks that spawn an object at the gripper) and are not counted.

Contacts of every physics sub-step are kept for the current control step: the vacuum reads the
previous sub-step's, predicates read the whole control step's or the last sub-step's (spec 1.11).

`observe()` returns plain numpy: both camera images, proprioception, task actor states and per-actor
2-D bounding boxes in the base camera (spec 1.9).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import sapien
import sapien.physx as physx
import torch
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.types import DefaultMaterialsConfig, SceneConfig, SimConfig

from c2a_jax.sim import robot as robot_lib

SIM_FREQ, CONTROL_FREQ = 500, 20
SETTLE_STEPS = 25
CAMERAS = ("base_camera", "hand_camera")  # the two cameras of spec 1.9, in observation order
MAX_EPISODE_STEPS = 1000
MIN_IMPULSE = 1e-5

BASE_CAMERA_EYE, BASE_CAMERA_TARGET = (0.3, -0.1, 0.3), (-0.1, 0.0, 0.1)


class Contact(NamedTuple):
    """One contact pair of one sub-step: body ids, bodies, total impulse (on b from a), mean point."""

    id_a: int
    id_b: int
    body_a: Any
    body_b: Any
    impulse: np.ndarray
    position: np.ndarray


def body_id(body) -> int:
    """A stable per-scene key for a rigid body or link component."""
    return body.entity.per_scene_id


@register_env("ClevrSkills-v0", max_episode_steps=MAX_EPISODE_STEPS)
class ClevrSkillsEnv(BaseEnv):
    """ClevrSkills tasks with a vacuum Panda on ManiSkill3 (one environment, CPU physics)."""

    SUPPORTED_ROBOTS = ["panda_vacuum"]
    SUPPORTED_OBS_MODES = ("none", "state_dict", "sensor_data")

    def __init__(
        self,
        *args,
        task: str = "Pick",
        task_args: dict | None = None,
        split: str = "train",
        image_size: int = 256,
        robot_uids: str = "panda_vacuum",
        **kwargs,
    ):
        from c2a_jax.sim import tasks as tasks_lib  # late import: tasks import this module

        self.task_cls = tasks_lib.get_task_class(task)
        self.task_args = dict(task_args or {})
        self.split = split
        self.image_size = int(image_size)
        self.task = None
        self.rng = np.random.RandomState(0)
        self.step_contacts: list[list] = []
        self.last_substep_contacts: list = []
        self._tables: dict[str, dict] | None = None
        kwargs.setdefault("obs_mode", "none")
        kwargs.setdefault("sim_backend", "physx_cpu")
        kwargs.setdefault("render_backend", "cpu")
        kwargs.setdefault("control_mode", "pd_ee_delta_pose")
        kwargs["sensor_configs"] = {
            "width": self.image_size,
            "height": self.image_size,
            **kwargs.get("sensor_configs", {}),
        }
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    # --- ManiSkill configuration ------------------------------------------------------------
    @property
    def _default_sim_config(self):
        return SimConfig(
            sim_freq=SIM_FREQ,
            control_freq=CONTROL_FREQ,
            scene_config=SceneConfig(
                contact_offset=0.005, solver_position_iterations=25, solver_velocity_iterations=1, enable_pcm=False
            ),
            default_materials_config=DefaultMaterialsConfig(static_friction=1.0, dynamic_friction=1.0, restitution=0.0),
        )

    @property
    def _default_sensor_configs(self):
        size = self.image_size
        base = sapien_utils.look_at(eye=BASE_CAMERA_EYE, target=BASE_CAMERA_TARGET)
        return [CameraConfig("base_camera", base, size, size, np.pi / 2, 0.01, 10)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at(eye=[1.0, 1.0, 0.8], target=[0.0, 0.0, 0.5])
        return CameraConfig("render_camera", pose, 512, 512, 1.0, 0.01, 10)

    def _load_agent(self, options: dict):
        super()._load_agent(options, robot_lib.BASE_POSE)

    def _load_lighting(self, options: dict):
        self.scene.set_ambient_light([0.2, 0.2, 0.2])
        self.scene.add_directional_light([1, 1, -1], [0.8, 0.8, 0.8], shadow=True, shadow_scale=5, shadow_map_size=2048)
        self.scene.add_directional_light([0, 0, -1], [0.8, 0.8, 0.8])

    def _load_scene(self, options: dict):
        builder = self.scene.create_actor_builder()
        builder.add_plane_collision(sapien.Pose(q=[0.7071068, 0, -0.7071068, 0]))
        builder.initial_pose = sapien.Pose()
        self.ground = builder.build_static(name="ground")
        table = self.scene.create_actor_builder()
        table.initial_pose = sapien.Pose()
        table.add_box_visual(
            sapien.Pose([-0.5, 0.0, -0.005]), [0.75, 0.75, 0.005],
            material=sapien.render.RenderMaterial(base_color=[0.72, 0.56, 0.40, 1.0], metallic=0.1, specular=0.5),
        )  # fmt: skip
        table.add_box_visual(
            sapien.Pose([-0.5, 0.0, -0.0075]), [50.0, 50.0, 0.0025],
            material=sapien.render.RenderMaterial(base_color=[0.15, 0.25, 0.25, 1.0], metallic=0.1, specular=0.5),
        )  # fmt: skip
        self.tabletop = table.build_kinematic(name="ground_visual")
        self.ground_id = body_id(self.ground._objs[0].find_component_by_type(physx.PhysxRigidStaticComponent))
        self.agent.robot.set_qpos(torch.as_tensor(robot_lib.REST_QPOS[None]))
        self.agent.robot.set_pose(robot_lib.BASE_POSE)
        self.task = self.task_cls(self, self.rng, split=self.split, **self.task_args)
        self.task.setup()

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        self.agent.robot.set_qpos(torch.as_tensor(robot_lib.REST_QPOS[None]))
        self.agent.robot.set_qvel(torch.zeros((1, len(robot_lib.REST_QPOS))))
        self.agent.robot.set_pose(robot_lib.BASE_POSE)
        self.agent.controller.reset()
        # Contacts of the previous episode's scene must not reach this one's first sub-step (the
        # vacuum reads them): episodes then depend on their seed alone, not on what ran before.
        self.last_substep_contacts = []
        self.step_contacts = []
        self._tables = None
        self.agent.vacuum.contacts = lambda: self.last_substep_contacts
        self.task.restore_placement()
        self.task.initialize()

    # --- episode lifecycle --------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Rebuild the scene from `seed`, settle it for 25 uncounted steps, return (obs, info)."""
        if isinstance(seed, list | tuple):
            seed = seed[0]
        if seed is None:
            seed = int(np.random.randint(2**31 - 1))
        self.rng = np.random.RandomState(seed)
        self.episode_seed = int(seed)
        options = dict(options or {})
        options["reconfigure"] = True
        super().reset(seed=seed, options=options)
        hold = self.agent.tcp_pose()
        for _ in range(SETTLE_STEPS):
            action = robot_lib.delta_action_to(self.agent.tcp_pose(), hold, 0.0)
            action[6] = 1.0 if self.task.initial_grasp_action > 0 else -1.0
            self._raw_step(action)
        self._elapsed_steps[:] = 0
        self.task.after_settle()
        info = self.get_info()
        return self.get_obs(info), info

    def _raw_step(self, action: np.ndarray) -> None:
        """One control step without bookkeeping (settling runs before the action space exists)."""
        self.agent.set_action(torch.as_tensor(np.asarray(action, np.float32)[None]))
        self._before_control_step()
        for _ in range(self._sim_steps_per_control):
            self.agent.before_simulation_step()
            self._before_simulation_step()
            self.scene.step()
            self._after_simulation_step()
        self._after_control_step()

    def step(self, action):
        self._tables = None
        return super().step(np.asarray(action, dtype=np.float32))

    def _before_control_step(self):
        self.step_contacts = []
        self._tables = None

    def _after_simulation_step(self):
        # PhysX reuses its contact buffers at the next sub-step: copy out what is needed now.
        contacts = []
        for contact in self.scene.px.get_contacts():
            points = contact.points
            if not points:
                continue
            a, b = contact.bodies
            impulse = np.sum([p.impulse for p in points], axis=0)
            position = np.mean([p.position for p in points], axis=0)
            contacts.append(Contact(body_id(a), body_id(b), a, b, impulse, position))
        # PhysX lists contact pairs in an order that depends on what the process simulated before;
        # a fixed order keeps the vacuum's force sums (and so the episode) a function of the seed.
        contacts.sort(key=lambda c: (c.id_a, c.id_b, *c.position.tolist()))
        self.last_substep_contacts = contacts
        self.step_contacts.append(contacts)

    def evaluate(self) -> dict:
        if self.task is None:
            return {}
        result = self.task.evaluate()
        return {"success": torch.as_tensor([bool(result["success"])]), "eval": result}

    def compute_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return torch.as_tensor([float(self.task.reward())])

    def compute_normalized_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return self.compute_dense_reward(obs, action, info) / self.task.max_reward

    # --- contact queries (spec 1.11) ----------------------------------------------------------
    def _contact_tables(self) -> dict[str, dict]:
        """Pairwise summed impulses: over the whole last control step, and over its last sub-step."""
        if self._tables is None:
            step: dict[tuple[int, int], np.ndarray] = {}
            last: dict[tuple[int, int], np.ndarray] = {}
            n = len(self.step_contacts)
            for k, contacts in enumerate(self.step_contacts):
                for contact in contacts:
                    ia, ib, impulse = contact.id_a, contact.id_b, contact.impulse
                    # impulse on b from a is +impulse; store both orientations
                    for key, sign in (((ia, ib), 1.0), ((ib, ia), -1.0)):
                        step[key] = step.get(key, 0.0) + sign * impulse
                        if k == n - 1:
                            last[key] = last.get(key, 0.0) + sign * impulse
            self._tables = {"step": step, "last": last}
        return self._tables

    def contact_impulse(self, a: int, b: int, last_substep: bool = False) -> np.ndarray:
        """Summed impulse between bodies `a` and `b` (ids) over the last control step (or sub-step)."""
        table = self._contact_tables()["last" if last_substep else "step"]
        return np.asarray(table.get((a, b), np.zeros(3)))

    def contact_ids(self, a: int, last_substep: bool = False) -> set[int]:
        """Ids of bodies touching `a` with an impulse above 1e-5."""
        table = self._contact_tables()["last" if last_substep else "step"]
        return {k[1] for k, v in table.items() if k[0] == a and np.linalg.norm(v) > MIN_IMPULSE}

    def touching_ground(self, a: int, last_substep: bool = True, threshold: float = MIN_IMPULSE) -> bool:
        return float(np.linalg.norm(self.contact_impulse(a, self.ground_id, last_substep))) > threshold

    def gripper_ids(self) -> set[int]:
        return {body_id(link) for link in self.agent.gripper_links}

    def robot_ids(self) -> set[int]:
        return {body_id(link) for link in self.agent.robot_links}

    # --- observations -------------------------------------------------------------------------
    def render_cameras(self, uids: Sequence[str] = CAMERAS) -> dict[str, np.ndarray]:
        """RGB uint8 images of the cameras `uids` (both by default), (H, W, 3)."""
        if "tensorflow" in sys.modules:
            raise RuntimeError(
                "SAPIEN cannot render in a process that has loaded TensorFlow (lavapipe segfaults there); "
                "run the simulator in a worker process (c2a_jax.sim.worker) or keep TensorFlow out of this one"
            )
        self.scene.update_render()
        images = {}
        for uid in uids:
            sensor = self._sensors[uid]
            sensor.capture()
            rgb = sensor.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]
            images[uid] = np.asarray(rgb[0].cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb, dtype=np.uint8)
        return images

    def camera_matrices(self, uid: str = "base_camera") -> tuple[np.ndarray, np.ndarray]:
        """(intrinsic 3x3, extrinsic 3x4 world->camera in OpenCV convention) of a camera."""
        cam = self._sensors[uid].camera._render_cameras[0]
        return np.asarray(cam.get_intrinsic_matrix()), np.asarray(cam.get_extrinsic_matrix())

    def bounding_boxes(self, uid: str = "base_camera") -> dict[str, np.ndarray]:
        """Per task actor `[[xmin, ymin, 1], [xmax, ymax, 1]]` in pixels (spec 1.9); -1 when behind."""
        intrinsic, extrinsic = self.camera_matrices(uid)
        size = self.image_size
        boxes = {}
        for obj in self.task.task_actors():
            world = obj.world_vertices()
            cam = world @ extrinsic[:, :3].T + extrinsic[:, 3]
            front = cam[:, 2] > 1e-6
            if not front.any():
                boxes[obj.key] = np.array([[-1, -1, 1], [-1, -1, 1]], dtype=np.int32)
                continue
            uv = cam[front] @ intrinsic.T
            uv = uv[:, :2] / uv[:, 2:3]
            lo = np.floor(np.clip(uv.min(0), 0, size - 1))
            hi = np.ceil(np.clip(uv.max(0), 0, size - 1))
            boxes[obj.key] = np.array([[lo[0], lo[1], 1], [hi[0], hi[1], 1]], dtype=np.int32)
        return boxes

    def proprioception(self) -> dict[str, np.ndarray]:
        tcp = self.agent.tcp_link
        vel = np.concatenate([tcp.linear_velocity, tcp.angular_velocity]).astype(np.float32)
        pose = self.agent.tcp_pose()
        return {
            "qpos": self.agent.qpos().astype(np.float32),
            "qvel": self.agent.qvel().astype(np.float32),
            "ee_pose": np.concatenate([pose.p, pose.q]).astype(np.float32),
            "ee_velocity": vel,
            "vacuum_on": np.array(self.agent.vacuum.on),
            "vacuum_grasping": np.array(bool(self.agent.vacuum.grasping)),
            "vacuum_ready": np.asarray(self.agent.vacuum.ready, dtype=bool),
        }

    def actor_states(self) -> np.ndarray:
        """(13 N,) position, quaternion, linear and angular velocity of each task actor."""
        parts = [obj.state() for obj in self.task.task_actors()]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def observe(self, images: bool | Sequence[str] = True) -> dict[str, Any]:
        """The observation of spec 1.9 as numpy arrays (images only when `images`: True for both
        cameras, or the uids of those to render)."""
        obs = {"agent": self.proprioception(), "actors": self.actor_states(), "bboxes": self.bounding_boxes()}
        if images is True or (images and not isinstance(images, bool)):
            obs["images"] = self.render_cameras(CAMERAS if images is True else tuple(images))
        return obs
