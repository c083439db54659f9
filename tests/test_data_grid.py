"""Grid positions and object questions of the auxiliary detection loss (`c2a_jax.data.grid`).

The expected strings are written out from ClevrSkills spec sections 6.3 and 6.6 (byte for byte,
quirks included); the property tests check that no scene of 0..8 objects breaks the generator or
makes it claim an absent object is present.
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2a_jax.data.grid import (
    KINDS,
    GridQuestion,
    format_position,
    grid_position,
    grid_positions,
    grid_questions,
    sample_fake_object,
    sample_grid_questions,
    scene_objects,
)

SQ = (256, 256, 3)


def box(xmin, ymin, xmax, ymax):
    return np.array([[xmin, ymin, 1], [xmax, ymax, 1]], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# grid positions (spec 6.3)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "expected"),
    [
        (box(0, 0, 0, 0), (0, 0)),  # top-left corner
        (box(255, 255, 255, 255), (10, 10)),  # 255 / 256 * 10 = 9.96 -> 10
        (box(0, 255, 0, 255), (0, 10)),
        (box(255, 0, 255, 0), (10, 0)),
        (box(0, 0, 255, 255), (5, 5)),  # whole image: 127.5 / 256 * 10 = 4.98
        (box(118, 118, 138, 138), (5, 5)),  # centre 128 -> exactly 5
        (box(10, 20, 30, 40), (1, 1)),  # centres 20, 30 -> 0.78, 1.17
    ],
)
def test_grid_position_square(b, expected):
    assert grid_position(b, SQ) == expected
    assert all(type(v) is int for v in grid_position(b, SQ))


def test_grid_position_rounds_half_to_even():
    # 256 x 256: centre 64 -> 2.5 -> 2, centre 192 -> 7.5 -> 8 (both exact in binary)
    assert grid_position(box(60, 188, 68, 196), SQ) == (2, 8)
    # 100 x 100: centres 25, 35, 5, 15 -> 2.5, 3.5, 0.5, 1.5 -> 2, 4, 0, 2
    assert grid_position(box(20, 30, 30, 40), (100, 100)) == (2, 4)
    assert grid_position(box(0, 10, 10, 20), (100, 100)) == (0, 2)
    # just off the half goes the expected way
    assert grid_position(box(20, 30, 31, 41), (100, 100)) == (3, 4)


def test_grid_position_non_square_divides_x_by_first_dimension():
    # image (H=200, W=100): x is divided by 200, y by 100 (spec open question 11: kept as the original)
    assert grid_position(box(40, 40, 60, 60), (200, 100, 3)) == (2, 5)  # 50/200*10 = 2.5 -> 2; 50/100*10 = 5
    assert grid_position(box(90, 10, 110, 30), (200, 100)) == (5, 2)
    assert grid_position(box(0, 0, 199, 99), (200, 100)) == (5, 5)


def test_grid_position_missing():
    assert grid_position(None, SQ) == (-1, -1)
    assert grid_position(box(-1, -1, -1, -1), SQ) == (-1, -1)  # "not in front of the camera"
    assert grid_position([[-1, -1, 1], [-1, -1, 1]], SQ) == (-1, -1)


def test_grid_position_accepts_lists_and_two_columns_and_clips():
    assert grid_position([[118, 118], [138, 138]], SQ) == (5, 5)
    assert grid_position(box(300, 300, 400, 400), SQ) == (10, 10)  # beyond the image: clipped to the grid


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(6), np.zeros((2, 1)), [[np.nan, 0, 1], [1, 1, 1]]])
def test_grid_position_rejects_malformed_boxes(bad):
    with pytest.raises(ValueError):
        grid_position(bad, SQ)


def test_grid_positions_dict_array_and_empty():
    boxes = {"red cube_3": box(118, 118, 138, 138), "blue cube_4": None, "green cube_5": box(-1, -1, -1, -1)}
    out = grid_positions(boxes, SQ)
    assert out.dtype == np.int64 and out.shape == (3, 2)
    assert out.tolist() == [[5, 5], [-1, -1], [-1, -1]]
    arr = np.stack([box(0, 0, 0, 0), box(60, 188, 68, 196), box(-1, -1, -1, -1)])
    assert grid_positions(arr, SQ).tolist() == [[0, 0], [2, 8], [-1, -1]]
    assert grid_positions(np.zeros((0, 2, 3)), SQ).shape == (0, 2)
    assert grid_positions({}, SQ).shape == (0, 2)


def test_scene_objects_uses_visibility_then_box():
    boxes = np.stack([box(118, 118, 138, 138), box(0, 0, 0, 0), box(-1, -1, -1, -1)])
    names = ["red cube", "blue cube", "green cube"]
    assert scene_objects(names, boxes, SQ) == [("red cube", (5, 5)), ("blue cube", (0, 0)), ("green cube", None)]
    vis = np.array([1.0, 0.0, 1.0])
    assert scene_objects(names, boxes, SQ, vis) == [("red cube", (5, 5)), ("blue cube", None), ("green cube", None)]
    with pytest.raises(ValueError):
        scene_objects(names[:2], boxes, SQ)


def test_format_position():
    assert format_position((3, 5)) == "(3, 5)"
    assert format_position((np.int64(10), np.int32(0))) == "(10, 0)"


# ----------------------------------------------------------------------------------------------------
# questions (spec 6.6), exact strings
# ----------------------------------------------------------------------------------------------------


def qa(questions, kind=None):
    return [(q.question, q.answer) for q in questions if kind is None or q.kind == kind]


def test_all_kinds_two_objects_without_fake():
    objects = [("red cube", (3, 5)), ("blue cylinder", (6, 4))]
    out = grid_questions(objects, ["blue cylinder", "red cube"], np.random.RandomState(0))  # no spare name
    assert all(isinstance(q, GridQuestion) for q in out)
    assert [q.kind for q in out] == ["where"] * 2 + ["what_at"] * 2 + ["is_at"] * 4 + ["visible"] * 2 + ["count"] * 2
    assert qa(out) == [
        ("<image>\nWhat is the location of the red cube?", "The red cube is at (3, 5)"),
        ("<image>\nWhat is the location of the blue cylinder?", "The blue cylinder is at (6, 4)"),
        ("<image>\nWhat object is at (3, 5)?", "There is a red cube at (3, 5)"),
        ("<image>\nWhat object is at (6, 4)?", "There is a blue cylinder at (6, 4)"),
        ("<image>\nIs there a red cube at (3, 5)?", "Yes, there is red cube at (3, 5)"),
        ("<image>\nIs there a red cube at (6, 4)?", "No, there is blue cylinder at (6, 4)"),
        ("<image>\nIs there a blue cylinder at (3, 5)?", "No, there is red cube at (3, 5)"),
        ("<image>\nIs there a blue cylinder at (6, 4)?", "Yes, there is blue cylinder at (6, 4)"),
        ("<image>\nIs there a red cube visible?", "Yes, there is a red cube visible"),
        ("<image>\nIs there a blue cylinder visible?", "Yes, there is a blue cylinder visible"),
        ("<image>\nHow many red cube are visible?", "There are 1 red cube visible"),
        ("<image>\nHow many blue cylinder are visible?", "There are 1 blue cylinder visible"),
    ]


def test_duplicated_names_give_multiple_forms():
    objects = [("red cube", (1, 1)), ("green hexagon", (2, 8)), ("red cube", (5, 5)), ("red cube", (9, 2))]
    out = grid_questions(objects, ["red cube", "green hexagon"], np.random.RandomState(0))
    assert qa(out, "where") == [
        (
            "<image>\nWhat is the location of the red cube?",
            "There are multiple red cubes visible, at (1, 1), (5, 5) and (9, 2)",
        ),
        ("<image>\nWhat is the location of the green hexagon?", "The green hexagon is at (2, 8)"),
    ]
    assert qa(out, "what_at") == [
        ("<image>\nWhat object is at (1, 1)?", "There is a red cube at (1, 1)"),
        ("<image>\nWhat object is at (2, 8)?", "There is a green hexagon at (2, 8)"),
        ("<image>\nWhat object is at (5, 5)?", "There is a red cube at (5, 5)"),
        ("<image>\nWhat object is at (9, 2)?", "There is a red cube at (9, 2)"),
    ]
    assert qa(out, "is_at") == [
        ("<image>\nIs there a red cube at (1, 1)?", "Yes, there is red cube at (1, 1)"),
        ("<image>\nIs there a red cube at (2, 8)?", "No, there is green hexagon at (2, 8)"),
        ("<image>\nIs there a red cube at (5, 5)?", "Yes, there is red cube at (5, 5)"),
        ("<image>\nIs there a red cube at (9, 2)?", "Yes, there is red cube at (9, 2)"),
        ("<image>\nIs there a green hexagon at (1, 1)?", "No, there is red cube at (1, 1)"),
        ("<image>\nIs there a green hexagon at (2, 8)?", "Yes, there is green hexagon at (2, 8)"),
        ("<image>\nIs there a green hexagon at (5, 5)?", "No, there is red cube at (5, 5)"),
        ("<image>\nIs there a green hexagon at (9, 2)?", "No, there is red cube at (9, 2)"),
    ]
    assert qa(out, "visible") == [
        ("<image>\nIs there a red cube visible?", "Yes, there is a red cube visible"),
        ("<image>\nIs there a green hexagon visible?", "Yes, there is a green hexagon visible"),
    ]
    assert qa(out, "count") == [
        ("<image>\nHow many red cube are visible?", "There are 3 red cubes visible"),
        ("<image>\nHow many green hexagon are visible?", "There are 1 green hexagon visible"),
    ]


def test_two_of_a_name_joined_with_and():
    out = grid_questions([("red cube", (0, 0)), ("red cube", (10, 10))], ["red cube"], np.random.RandomState(0))
    assert qa(out, "where") == [
        (
            "<image>\nWhat is the location of the red cube?",
            "There are multiple red cubes visible, at (0, 0) and (10, 10)",
        )
    ]
    assert qa(out, "count") == [("<image>\nHow many red cube are visible?", "There are 2 red cubes visible")]


def test_absent_fake_object_every_kind():
    objects = [("red cube", (3, 5))]
    out = grid_questions(objects, ["red cube", "yellow triangle"], np.random.RandomState(7))
    fakes = [re.fullmatch(r"There is no object at \((\d+), (\d+)\)", q.answer) for q in out if q.kind == "what_at"]
    fakes = [m for m in fakes if m]
    assert len(fakes) == 1
    f = f"({fakes[0].group(1)}, {fakes[0].group(2)})"
    assert qa(out, "where") == [
        ("<image>\nWhat is the location of the red cube?", "The red cube is at (3, 5)"),
        ("<image>\nWhat is the location of the yellow triangle?", "There is no yellow triangle"),
    ]
    assert qa(out, "what_at") == [
        ("<image>\nWhat object is at (3, 5)?", "There is a red cube at (3, 5)"),
        (f"<image>\nWhat object is at {f}?", f"There is no object at {f}"),
    ]
    is_at = qa(out, "is_at")
    g = re.search(r"\(\d+, \d+\)", is_at[1][0]).group(0)  # this kind's own fake cell
    assert is_at == [
        ("<image>\nIs there a red cube at (3, 5)?", "Yes, there is red cube at (3, 5)"),
        (f"<image>\nIs there a red cube at {g}?", f"No, there is no red cube at {g}"),
        ("<image>\nIs there a yellow triangle at (3, 5)?", "No, there is red cube at (3, 5)"),
        (f"<image>\nIs there a yellow triangle at {g}?", f"No, there is no yellow triangle at {g}"),
    ]
    assert qa(out, "visible") == [
        ("<image>\nIs there a red cube visible?", "Yes, there is a red cube visible"),
        ("<image>\nIs there a yellow triangle visible?", "No, there is no yellow triangle visible"),
    ]
    assert qa(out, "count") == [
        ("<image>\nHow many red cube are visible?", "There are 1 red cube visible"),
        ("<image>\nHow many yellow triangle are visible?", "There are no yellow triangles visible"),
    ]


def test_not_visible_objects_are_asked_about_but_never_located():
    objects = [("red cube", (3, 5)), ("white cube", None), ("black cube", (-1, -1))]
    out = grid_questions(objects, ["red cube", "white cube", "black cube"], np.random.RandomState(0))
    assert qa(out, "where")[1:] == [
        ("<image>\nWhat is the location of the white cube?", "There is no white cube"),
        ("<image>\nWhat is the location of the black cube?", "There is no black cube"),
    ]
    assert qa(out, "what_at") == [("<image>\nWhat object is at (3, 5)?", "There is a red cube at (3, 5)")]
    assert qa(out, "is_at") == [
        ("<image>\nIs there a red cube at (3, 5)?", "Yes, there is red cube at (3, 5)"),
        ("<image>\nIs there a white cube at (3, 5)?", "No, there is red cube at (3, 5)"),
        ("<image>\nIs there a black cube at (3, 5)?", "No, there is red cube at (3, 5)"),
    ]
    assert qa(out, "visible")[1] == ("<image>\nIs there a white cube visible?", "No, there is no white cube visible")
    assert qa(out, "count")[2] == ("<image>\nHow many black cube are visible?", "There are no black cubes visible")


def test_one_of_two_copies_visible():
    out = grid_questions([("red cube", None), ("red cube", (4, 4))], ["red cube"], np.random.RandomState(0))
    assert qa(out, "where") == [("<image>\nWhat is the location of the red cube?", "The red cube is at (4, 4)")]
    assert qa(out, "count") == [("<image>\nHow many red cube are visible?", "There are 1 red cube visible")]


def test_empty_scene_asks_only_about_the_fake():
    out = grid_questions([], ["red cube"], np.random.RandomState(3))
    assert [q.kind for q in out] == list(KINDS)
    assert out[0].answer == "There is no red cube"
    assert out[3].answer == "No, there is no red cube visible"
    assert out[4].answer == "There are no red cubes visible"
    assert grid_questions([], [], np.random.RandomState(3)) == []


def test_same_cell_objects():
    # a stack seen from above: both objects in one cell; each "what is at" answer is true
    out = grid_questions(
        [("red cube", (5, 5)), ("blue cube", (5, 5))], ["red cube", "blue cube"], np.random.RandomState(0)
    )
    assert qa(out, "what_at") == [
        ("<image>\nWhat object is at (5, 5)?", "There is a red cube at (5, 5)"),
        ("<image>\nWhat object is at (5, 5)?", "There is a blue cube at (5, 5)"),
    ]
    assert qa(out, "is_at") == [
        ("<image>\nIs there a red cube at (5, 5)?", "Yes, there is red cube at (5, 5)"),
        ("<image>\nIs there a blue cube at (5, 5)?", "Yes, there is blue cube at (5, 5)"),
    ]


def test_image_token_option_and_kinds_subset():
    objects = [("red cube", (3, 5))]
    bare = grid_questions(objects, ["red cube"], np.random.RandomState(0), image_token=None)
    assert qa(bare, "where") == [("What is the location of the red cube?", "The red cube is at (3, 5)")]
    custom = grid_questions(objects, ["red cube"], np.random.RandomState(0), ("count", "where"), image_token="<img>")
    assert qa(custom) == [
        ("<img>\nHow many red cube are visible?", "There are 1 red cube visible"),
        ("<img>\nWhat is the location of the red cube?", "The red cube is at (3, 5)"),
    ]
    with pytest.raises(ValueError):
        grid_questions(objects, ["red cube"], np.random.RandomState(0), ("where", "colour"))


@pytest.mark.parametrize("bad", [[("red cube", (11, 0))], [("red cube", (3.0, 5))], [("", (1, 1))], [("a", (1,))]])
def test_invalid_objects_rejected(bad):
    with pytest.raises(ValueError):
        grid_questions(bad, ["x"], np.random.RandomState(0))


def test_numpy_positions_accepted():
    out = grid_questions([("red cube", np.array([3, 5]))], ["red cube"], np.random.RandomState(0), ("where",))
    assert out[0].answer == "The red cube is at (3, 5)"


# ----------------------------------------------------------------------------------------------------
# the fake object
# ----------------------------------------------------------------------------------------------------


def test_fake_object_distance_rule_and_name():
    objects = [("red cube", (2, 2)), ("blue cube", (7, 6)), ("hidden cube", None)]
    names = ["red cube", "blue cube", "hidden cube", "yellow triangle", "green hexagon"]
    seen_cells = set()
    seen_names = set()
    for seed in range(300):
        name, (x, y) = sample_fake_object(objects, names, np.random.RandomState(seed))
        assert name in {"yellow triangle", "green hexagon"}  # never a scene name, visible or not
        assert 0 <= x < 10 and 0 <= y < 10
        for _, pos in objects[:2]:
            assert np.hypot(x - pos[0], y - pos[1]) > 10 // 3  # Euclidean, strictly more than 3
        seen_cells.add((x, y))
        seen_names.add(name)
    assert seen_names == {"yellow triangle", "green hexagon"}
    # (5, 2) is exactly 3 from (2, 2): excluded; (6, 2) is 4 away and sqrt(17) from (7, 6): allowed
    assert (5, 2) not in seen_cells and (6, 2) in seen_cells
    assert len(seen_cells) > 20


def test_no_fake_when_grid_is_covered_or_names_used_up():
    lattice = [(f"obj {i}", (x, y)) for i, (x, y) in enumerate((x, y) for x in (0, 3, 6, 9) for y in (0, 3, 6, 9))]
    names = [n for n, _ in lattice] + ["spare"]
    assert sample_fake_object(lattice, names, np.random.RandomState(0)) is None
    out = grid_questions(lattice, names, np.random.RandomState(0))
    assert not any("spare" in q.question or "no object" in q.answer for q in out)
    assert sample_fake_object([("a", (1, 1))], ["a"], np.random.RandomState(0)) is None


def test_each_kind_draws_its_own_fake():
    # as in the original, every kind samples a new absent object: within one call they usually differ
    names = ["red cube"] + [f"thing {i}" for i in range(30)]
    differ = 0
    for seed in range(20):
        out = grid_questions([("red cube", (0, 0))], names, np.random.RandomState(seed), ("visible", "count"))
        fakes = [q.question for q in out if "thing" in q.question]
        assert len(fakes) == 2
        differ += fakes[0].removeprefix("<image>\nIs there a ").removesuffix(" visible?") != fakes[1].removeprefix(
            "<image>\nHow many "
        ).removesuffix(" are visible?")
    assert differ > 10


# ----------------------------------------------------------------------------------------------------
# determinism and sampling
# ----------------------------------------------------------------------------------------------------

SCENE = [("red cube", (1, 2)), ("red cube", (8, 8)), ("blue cylinder", (5, 1)), ("white cube", None)]
NAMES = ["red cube", "blue cylinder", "white cube", "yellow triangle", "green hexagon", "black cube"]


def test_deterministic_with_seeded_rng():
    a = grid_questions(SCENE, NAMES, np.random.RandomState(42))
    b = grid_questions(SCENE, NAMES, np.random.RandomState(42))
    assert a == b
    different = [grid_questions(SCENE, NAMES, np.random.RandomState(s)) for s in range(10)]
    assert any(d != a for d in different)
    g1 = grid_questions(SCENE, NAMES, np.random.default_rng(5))
    g2 = grid_questions(SCENE, NAMES, np.random.default_rng(5))
    assert g1 == g2


def test_sample_grid_questions():
    full = grid_questions(SCENE, NAMES, np.random.RandomState(1))
    picked = sample_grid_questions(SCENE, NAMES, np.random.RandomState(1), 10)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert set(picked) <= set(full)  # same rng state -> same fakes -> drawn from this very set
    assert picked == sample_grid_questions(SCENE, NAMES, np.random.RandomState(1), 10)
    many = sample_grid_questions(SCENE, NAMES, np.random.RandomState(1), 3 * len(full))
    assert len(many) == 3 * len(full)
    assert sample_grid_questions(SCENE, NAMES, np.random.RandomState(1), 0) == []
    assert sample_grid_questions([], [], np.random.RandomState(1), 5) == []
    with pytest.raises(ValueError):
        sample_grid_questions(SCENE, NAMES, np.random.RandomState(1), -1)
    kinds = {q.kind for s in range(30) for q in sample_grid_questions(SCENE, NAMES, np.random.RandomState(s), 5)}
    assert kinds == set(KINDS)


# ----------------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------------

POOL = ["red cube", "blue cube", "green cylinder", "yellow triangle", "white hexagon", "black cube"]
pos_st = st.one_of(st.none(), st.just((-1, -1)), st.tuples(st.integers(0, 10), st.integers(0, 10)))
objects_st = st.lists(st.tuples(st.sampled_from(POOL), pos_st), min_size=0, max_size=8)

POSITION = re.compile(r"\((-?\d+), (-?\d+)\)")
# answers that assert the named object is present, with the name captured
POSITIVE = [
    re.compile(r"The (.+) is at \(\d+, \d+\)"),
    re.compile(r"There are multiple (.+)s visible, at .+"),
    re.compile(r"There is a (.+) at \(\d+, \d+\)"),
    re.compile(r"Yes, there is (.+) at \(\d+, \d+\)"),
    re.compile(r"No, there is (?!no )(.+) at \(\d+, \d+\)"),
    re.compile(r"Yes, there is a (.+) visible"),
    re.compile(r"There are [1-9]\d* (.+?)s? visible"),
]


@settings(max_examples=150, deadline=None)
@given(
    objects=objects_st,
    extra=st.lists(st.sampled_from(["purple cube", "cyan cylinder"]), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(objects, extra, seed):
    all_names = sorted({n for n, _ in objects} | set(extra))
    out = grid_questions(objects, all_names, np.random.RandomState(seed))
    visible = [(n, p) for n, p in objects if p is not None and p != (-1, -1)]
    present = {n for n, _ in visible}
    for q in out:
        assert q.kind in KINDS and q.question.startswith("<image>\n")
        for text in (q.question, q.answer):
            for m in POSITION.finditer(text):
                assert 0 <= int(m.group(1)) <= 10 and 0 <= int(m.group(2)) <= 10
        matches = [m for pat in POSITIVE if (m := pat.fullmatch(q.answer))]
        for m in matches:
            assert m.group(1) in present, q
        if q.answer.startswith("There is no object at"):
            cell = tuple(int(v) for v in POSITION.search(q.answer).groups())
            assert all(np.hypot(cell[0] - p[0], cell[1] - p[1]) > 3 for _, p in visible)
        if q.kind == "count":
            name = q.question.removeprefix("<image>\nHow many ").removesuffix(" are visible?")
            k = sum(n == name for n, _ in visible)
            assert q.answer == (
                f"There are no {name}s visible" if k == 0 else f"There are {k} {name}{'s' if k > 1 else ''} visible"
            )
        if q.kind == "visible":
            name = q.question.removeprefix("<image>\nIs there a ").removesuffix(" visible?")
            assert q.answer.startswith("Yes") == (name in present)
    # every scene name is asked about where/visible/count; every visible object is located by what_at
    assert {q.question for q in out if q.kind == "where"} >= {
        f"<image>\nWhat is the location of the {n}?" for n, _ in objects
    }
    assert {q.answer for q in out if q.kind == "what_at"} >= {
        f"There is a {n} at {format_position(p)}" for n, p in visible
    }
    assert len(out) == len(set(out))
