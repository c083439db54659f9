"""Primitive meshes, colours, pools, the paper split, placement sampling and the SAPIEN actor builder."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2a_jax.sim import objects, placement
from c2a_jax.sim.objects import (
    COLOURS,
    PRIMITIVE_SHAPES,
    ROLE_COLOURS,
    SPLIT_PAIRS,
    ObjectFactory,
    ObjectSpec,
    is_held_out,
    object_name,
    prism_mesh,
    task_pools,
)
from c2a_jax.sim.placement import (
    footprint,
    place_actor_randomly_v2,
    polygon_distance,
    quat_from_yaw,
    random_non_overlapping_poses_2d_with_sizes,
)

S120 = math.sin(math.radians(120))

# shape: (x-extent, y-extent, footprint area, mass in kg at density 1000), default size, spec 2.1
SPEC_TABLE = {
    "cube": (0.1, 0.1, 0.0100, 0.500),
    "cylinder": (0.1, 0.1, 0.00765, 0.383),
    "triangle": (0.1 / S120, 0.075 / S120, 0.0050, 0.250),
    "hexagon": (0.1 * S120, 0.1 / S120, 0.0075, 0.375),
    "star": (0.1 * S120, 0.1, 0.00375, 0.1875),
}


# --------------------------------------------------------------------------------------------------------------
# meshes


@pytest.mark.parametrize("shape", list(SPEC_TABLE))
def test_mesh_matches_spec_table(shape):
    x_ext, y_ext, area, mass = SPEC_TABLE[shape]
    vertices, faces = prism_mesh(shape)
    extent = vertices.max(0) - vertices.min(0)
    np.testing.assert_allclose(extent, [x_ext, y_ext, 0.05], atol=1e-9)
    np.testing.assert_allclose(vertices[:, 2].min(), -0.025)
    assert objects.footprint_area(shape) == pytest.approx(area, abs=5e-6)
    spec = ObjectSpec.make("red", shape)
    assert spec.mass == pytest.approx(mass, abs=5e-4)
    assert spec.half_height == 0.025
    assert faces.dtype.kind == "i" and vertices.dtype == np.float64


def test_cube_and_triangle_vertices():
    cube = prism_mesh("cube")[0]
    np.testing.assert_allclose(np.abs(cube[:8, :2]), 0.05, atol=1e-12)
    tri = prism_mesh("triangle")[0][:3, :2]
    expected = [[0.0, 0.1 / (2 * S120)], [0.0577350, -0.0288675], [-0.0577350, -0.0288675]]
    np.testing.assert_allclose(tri, expected, atol=1e-7)
    np.testing.assert_allclose(tri.mean(0), 0.0, atol=1e-12)  # centroid at the origin
    radii = np.linalg.norm(prism_mesh("cylinder")[0][:16, :2], axis=1)
    np.testing.assert_allclose(radii, 0.05)
    np.testing.assert_allclose(np.linalg.norm(prism_mesh("star")[0][:12, :2], axis=1), [0.05, 0.025] * 6)


@pytest.mark.parametrize("shape", objects.ALL_SHAPES)
@pytest.mark.parametrize("size", [(0.1, 0.1, 0.05), (0.2, 0.05, 0.01), (0.125, 0.125, 0.025)])
def test_mesh_closed_and_outward(shape, size):
    trimesh = pytest.importorskip("trimesh")
    vertices, faces = prism_mesh(shape, size)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0
    assert objects.mesh_volume(vertices, faces) == pytest.approx(mesh.volume)
    np.testing.assert_allclose(mesh.center_mass, 0.0, atol=1e-12)
    # every prism is star-shaped around its axis, so outward normals point away from the origin
    centroids = vertices[faces].mean(1)
    assert np.all(np.einsum("ij,ij->i", mesh.face_normals, centroids) > 0)


def test_mesh_copies_and_unknown_shape():
    v, _ = prism_mesh("cube")
    v[:] = 0
    assert np.ptp(prism_mesh("cube")[0][:, 0]) == pytest.approx(0.1)
    with pytest.raises(KeyError, match="cylinder"):
        prism_mesh("sphere")


# --------------------------------------------------------------------------------------------------------------
# colours, names, pools


def test_colours_and_names():
    assert COLOURS == {
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
    assert object_name("red", "cube") == "red cube"
    assert object_name(None, "cube") == "cube"
    spec = ObjectSpec.make("purple", "hexagon", static=True)
    assert spec.name == "purple hexagon" and spec.rgba == (1.0, 0.0, 1.0, 1.0) and spec.static
    assert ObjectSpec.make(None, "cube").name == "cube"


TOP1 = "SingleStack SortStack Sort2d FollowOrder Rearrange PlaceOnTop PlaceNextTo Rotate RotateSymmetry BalanceScale \
Pick NovelNoun NovelAdjective NovelNounAdjective Trace Neighbour MatchPose Touch Push".split()
TOP2 = "Throw Move2d Swap SwapRotate ThrowAndSort MoveWithoutHitting".split()


@pytest.mark.parametrize("task", TOP1 + TOP2)
def test_task_pools(task):
    top, base = ("texture_1", "texture_2") if task in TOP1 else ("texture_2", "texture_1")
    for name in (task, task + "Task", task + "Env", task.lower()):
        pools = task_pools(name)
        assert pools.task == task
        assert (pools.top_role, pools.base_role) == (top, base)
        assert pools.top_textures == ROLE_COLOURS[top] and pools.base_textures == ROLE_COLOURS[base]
        assert pools.top_objects == pools.base_objects == pools.area_objects == PRIMITIVE_SHAPES


def test_task_pools_unknown():
    with pytest.raises(KeyError, match="SingleStack"):
        task_pools("Juggle")


# --------------------------------------------------------------------------------------------------------------
# split


def test_split_rule():
    train, test = SPLIT_PAIRS["train"], SPLIT_PAIRS["test"]
    assert not train & test
    assert len(train) == 24 and len(test) == 8
    assert test == {
        ("cyan", "cube"),
        ("yellow", "cylinder"),
        ("white", "triangle"),
        ("red", "hexagon"),
        ("black", "cube"),
        ("purple", "cylinder"),
        ("green", "triangle"),
        ("blue", "hexagon"),
    }
    for colours in ROLE_COLOURS.values():
        role_train = {p for p in train if p[0] in colours}
        role_test = {p for p in test if p[0] in colours}
        assert len(role_train) == 12 and len(role_test) == 4
        assert {c for c, _ in role_train} == set(colours) == {c for c, _ in role_test}
        assert {s for _, s in role_train} == set(PRIMITIVE_SHAPES) == {s for _, s in role_test}
    assert all(is_held_out(c, s) for c, s in test) and not any(is_held_out(c, s) for c, s in train)
    assert not is_held_out("grey", "cube") and not is_held_out("red", "star")


def _draw_scene(factory: ObjectFactory) -> list[tuple[str, str]]:
    pairs = []
    for colour in factory.get_random_top_textures(3):
        pairs.append((colour, factory.get_random_top_object(colour)))
    for colour in factory.get_random_base_textures(2):
        pairs.append((colour, factory.get_random_base_object(colour)))
        pairs.append((colour, factory.get_random_area_object(colour)))
    return pairs


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("task", ["PlaceOnTop", "SwapTask"])
def test_factory_split_and_determinism(task, split):
    seen = set()
    for seed in range(200):
        pairs = _draw_scene(ObjectFactory(task, np.random.RandomState(seed), split))
        assert pairs == _draw_scene(ObjectFactory(task, np.random.RandomState(seed), split))
        assert all(p in SPLIT_PAIRS[split] for p in pairs)
        top_colours = [c for c, _ in pairs[:3]]
        assert len(set(top_colours)) == 3 and set(top_colours) <= set(task_pools(task).top_textures)
        seen.update(pairs)
    assert seen == SPLIT_PAIRS[split]  # every allowed pair shows up


def test_factory_rng_call_order():
    factory = ObjectFactory("Pick", np.random.RandomState(7))
    rng = np.random.RandomState(7)
    pool = ROLE_COLOURS["texture_1"]
    expected = [pool[k] for k in rng.choice(len(pool), 2, replace=False)]
    assert factory.get_random_top_textures(2) == expected
    shapes = factory.allowed_shapes(expected[0])
    assert factory.get_random_top_object(expected[0]) == shapes[rng.choice(len(shapes))]
    assert factory.rng.uniform() == rng.uniform()


def test_factory_errors():
    factory = ObjectFactory("Pick", np.random.RandomState(0))
    with pytest.raises(ValueError):
        factory.get_random_top_textures(5)
    with pytest.raises(ValueError):
        ObjectFactory("Pick", np.random.RandomState(0), split="val")
    with pytest.raises(KeyError):
        ObjectFactory("Nope", np.random.RandomState(0))


# --------------------------------------------------------------------------------------------------------------
# polygons and placement


def test_footprint_ccw_hull():
    square = prism_mesh("cube")[0]
    hull = footprint(square)
    assert len(hull) == 4
    x, y = hull[:, 0], hull[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) == pytest.approx(0.01)  # positive: CCW
    assert len(footprint(prism_mesh("star")[0])) == 6
    assert footprint(np.array([[0, 0], [1, 1], [2, 2.0]])).tolist() == [[0, 0], [2, 2]]


def test_polygon_distance_simple():
    sq = footprint(prism_mesh("cube")[0])
    assert polygon_distance(sq, sq + [0.3, 0.0]) == pytest.approx(0.2)
    assert polygon_distance(sq, sq + [0.2, 0.2]) == pytest.approx(math.hypot(0.1, 0.1))
    assert polygon_distance(sq, sq + [0.05, 0.02]) == 0.0
    assert polygon_distance(sq, sq + [0.1, 0.0]) == 0.0  # touching
    assert polygon_distance(sq, sq * 0.1) == 0.0  # containment
    assert polygon_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(5.0)
    seg_a, seg_b = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[2.0, 0.0], [3.0, 0.0]])
    assert polygon_distance(seg_a, seg_b) == pytest.approx(1.0)
    assert polygon_distance(seg_a, np.array([[0.5, -1.0], [0.5, 1.0]])) == 0.0  # crossing segments


def _brute_distance(a: np.ndarray, b: np.ndarray, per_edge: int = 400) -> tuple[float, float]:
    """(distance, resolution) from densely sampled boundaries plus a vertex-containment test."""

    def boundary(poly):
        closed = np.concatenate([poly, poly[:1]]) if len(poly) > 2 else poly
        if len(closed) == 1:
            return closed, 0.0
        t = np.linspace(0, 1, per_edge)[:, None, None]
        pts = closed[:-1][None] + t * (closed[1:] - closed[:-1])[None]
        return pts.reshape(-1, 2), float(np.linalg.norm(np.diff(closed, axis=0), axis=1).max() / (per_edge - 1))

    def inside(points, poly):
        if len(poly) < 3:
            return np.zeros(len(points), bool)
        e = np.roll(poly, -1, axis=0) - poly
        rel = points[:, None, :] - poly[None]
        cross = e[None, :, 0] * rel[..., 1] - e[None, :, 1] * rel[..., 0]
        return np.all(cross >= -1e-12, axis=1)

    if inside(a, b).any() or inside(b, a).any():
        return 0.0, 0.0
    pa, ra = boundary(a)
    pb, rb = boundary(b)
    d = np.sqrt(((pa[:, None, :] - pb[None]) ** 2).sum(-1)).min()
    return float(d), ra + rb


coord = st.integers(-10_000, 10_000).map(lambda k: k / 10_000)  # 0.1 mm grid: exact duplicates and collinear points
point_sets = st.lists(st.tuples(coord, coord), min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(point_sets, point_sets, st.tuples(coord, coord))
def test_polygon_distance_vs_brute_force(pa, pb, shift):
    a = footprint(np.array(pa))
    b = footprint(np.array(pb) + np.array(shift))
    ours = polygon_distance(a, b)
    brute, resolution = _brute_distance(a, b)
    assert ours >= 0.0
    assert ours <= brute + 1e-9  # the exact minimum never exceeds a sampled one
    assert ours >= brute - resolution - 1e-9
    assert polygon_distance(b, a) == pytest.approx(ours, abs=1e-12)


WORKSPACE = ((-0.35, -0.30), (0.10, 0.30))


def _world(shape, xy, yaw=0.0, size=objects.DEFAULT_SIZE):
    v = placement.rotate_z(prism_mesh(shape, size)[0], yaw)
    return v + [xy[0], xy[1], size[2] / 2]


def test_placement_avoids_obstacles():
    obstacles = [_world("cube", (-0.2, 0.0)), _world("hexagon", (0.0, 0.15), 0.3), _world("triangle", (0.0, -0.2))]
    for seed in range(50):
        rng = np.random.RandomState(seed)
        local = prism_mesh(PRIMITIVE_SHAPES[seed % 4])[0]
        pos, yaw, intersecting = place_actor_randomly_v2(rng, local, WORKSPACE, obstacles, offset=0.01)
        assert not intersecting
        assert pos[2] == pytest.approx(0.035)
        assert WORKSPACE[0][0] <= pos[0] <= WORKSPACE[1][0] and WORKSPACE[0][1] <= pos[1] <= WORKSPACE[1][1]
        placed = footprint(placement.rotate_z(local, yaw) + pos)
        assert all(polygon_distance(placed, footprint(o)) > 0 for o in obstacles)


def test_placement_grow_and_sequential():
    rng = np.random.RandomState(3)
    placed: list[np.ndarray] = []
    for k in range(5):
        local = prism_mesh(PRIMITIVE_SHAPES[k % 4])[0]
        pos, yaw, intersecting = place_actor_randomly_v2(rng, local, WORKSPACE, placed, grow_actor_bounds=0.02)
        assert not intersecting
        world = placement.rotate_z(local, yaw) + pos
        assert all(polygon_distance(footprint(world), footprint(o)) >= 0.02 for o in placed)
        placed.append(world)


def test_placement_rng_call_order_and_blocked_workspace():
    local = prism_mesh("cube")[0]
    for seed in range(5):
        ref = np.random.RandomState(seed)
        candidates = ref.uniform(WORKSPACE[0], WORKSPACE[1], size=(100, 2))
        yaw = ref.uniform(0, 2 * np.pi)
        rng = np.random.RandomState(seed)
        pos, got_yaw, intersecting = place_actor_randomly_v2(rng, local, WORKSPACE)
        assert got_yaw == yaw and not intersecting
        np.testing.assert_array_equal(pos[:2], candidates[0])
        assert rng.uniform() == ref.uniform()  # nothing else was drawn
        # a wall covering the workspace: nothing is free, the first candidate comes back flagged
        wall = np.array([[-1.0, -1.0, 0], [1.0, -1.0, 0], [1.0, 1.0, 0], [-1.0, 1.0, 0]])
        pos2, yaw2, intersecting2 = place_actor_randomly_v2(np.random.RandomState(seed), local, WORKSPACE, [wall])
        assert intersecting2 and yaw2 == yaw
        np.testing.assert_array_equal(pos2[:2], candidates[0])
    # only a small box around the workspace centre (the last candidate) is free
    (x0, y0), (x1, y1) = WORKSPACE
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    gap = 0.05 + 0.005  # cylinder radius + 5 mm

    def rect(xa, ya, xb, yb):
        return np.array([[xa, ya, 0.0], [xb, ya, 0.0], [xb, yb, 0.0], [xa, yb, 0.0]])

    walls = [
        rect(x0 - 1, y0 - 1, x1 + 1, cy - gap),
        rect(x0 - 1, cy + gap, x1 + 1, y1 + 1),
        rect(x0 - 1, y0 - 1, cx - gap, y1 + 1),
        rect(cx + gap, y0 - 1, x1 + 1, y1 + 1),
    ]
    pos, _, intersecting = place_actor_randomly_v2(
        np.random.RandomState(0), prism_mesh("cylinder")[0], WORKSPACE, walls
    )
    assert not intersecting
    np.testing.assert_allclose(pos, [cx, cy, 0.025])


def test_non_overlapping_poses_with_sizes():
    sizes = [(0.1, 0.1, 0.1)] * 3
    for seed in range(20):
        poses = random_non_overlapping_poses_2d_with_sizes(np.random.RandomState(seed), 3, WORKSPACE, sizes)
        assert poses == random_non_overlapping_poses_2d_with_sizes(np.random.RandomState(seed), 3, WORKSPACE, sizes)
        assert all(p[2] == pytest.approx(0.05) and 0 <= p[3] < 2 * np.pi for p in poses)
        for i in range(3):
            for j in range(i):
                assert math.dist(poses[i][:2], poses[j][:2]) >= math.hypot(0.1, 0.1)
    ref = np.random.RandomState(4)
    xy, yaw = ref.uniform(WORKSPACE[0], WORKSPACE[1]), ref.uniform(0, 2 * np.pi)
    (pose,) = random_non_overlapping_poses_2d_with_sizes(np.random.RandomState(4), 1, WORKSPACE, [(0.1, 0.1, 0.05)])
    assert pose == (xy[0], xy[1], 0.025, yaw)


def test_quat_from_yaw():
    np.testing.assert_allclose(quat_from_yaw(0.0), [1, 0, 0, 0])
    np.testing.assert_allclose(quat_from_yaw(np.pi), [0, 0, 0, 1], atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# SAPIEN


def _sapien_scene():
    sapien = pytest.importorskip("sapien")
    try:
        scene = sapien.Scene()
    except RuntimeError:  # no Vulkan device: physics only
        scene = sapien.Scene(systems=[sapien.physx.PhysxCpuSystem()])
    scene.set_timestep(0.002)
    return sapien, scene


def test_build_actor_sapien_falls_and_rests():
    sapien, scene = _sapien_scene()
    ground = scene.create_actor_builder()
    ground.add_plane_collision(sapien.Pose(q=[0.7071068, 0, -0.7071068, 0]))
    ground.build_static(name="ground")
    cube = objects.build_actor(scene, ObjectSpec.make("red", "cube"), sapien.Pose(p=[0.0, 0.0, 0.1]))
    area = objects.build_actor(
        scene, ObjectSpec.make("blue", "hexagon", (0.18, 0.18, 0.01), static=True), sapien.Pose(p=[0.5, 0.0, 0.005])
    )
    body = cube.find_component_by_type(sapien.physx.PhysxRigidDynamicComponent)
    assert cube.name == "red cube" and not body.kinematic
    assert body.mass == pytest.approx(0.5, rel=1e-3)
    shape = body.collision_shapes[0]
    material = shape.get_physical_material()
    assert (material.static_friction, material.dynamic_friction, material.restitution) == (1.0, 1.0, 0.0)
    assert area.find_component_by_type(sapien.physx.PhysxRigidDynamicComponent).kinematic
    assert area.pose.p[2] == pytest.approx(0.005)
    for _ in range(500):
        scene.step()
    assert cube.pose.p[2] == pytest.approx(0.025, abs=1e-3)
    assert np.linalg.norm(cube.pose.p[:2]) < 1e-3


def test_build_actor_maniskill_scene():
    pytest.importorskip("mani_skill")
    import sapien
    import torch
    from mani_skill.envs.scene import ManiSkillScene
    from mani_skill.envs.utils.system.backend import parse_sim_and_render_backend

    scene = ManiSkillScene(
        sub_scenes=[sapien.Scene(systems=[sapien.physx.PhysxCpuSystem()])],
        device=torch.device("cpu"),
        backend=parse_sim_and_render_backend("physx_cpu", "none"),
    )
    spec = ObjectSpec.make("yellow", "triangle")
    actor = objects.build_actor(scene, spec, sapien.Pose(p=[0.0, 0.0, 0.2]))
    twin = objects.build_actor(scene, spec, sapien.Pose(p=[0.3, 0.0, 0.2]), name="yellow triangle_2")
    assert actor.name == "yellow triangle" and twin.name == "yellow triangle_2"
    assert float(actor.get_mass()[0]) == pytest.approx(0.25, rel=1e-3)


def test_placement_reach_band_prefers_free_candidates_within_reach():
    local = prism_mesh("cube")[0]
    base = (-0.65, 0.0)
    band = (0.30, 0.68)
    for seed in range(20):
        rng = np.random.RandomState(seed)
        pos, _, intersecting = place_actor_randomly_v2(rng, local, WORKSPACE, reach=band, base_xy=base)
        assert not intersecting
        assert band[0] <= math.dist(pos[:2], base) <= band[1]
        # the same candidates without the band: the first one, whichever distance it has
        free, _, _ = place_actor_randomly_v2(np.random.RandomState(seed), local, WORKSPACE)
        ref = np.random.RandomState(seed).uniform(WORKSPACE[0], WORKSPACE[1], size=(100, 2))
        np.testing.assert_array_equal(free[:2], ref[0])
        ref[-1] = np.mean(WORKSPACE, axis=0)  # the last candidate is the workspace centre
        inside = [c for c in ref if band[0] <= math.dist(c, base) <= band[1]]
        np.testing.assert_array_equal(pos[:2], inside[0])  # the first candidate within reach
    # a band nothing reaches: the first free candidate still wins over intersecting ones
    pos, _, intersecting = place_actor_randomly_v2(
        np.random.RandomState(0), local, WORKSPACE, reach=(5.0, 6.0), base_xy=base
    )
    ref = np.random.RandomState(0).uniform(WORKSPACE[0], WORKSPACE[1], size=(100, 2))
    assert not intersecting
    np.testing.assert_array_equal(pos[:2], ref[0])
