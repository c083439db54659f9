"""Objects of the paper's ClevrSkills setting: prism meshes, colours, names, per-task role pools and the split.

The paper (decision 2 of docs/clevrskills_spec.md) uses only four procedural prisms and eight plain colours, so
this module replaces ClevrSkills' asset files (YCB, assembling kits, VIMA textures) with a few tables and one
mesh generator. It is numpy-only at import time; SAPIEN is imported inside `build_actor` alone, so task
sampling, tests and data tools can use the tables without a simulator.

Meshes (spec 2.1). A primitive is a vertical prism: a ring of n vertices at θ_i = 2πi/n + rotation with
x = ½·sin θ_i·D and y = ½·cos θ_i·W (size = (W, D, H); "depth" scales x, "width" scales y), duplicated at
z = ±H/2, closed by top/bottom fans around a centre vertex and side quads. The per-shape adjustments make the
default size (0.1, 0.1, 0.05) give the spec's numbers:

    shape     n   adjustment                          footprint at the default size             area      kg
    cube      4   rotation π/4, W and D × √2          square, vertices (±0.05, ±0.05)           0.0100    0.500
    cylinder  16  -                                   16-gon, radius 0.05                       0.00765   0.383
    triangle  3   W ÷ sin 120°, D ÷ 0.75              (0, 0.0577), (±0.0577, -0.0289)           0.0050    0.250
    hexagon   6   W ÷ sin 120°                        x-extent 0.0866, y-extent 0.1155          0.0075    0.375
    star      12  odd ring vertices × 0.5             6 points, outer radius 0.05               0.00375   0.1875

The triangle needs no extra offset: with rotation 0 its apex is θ=0 → (0, W/(2 sin 120°)) = (0, 0.0577) and
the other two are θ=±120° → (±½·sin 120°·D/0.75, -½·½·W/sin 120°) = (±0.0577, -0.0289). The y values
W/(2 sin 120°)·(1, -½, -½) sum to zero and the x values cancel, so the centroid is the origin; the base is
D/(0.75)·sin 120° = 0.1155 wide, the height 0.75·W/sin 120° = 0.0866, area ½·0.1155·0.0866 = 0.0050.
The hexagon follows the same formula (D unscaled), so it is a regular hexagon of circumradius 0.0577
compressed to x-extent 0.0866 rather than a regular one (whose x-extent would be 0.1); the spec's area 0.0075
and extents match this compressed form, which we keep.

Split (decision 2). Object pools are the four primitives; the colour role "texture_1" is (cyan, red, white,
yellow) and "texture_2" is (black, blue, green, purple); each task assigns one role to "top" (picked) objects
and the other to "base" objects as in spec 2.5 (`task_pools`). The held-out "test" split is a fixed set of
(colour, shape) pairs: with colour index i in its role (order above) and shape index j in
(cube, cylinder, triangle, hexagon), a pair is held out iff (i + j) % 4 == 0. That holds out exactly one
shape per colour and one colour per shape and role, so every colour and every shape still appears in
training, in both roles. The 8 held-out pairs:

    texture_1: cyan cube, yellow cylinder, white triangle, red hexagon
    texture_2: black cube, purple cylinder, green triangle, blue hexagon

The train split has the other 24 pairs (12 per role). `ObjectFactory` mirrors ClevrSkills'
`ModelAndTextureFactory` restricted to this split.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZE: tuple[float, float, float] = (0.1, 0.1, 0.05)
"""Default primitive size (W, D, H) in metres used by most tasks (spec 2.1)."""

PRIMITIVE_SHAPES: tuple[str, ...] = ("cube", "cylinder", "triangle", "hexagon")
"""The paper's four shapes, in the order that indexes the split rule."""

ALL_SHAPES: tuple[str, ...] = (*PRIMITIVE_SHAPES, "star")
"""Every shape `prism_mesh` builds (star belongs to ClevrSkills' own test split, not to the paper's)."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "purple": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.2, 0.2, 0.2),
    "grey": (0.5, 0.5, 0.5),
}
"""ClevrSkills' plain colours (spec 2.3), RGB; the material is this base colour with alpha 1."""

