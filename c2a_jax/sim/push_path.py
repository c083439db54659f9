"""A 2-D path for an object pushed across the table around the other objects.

Why: a push along the straight line to the target drives the pushed object into whatever stands on
that line, which is then pushed along too (Swap by pushing: A, pushed to B's old place, shoves B out of
A's old place). The source plans the pushed object's x-y path against the scene (clevrskills_spec.md
5.7); we plan it on a 1 cm occupancy grid: a cell is blocked when the pushed object's centre there
would come within its own radius plus a margin of another object's footprint (convex hull), or when
the robot could not push there. A* over the 8-connected grid, then the path is cut to the few
corners a line of sight (with a smaller margin) needs, so that the pusher re-approaches only where
the path turns.
"""

from __future__ import annotations

import heapq

import numpy as np

from c2a_jax.sim.placement import footprint

CELL = 0.01
MARGIN = 0.04  # clearance the planned path keeps between the pushed object and the others
SHORTCUT_MARGIN = 0.01  # the clearance a straight leg between two path corners must keep


def polygon_distance(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to a counter-clockwise convex polygon (K, 2); 0 inside."""
    a, b = poly, np.roll(poly, -1, axis=0)
    edge = b - a  # (K, 2)
    rel = points[:, None, :] - a[None]  # (N, K, 2)
    inside = np.all(edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0] >= 0.0, axis=1)
    t = np.clip((rel * edge[None]).sum(-1) / (edge**2).sum(-1)[None], 0.0, 1.0)
    d = np.linalg.norm(rel - t[..., None] * edge[None], axis=-1).min(axis=1)
    return np.where(inside, 0.0, d)


class Grid:
    """Free cells for the pushed object's centre within `bounds` ((xmin, ymin), (xmax, ymax))."""

    def __init__(self, bounds, obstacles: list[np.ndarray], radius: float, allowed=None, cell: float = CELL):
        (x0, y0), (x1, y1) = bounds
        self.origin, self.cell = np.array([x0, y0], float), cell
        xs, ys = np.arange(x0, x1 + 1e-9, cell), np.arange(y0, y1 + 1e-9, cell)
        self.shape = (len(xs), len(ys))
        centres = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
        ok = np.ones(len(centres), bool) if allowed is None else np.asarray(allowed(centres), bool)
        gap = np.full(len(centres), np.inf)
        for obstacle in obstacles:
            gap = np.minimum(gap, polygon_distance(centres, footprint(obstacle)))
        self.free = (ok & (gap > radius + MARGIN)).reshape(self.shape)  # for A*
        self.clear = (ok & (gap > radius + SHORTCUT_MARGIN)).reshape(self.shape)  # for straight legs

    def index(self, xy) -> tuple[int, int]:
        i, j = np.round((np.asarray(xy, float)[:2] - self.origin) / self.cell).astype(int)
        return int(np.clip(i, 0, self.shape[0] - 1)), int(np.clip(j, 0, self.shape[1] - 1))

    def point(self, ij) -> np.ndarray:
        return self.origin + self.cell * np.asarray(ij, float)

    def line_free(self, a, b) -> bool:
        """Is the straight leg a -> b clear (its end cells excepted: the object starts and ends there)?"""
        a, b = np.asarray(a, float), np.asarray(b, float)
        steps = max(2, int(np.ceil(np.linalg.norm(b - a) / (self.cell / 2))))
        ends = {self.index(a), self.index(b)}
        cells = {self.index(a + t * (b - a)) for t in np.linspace(0.0, 1.0, steps)} - ends
        return all(self.clear[c] for c in cells)


def astar(grid: Grid, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]] | None:
    """Shortest 8-connected path of free cells from start to goal (both treated as free)."""
    moves = [(di, dj, float(np.hypot(di, dj))) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    h = lambda c: float(np.hypot(c[0] - goal[0], c[1] - goal[1]))  # noqa: E731
    best, parent, frontier = {start: 0.0}, {start: None}, [(h(start), start)]
    while frontier:
        _, c = heapq.heappop(frontier)
        if c == goal:
            path = []
            while c is not None:
                path.append(c)
                c = parent[c]
            return path[::-1]
        for di, dj, cost in moves:
            n = (c[0] + di, c[1] + dj)
            if not (0 <= n[0] < grid.shape[0] and 0 <= n[1] < grid.shape[1]):
                continue
            if not grid.free[n] and n != goal:
                continue
            g = best[c] + cost
            if g < best.get(n, np.inf):
                best[n], parent[n] = g, c
                heapq.heappush(frontier, (g + h(n), n))
    return None


def plan_push_path(start, goal, obstacles: list[np.ndarray], radius: float, bounds, allowed=None) -> list[np.ndarray]:
    """x-y waypoints from `start` to `goal` (goal last) for a pushed object of `radius` (its centre's
    farthest footprint point) around `obstacles` (each an array of world vertices); `allowed` maps
    (N, 2) points to where the robot can push. Just [goal] when the straight line is free, and also
    when no path exists (the push then goes straight, as before)."""
    start, goal = np.asarray(start, float)[:2], np.asarray(goal, float)[:2]
    grid = Grid(bounds, obstacles, radius, allowed)
    s, g = grid.index(start), grid.index(goal)
    grid.free[s] = grid.free[g] = grid.clear[s] = grid.clear[g] = True  # where it is and must go
    if grid.line_free(start, goal):
        return [goal]
    cells = astar(grid, s, g)
    if cells is None:
        return [goal]
    points = [start] + [grid.point(c) for c in cells[1:-1]] + [goal]
    out, k = [], 0
    while k < len(points) - 1:  # the farthest point in line of sight, repeatedly
        k = next(j for j in range(len(points) - 1, k, -1) if j == k + 1 or grid.line_free(points[k], points[j]))
        out.append(points[k])
    return out
