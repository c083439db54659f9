"""The pushed object's 2-D path (c2a_jax.sim.push_path): straight when the line is free, around an
object standing on it otherwise, every leg clear of the other objects by the object's radius, and
inside the region the robot can push in. Pure numpy, no simulator."""

import numpy as np

from c2a_jax.sim.push_path import SHORTCUT_MARGIN, plan_push_path, polygon_distance

BOUNDS = ((-0.45, -0.40), (0.10, 0.40))
RADIUS = 0.06


def square(cx, cy, half=0.05):
    return np.array([[cx - half, cy - half, 0.0], [cx + half, cy - half, 0.0], [cx + half, cy + half, 0.0],
                     [cx - half, cy + half, 0.0], [cx, cy, 0.05]])  # fmt: skip


def legs_clear(start, path, obstacle) -> float:
    """The smallest distance from the pushed object's centre, along the legs, to the obstacle."""
    poly = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.05 + obstacle[4, :2]
    points = [np.asarray(start, float)] + [np.asarray(p, float) for p in path]
    samples = np.concatenate([np.linspace(a, b, 50) for a, b in zip(points[:-1], points[1:], strict=True)])
    return float(polygon_distance(samples, poly).min())


def test_polygon_distance_is_zero_inside_and_euclidean_outside():
    poly = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    d = polygon_distance(np.array([[0.5, 0.5], [2.0, 0.5], [2.0, 2.0], [-0.5, 0.5]]), poly)
    assert np.allclose(d, [0.0, 1.0, np.sqrt(2.0), 0.5])


def test_a_free_line_is_one_leg():
    assert [p.tolist() for p in plan_push_path([-0.3, -0.2], [-0.3, 0.2], [square(-0.1, 0.0)], RADIUS, BOUNDS)] == [
        [-0.3, 0.2]
    ]


def test_an_object_on_the_line_is_passed_around_with_few_corners():
    start, goal, other = [-0.2, -0.2], [-0.2, 0.2], square(-0.2, 0.0)
    assert legs_clear(start, [goal], other) == 0.0  # the straight push would hit it
    path = plan_push_path(start, goal, [other], RADIUS, BOUNDS)
    assert np.allclose(path[-1], goal) and 2 <= len(path) <= 4
    assert legs_clear(start, path, other) > RADIUS + SHORTCUT_MARGIN - 0.011  # within a grid cell


def test_the_path_stays_where_pushing_is_allowed():
    start, goal, other = [-0.2, -0.2], [-0.2, 0.2], square(-0.2, 0.0)
    allowed = lambda xy: xy[:, 0] >= -0.25  # noqa: E731  (e.g. too near the robot base below)
    path = plan_push_path(start, goal, [other], RADIUS, BOUNDS, allowed)
    assert all(p[0] > -0.25 for p in path[:-1])  # around the far side
    assert legs_clear(start, path, other) > RADIUS