NO_COLOUR_RGBA: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 1.0)
"""Our choice of material for objects built without a colour (their name is the bare shape)."""

ROLE_COLOURS: dict[str, tuple[str, ...]] = {
    "texture_1": ("cyan", "red", "white", "yellow"),
    "texture_2": ("black", "blue", "green", "purple"),
}
"""The two colour roles of the paper split, in the order that indexes the split rule."""

SPLITS: tuple[str, ...] = ("train", "test")

_TOP_1 = ("texture_1", "texture_2")
_TOP_2 = ("texture_2", "texture_1")
_TASK_ROLES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            "SingleStack",
            "SortStack",
            "Sort2d",
            "FollowOrder",
            "Rearrange",
            "PlaceOnTop",
            "PlaceNextTo",
            "Rotate",
            "RotateSymmetry",
            "BalanceScale",
            "Pick",
            "NovelNoun",
            "NovelAdjective",
            "NovelNounAdjective",
            "Trace",
            "Neighbour",
            "MatchPose",
        ),
        _TOP_1,
    ),
    **dict.fromkeys(("Throw", "Move2d", "Swap", "SwapRotate", "ThrowAndSort", "MoveWithoutHitting"), _TOP_2),
    **dict.fromkeys(("Touch", "Push"), _TOP_1),
}
"""(top role, base role) per ClevrSkills task class name without its "Task"/"Env" suffix (spec 2.5)."""


def _held_out_rule(i: int, j: int) -> bool:
    return (i + j) % 4 == 0


def _split_pairs() -> dict[str, frozenset[tuple[str, str]]]:
    train, test = set(), set()
    for colours in ROLE_COLOURS.values():
        for i, colour in enumerate(colours):
            for j, shape in enumerate(PRIMITIVE_SHAPES):
                (test if _held_out_rule(i, j) else train).add((colour, shape))
    return {"train": frozenset(train), "test": frozenset(test)}


SPLIT_PAIRS: dict[str, frozenset[tuple[str, str]]] = _split_pairs()
"""The (colour, shape) pairs allowed in each split; "test" holds the 8 held-out pairs, "train" the other 24."""


def is_held_out(colour: str, shape: str) -> bool:
    """Whether (colour, shape) is one of the held-out test pairs (False for colours or shapes outside the split)."""
    return (colour, shape) in SPLIT_PAIRS["test"]


def object_name(colour: str | None, shape: str) -> str:
    """Actor name as ClevrSkills forms it (spec 2.4): "red cube", or the bare shape when there is no colour."""
    return shape if colour is None else f"{colour} {shape}"


# ---------------------------------------------------------------------------------------------------------------
# Meshes


def _ring(shape: str, size: tuple[float, float, float]) -> np.ndarray:
    """The (n, 2) x-y ring of a prism, in θ order (clockwise seen from above)."""
    w, d, _ = (float(s) for s in size)
    rotation = 0.0
    if shape == "cube":
        n, rotation, w, d = 4, math.pi / 4, w * math.sqrt(2), d * math.sqrt(2)
    elif shape == "cylinder":
        n = 16
    elif shape == "triangle":
        n, w, d = 3, w / math.sin(math.radians(120)), d / 0.75
    elif shape == "hexagon":
        n, w = 6, w / math.sin(math.radians(120))
    elif shape == "star":
        n = 12
    else:
        raise KeyError(f"unknown shape {shape!r}; known: {', '.join(ALL_SHAPES)}")
    theta = 2 * math.pi * np.arange(n) / n + rotation
    ring = np.stack([0.5 * np.sin(theta) * d, 0.5 * np.cos(theta) * w], axis=1)
    if shape == "star":
        ring[1::2] *= 0.5
    return ring


