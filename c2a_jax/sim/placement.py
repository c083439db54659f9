"""Initial-state sampling (spec 2.6), engine-independent and numpy-only.

ClevrSkills places objects by rejection sampling against the x-y footprints of everything already in the scene.
These functions take geometry as vertex arrays instead of simulator actors, so the sampling can be tested and
replayed without SAPIEN; the caller collects the obstacle vertices (every actor except the "ground" ones, the
robot's fixed base included) and applies the returned pose. The exact sequence of `rng` calls is part of each
function's contract, because the same episode seed must give the same scene (decision 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Workspace = tuple[tuple[float, float], tuple[float, float]]
"""((x_min, y_min), (x_max, y_max)), spec 1.12."""


def quat_from_yaw(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z), SAPIEN order, of a rotation by `yaw` radians about +z."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def rotate_z(points: np.ndarray, yaw: float) -> np.ndarray:
    """`points` (N, 2 or 3) rotated by `yaw` about the z axis through the origin."""
    points = np.asarray(points, dtype=np.float64)
    c, s = math.cos(yaw), math.sin(yaw)
    out = points.copy()
    out[:, 0] = c * points[:, 0] - s * points[:, 1]
    out[:, 1] = s * points[:, 0] + c * points[:, 1]
    return out


def footprint(vertices_world: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (K, 2) of the x-y projection of (N, 2 or 3) points (monotone chain).

    Collinear points are dropped; a single point or a segment gives K = 1 or 2.
    """
    pts = np.unique(np.asarray(vertices_world, dtype=np.float64)[:, :2], axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(points: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in points:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _edges(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment start and end points of a closed polygon (a segment for K = 2, one degenerate edge for K = 1)."""
    if len(poly) == 1:
        return poly, poly
    if len(poly) == 2:
        return poly[:1], poly[1:]
    return poly, np.roll(poly, -1, axis=0)


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating axis test for convex polygons given in boundary order (touching counts as overlapping)."""
    axes = []
    for poly in (a, b):
        starts, ends = _edges(poly)
        d = ends - starts
        d = d[np.linalg.norm(d, axis=1) > 0]
        axes.append(np.stack([-d[:, 1], d[:, 0]], axis=1))  # edge normals
        if len(poly) == 2:
            axes.append(d)  # a segment also needs its own direction (collinear segments)
    axes = np.concatenate(axes)
    if len(axes) == 0:  # two points
        return bool(np.any(a[0] != b[0]))
    pa, pb = a @ axes.T, b @ axes.T
    return bool(np.any((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))))


def _point_segment_distances(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    d = ends - starts  # (S, 2)
    rel = points[:, None, :] - starts[None]  # (P, S, 2)
    length2 = np.einsum("sk,sk->s", d, d)
    t = np.divide(np.einsum("psk,sk->ps", rel, d), length2, out=np.zeros(rel.shape[:2]), where=length2 > 1e-24)
    closest = starts[None] + np.clip(t, 0.0, 1.0)[..., None] * d[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1)


def polygon_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Minimum distance between two convex polygons (K, 2 or 3) in boundary order, e.g. from `footprint`.

    0 when they overlap or touch (separating axis test), else the smallest vertex-to-edge distance either way.
    """
    a = np.asarray(a, dtype=np.float64)[:, :2]
    b = np.asarray(b, dtype=np.float64)[:, :2]
    if not _separated(a, b):
        return 0.0
    return float(min(_point_segment_distances(a, *_edges(b)).min(), _point_segment_distances(b, *_edges(a)).min()))


def within_reach(xy: Sequence[float], reach: tuple[float, float], base_xy: Sequence[float]) -> bool:
    """Whether a point's horizontal distance from `base_xy` lies in the band `reach` (min, max)."""
    return reach[0] <= float(np.linalg.norm(np.asarray(xy, np.float64)[:2] - np.asarray(base_xy)[:2])) <= reach[1]


def place_actor_randomly_v2(
    rng: np.random.RandomState,
    local_vertices: np.ndarray,
    workspace: Workspace,
    obstacles: Sequence[np.ndarray] = (),
    offset: float = 0.0,
    grow_actor_bounds: float = 0.0,
    reach: tuple[float, float] | None = None,
    base_xy: Sequence[float] = (0.0, 0.0),
) -> tuple[np.ndarray, float, bool]:
    """Sample a free x-y position and yaw for an actor, as ClevrSkills' `place_actor_randomly_v2` (allow_top=False).

    `local_vertices` (V, 3) are the actor's vertices in its own frame; `obstacles` are world-frame vertex arrays
    (N, 3) of every other actor. RNG calls, in order: `rng.uniform(low, high, size=(100, 2))` for the candidates
    (the last one is then replaced by the workspace centre), then `rng.uniform(0, 2π)` for the one yaw that
    all candidates share. Candidates are tried in order; a candidate intersects when its rotated footprint
    overlaps or touches an obstacle's footprint, or lies closer than `grow_actor_bounds` to it. The first free
    one wins (score 3 against 1); when none is free the first candidate is returned with intersecting=True and
    the caller should log a warning.

    `reach` (min, max), our addition: candidates whose centre lies outside that horizontal distance
    from `base_xy` (the robot base) count as taken too; a free candidate out of reach still beats an
    intersecting one, so without a free one in reach the result is as the source's.

    Returns (position (3,), yaw, intersecting) with z = half the rotated AABB height + `offset`.
    """
    low, high = np.asarray(workspace[0], dtype=np.float64), np.asarray(workspace[1], dtype=np.float64)
    candidates = rng.uniform(low, high, size=(100, 2))
    candidates[-1] = (low + high) / 2
    yaw = float(rng.uniform(0.0, 2 * math.pi))

    rotated = rotate_z(np.asarray(local_vertices, dtype=np.float64), yaw)
    z = (rotated[:, 2].max() - rotated[:, 2].min()) / 2 + offset
    base = footprint(rotated)
    obstacle_footprints = [footprint(o) for o in obstacles]

    base_xy = np.asarray(base_xy, dtype=np.float64)
    best, best_score, best_intersecting = candidates[0], -1, True
    for xy in candidates:
        moved = base + xy
        intersecting = False
        for obstacle in obstacle_footprints:
            distance = polygon_distance(moved, obstacle)
            if distance <= 0.0 or distance < grow_actor_bounds:
                intersecting = True
                break
        in_reach = reach is None or within_reach(xy, reach, base_xy)
        score = 2 * (not intersecting) + in_reach + 1
        if score > best_score:
            best, best_score, best_intersecting = xy, score, intersecting
        if not intersecting and in_reach:
            break
    return np.array([best[0], best[1], z]), yaw, best_intersecting


def random_non_overlapping_poses_2d_with_sizes(
    rng: np.random.RandomState,
    n: int,
    workspace: Workspace,
    sizes: Sequence[Sequence[float]],
) -> list[tuple[float, float, float, float]]:
    """`n` poses (x, y, z, yaw) whose x-y positions keep apart, as ClevrSkills'
    `get_random_non_overlapping_poses_2d_with_actor_sizes`.

    For pose p: up to 10 draws `rng.uniform(low, high)` (one x-y pair each) until the distance to every earlier
    position is at least ‖sizes[p][0:2]‖ (the last draw is kept when none qualifies), then one
    `rng.uniform(0, 2π)` for the yaw; z = sizes[p][2] / 2. The order of the yaw draw relative to the position
    draws is our reading of spec 2.6.
    """
    low, high = np.asarray(workspace[0], dtype=np.float64), np.asarray(workspace[1], dtype=np.float64)
    poses: list[tuple[float, float, float, float]] = []
    positions: list[np.ndarray] = []
    for p in range(n):
        min_distance = float(np.linalg.norm(np.asarray(sizes[p][:2], dtype=np.float64)))
        for _ in range(10):
            xy = rng.uniform(low, high)
            if all(np.linalg.norm(xy - q) >= min_distance for q in positions):
                break
        yaw = float(rng.uniform(0.0, 2 * math.pi))
        positions.append(xy)
        poses.append((float(xy[0]), float(xy[1]), float(sizes[p][2]) / 2, yaw))
    return poses