@functools.lru_cache(maxsize=64)
def _prism_mesh_cached(shape: str, size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    ring = _ring(shape, size)
    n = len(ring)
    h = float(size[2])
    bottom = np.column_stack([ring, np.full(n, -h / 2)])
    top = np.column_stack([ring, np.full(n, h / 2)])
    vertices = np.concatenate([bottom, top, [[0.0, 0.0, -h / 2], [0.0, 0.0, h / 2]]])
    # Walk the ring counter-clockwise (seen from +z) so that the triangles below face outwards.
    x, y = ring[:, 0], ring[:, 1]
    signed_area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    order = np.arange(n) if signed_area > 0 else (-np.arange(n)) % n
    a, b = order, np.roll(order, -1)
    bc, tc = 2 * n, 2 * n + 1
    faces = np.concatenate(
        [
            np.column_stack([np.full(n, tc), n + a, n + b]),  # top fan, normal +z
            np.column_stack([np.full(n, bc), b, a]),  # bottom fan, normal -z
            np.column_stack([a, b, n + b]),  # side quads, normal outwards
            np.column_stack([a, n + b, n + a]),
        ]
    ).astype(np.int64)
    vertices.setflags(write=False)
    faces.setflags(write=False)
    return vertices, faces


def prism_mesh(shape: str, size: tuple[float, float, float] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangle mesh of a primitive (spec 2.1), centred at the origin, z from -H/2 to +H/2.

    Returns (vertices (2n+2, 3) float64, triangles (4n, 3) int64): the bottom ring, the top ring, the bottom and
    top cap centres; triangles wind counter-clockwise seen from outside (normals point outwards).
    """
    vertices, faces = _prism_mesh_cached(shape, tuple(float(s) for s in size))
    return vertices.copy(), faces.copy()


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed, outward-wound triangle mesh (divergence theorem)."""
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def footprint_area(shape: str, size: tuple[float, float, float] = DEFAULT_SIZE) -> float:
    """Area of the prism's x-y cross-section in m²."""
    return mesh_volume(*prism_mesh(shape, size)) / float(size[2])


# ---------------------------------------------------------------------------------------------------------------
# Pools and the factory


@dataclass(frozen=True)
class TaskPools:
    """Asset pools of one task in the paper split (spec 2.5 with the paper restriction of decision 2)."""

    task: str
    top_role: str
    base_role: str
    top_textures: tuple[str, ...]
    base_textures: tuple[str, ...]
    top_objects: tuple[str, ...] = PRIMITIVE_SHAPES
    base_objects: tuple[str, ...] = PRIMITIVE_SHAPES
    area_objects: tuple[str, ...] = PRIMITIVE_SHAPES
    random_objects: tuple[str, ...] = PRIMITIVE_SHAPES


def canonical_task_name(task: str) -> str:
    """ClevrSkills task class name without its "Task"/"Env" suffix; exact match first, then case-insensitive."""
    name = task
    for suffix in ("Task", "Env"):
        if name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if name in _TASK_ROLES:
        return name
    by_lower = {k.lower(): k for k in _TASK_ROLES}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise KeyError(f"unknown task {task!r}; known tasks: {', '.join(sorted(_TASK_ROLES))}")


def task_pools(task: str) -> TaskPools:
    """Pools for `task` (a ClevrSkills class or registry name, "Task"/"Env" suffix allowed)."""
    name = canonical_task_name(task)
    top_role, base_role = _TASK_ROLES[name]
    return TaskPools(name, top_role, base_role, ROLE_COLOURS[top_role], ROLE_COLOURS[base_role])


class ObjectFactory:
    """Draws colours and shapes for one episode, like ClevrSkills' `ModelAndTextureFactory` in the paper split.

    All randomness comes from `rng`, one numpy call per method call, in the order the task calls them:
    `get_random_top_textures(n)` / `get_random_base_textures(n)`: one `rng.choice(len(pool), n, replace=False)`
    over the role's colours (those with at least one allowed shape in the split), in role order;
    `get_random_top_object(c)` / `get_random_base_object(c)` / `get_random_area_object(c)` /
    `get_random_object(c)`: one `rng.choice(len(shapes))` over the shapes allowed with colour c in the split,
    in `PRIMITIVE_SHAPES` order. The train split allows the non-held-out pairs, the test split only the
    held-out ones, so in the test split a colour comes with exactly one shape (the draw is still made).
    """

    def __init__(self, task: str, rng: np.random.RandomState, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        self.pools = task_pools(task)
        self.task = self.pools.task
        self.rng = rng
        self.split = split
        self._pairs = SPLIT_PAIRS[split]

    def allowed_shapes(self, colour: str | None, pool: tuple[str, ...] = PRIMITIVE_SHAPES) -> tuple[str, ...]:
        """Shapes of `pool` that may carry `colour` in this split (None: shapes allowed with some colour)."""
        if colour is None:
            return tuple(s for s in pool if any(p[1] == s for p in self._pairs))
        return tuple(s for s in pool if (colour, s) in self._pairs)

    def _textures(self, role_colours: tuple[str, ...], n: int) -> list[str]:
        pool = [c for c in role_colours if self.allowed_shapes(c)]
        if not 0 <= n <= len(pool):
            raise ValueError(f"cannot draw {n} distinct colours from a pool of {len(pool)}: {pool}")
        return [pool[k] for k in self.rng.choice(len(pool), n, replace=False)]

    def _object(self, colour: str | None, pool: tuple[str, ...]) -> str:
        shapes = self.allowed_shapes(colour, pool)
        if not shapes:
            raise ValueError(f"colour {colour!r} has no allowed shape in the {self.split} split")
        return shapes[int(self.rng.choice(len(shapes)))]

    def get_random_top_textures(self, n: int) -> list[str]:
        """`n` distinct colour names of the task's top role."""
        return self._textures(self.pools.top_textures, n)

    def get_random_base_textures(self, n: int) -> list[str]:
        """`n` distinct colour names of the task's base role."""
        return self._textures(self.pools.base_textures, n)

    def get_random_top_object(self, colour: str | None = None) -> str:
        """A shape for a picked object of `colour`."""
        return self._object(colour, self.pools.top_objects)

    def get_random_base_object(self, colour: str | None = None) -> str:
        """A shape for an object that others are placed on."""
        return self._object(colour, self.pools.base_objects)

    def get_random_area_object(self, colour: str | None = None) -> str:
        """A shape for a flat area (ClevrSkills builds areas static)."""
        return self._object(colour, self.pools.area_objects)

    def get_random_object(self, colour: str | None = None) -> str:
        """A shape from the "random objects" pool."""
        return self._object(colour, self.pools.random_objects)


# ---------------------------------------------------------------------------------------------------------------
# Object specs and SAPIEN actors


@dataclass(frozen=True)
class ObjectSpec:
    """Everything needed to build one primitive actor."""

    name: str
    colour: str | None
    shape: str
    size: tuple[float, float, float] = DEFAULT_SIZE
    rgba: tuple[float, float, float, float] = NO_COLOUR_RGBA
    density: float = 1000.0
    static: bool = False

    @classmethod
    def make(
        cls,
        colour: str | None,
        shape: str,
        size: tuple[float, float, float] = DEFAULT_SIZE,
        density: float = 1000.0,
        static: bool = False,
    ) -> ObjectSpec:
        """Spec named and coloured as ClevrSkills does (spec 2.3-2.4)."""
        rgba = NO_COLOUR_RGBA if colour is None else (*COLOURS[colour], 1.0)
        size = tuple(float(s) for s in size)
        return cls(object_name(colour, shape), colour, shape, size, rgba, float(density), static)

    @property
    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        return prism_mesh(self.shape, self.size)

    @property
    def vertices(self) -> np.ndarray:
        """Local-frame mesh vertices (V, 3), e.g. for `placement.place_actor_randomly_v2`."""
        return self.mesh[0]

    @property
    def mass(self) -> float:
        """Mesh volume (cross-section area × H) × density. The physics mass of the non-convex star differs:
        its collision shape is the convex hull."""
        return mesh_volume(*self.mesh) * self.density

    @property
    def half_height(self) -> float:
        return float(self.size[2]) / 2


def mesh_cache_dir() -> Path:
    """Where `build_actor` writes its OBJ files: $C2A_MESH_CACHE, else <tmp>/c2a_jax_prism_meshes."""
    return Path(os.environ.get("C2A_MESH_CACHE") or Path(tempfile.gettempdir()) / "c2a_jax_prism_meshes")


def _vertex_normals(shape: str, size: tuple[float, float, float], vertices: np.ndarray, faces: np.ndarray):
    """Per-corner normals (F, 3, 3): flat per face, except smooth sides for the cylinder."""
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    flat = np.cross(v1 - v0, v2 - v0)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    normals = np.repeat(flat[:, None, :], 3, axis=1)
    if shape == "cylinder":
        w, d, _ = size
        side = np.abs(flat[:, 2]) < 0.5
        corners = vertices[faces[side]]  # (S, 3, 3); ellipse gradient (x/(D/2)², y/(W/2)²)
        radial = np.stack([corners[..., 0] / d**2, corners[..., 1] / w**2, np.zeros(corners.shape[:2])], axis=-1)
        normals[side] = radial / np.linalg.norm(radial, axis=-1, keepdims=True)
    return normals


def write_prism_obj(shape: str, size: tuple[float, float, float] = DEFAULT_SIZE) -> Path:
    """Write (once) the prism as an OBJ with normals and return its path; the file name is a content hash."""
    size = tuple(float(s) for s in size)
    vertices, faces = prism_mesh(shape, size)
    normals = _vertex_normals(shape, size, vertices, faces).reshape(-1, 3)
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in vertices]
    lines += [f"vn {x:.9g} {y:.9g} {z:.9g}" for x, y, z in normals]
    lines += [f"f {a + 1}//{3 * k + 1} {b + 1}//{3 * k + 2} {c + 1}//{3 * k + 3}" for k, (a, b, c) in enumerate(faces)]
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    path = mesh_cache_dir() / f"{shape}_{digest}.obj"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic, so concurrent workers never read a half-written file
    return path


def _can_render(scene: Any) -> bool:
    """ManiSkill3 scenes say so; a plain sapien.Scene can render iff it has a render system."""
    if hasattr(scene, "can_render"):
        return bool(scene.can_render())
    try:
        scene.get_system("render")
    except RuntimeError:
        return False
    return True


def build_actor(scene: Any, spec: ObjectSpec, initial_pose: Any = None, name: str | None = None) -> Any:
    """Build `spec` as an actor in a SAPIEN 3 `sapien.Scene` or a ManiSkill3 `ManiSkillScene`.

    Collision: the convex hull of the prism (PhysX cooks it from the OBJ's vertices), friction 1.0/1.0,
    restitution 0 (spec 1.2), density `spec.density`. Visual: the same mesh in `spec.rgba`. A `static` spec is
    built kinematic, not static, so that initial-state sampling can still move it (ManiSkill3's GPU simulation
    cannot re-pose static actors). SAPIEN has in-memory constructors for both shapes, but neither builder
    accepts them, so the mesh goes through a cached OBJ file (`write_prism_obj`).

    `initial_pose` (a sapien.Pose, or whatever the builder accepts) defaults to the origin lifted by half the
    height. `name` overrides the built name: ManiSkill3 needs unique names, ClevrSkills names need not be.
    The visual is left out in a scene that cannot render (a physics-only sapien.Scene).
    Returns the builder's result (a sapien.Entity, or a ManiSkill3 Actor).
    """
    import sapien

    path = str(write_prism_obj(spec.shape, spec.size))
    material = sapien.physx.PhysxMaterial(static_friction=1.0, dynamic_friction=1.0, restitution=0.0)
    builder = scene.create_actor_builder()
    builder.add_convex_collision_from_file(path, material=material, density=spec.density)
    if _can_render(scene):
        builder.add_visual_from_file(path, material=sapien.render.RenderMaterial(base_color=list(spec.rgba)))
    builder.set_physx_body_type("kinematic" if spec.static else "dynamic")
    if initial_pose is None:
        initial_pose = sapien.Pose(p=[0.0, 0.0, spec.half_height])
    builder.set_initial_pose(initial_pose)
    return builder.build(name=spec.name if name is None else name)
