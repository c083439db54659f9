"""The one table of the robot API: every function, its arguments, their types and its levels.

Two label granularities share this table (clevrskills_spec.md, "Our decisions" 3):

* ``level1`` -- exactly the strings of ClevrSkills' LLaVA converter (spec section 6): the call of the
  solver directly under the top-level `Solver` (``pick_move3d_place(...)``, ``touch(...)``, ...).
* ``fine`` -- the paper's choice: the call of the deepest active solver (``move3d``, ``pick``,
  ``place``, ``push``, ``touch``, ``throw``), with the values a level-1 solver computes for later
  use written as ``pose_dict['<key>'] = <expression>`` on its first step.

Rendering, parsing and the docs (`api_reference_markdown`) are all driven by this table, so a
function added here is at once renderable, parseable and documented.
"""

from __future__ import annotations

import dataclasses
import enum

LEVELS = ("level1", "fine")


class ArgType(enum.Enum):
    """Argument and return types of the API. The value is the name used in the docs."""

    ACTOR_MAIN = "actor"  # get_actor('x'[, actor_pos=(3, 5)]): grid position as keyword
    ACTOR = "actor (positional grid)"  # get_actor('x'[, (3, 5)]): grid position positional
    ACTOR_LIST = "list of actors"  # [(get_actor('a')), (get_actor('b'))]
    POSE = "pose"
    VEC3 = "position [x, y, z]"
    QUAT = "quaternion [w, x, y, z]"
    NUMBER = "number"
    BOOL = "bool"
    STR_SINGLE = "str"  # rendered with single quotes
    STR_DOUBLE = "str (double-quoted)"  # rendered with double quotes
    NONE = "-"  # an action: returns nothing and may only stand as a statement


ACTOR_TYPES = (ArgType.ACTOR_MAIN, ArgType.ACTOR)


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    """Signature of one API function.

    `positional` are the positional parameters in order (all required); `keywords` the keyword
    parameters in their canonical order, of which `required` must be present.
    """

    name: str
    returns: ArgType
    levels: tuple[str, ...]
    doc: str
    positional: tuple[tuple[str, ArgType], ...] = ()
    keywords: tuple[tuple[str, ArgType], ...] = ()
    required: tuple[str, ...] = ()

    @property
    def is_action(self) -> bool:
        return self.returns is ArgType.NONE

    def keyword_type(self, key: str) -> ArgType | None:
        for k, t in self.keywords:
            if k == key:
                return t
        return None


BOTH = LEVELS
A = ArgType

_SPECS = (
    # --- expressions -------------------------------------------------------------------------
    FunctionSpec(
        "get_actor",
        A.ACTOR_MAIN,
        BOTH,
        "The scene object with this description; the optional grid position (x, y) on the 10x10 "
        "base-camera grid disambiguates identical descriptions.",
        positional=(("name", A.STR_SINGLE),),
    ),
    FunctionSpec(
        "get_pose",
        A.POSE,
        BOTH,
        "The current pose of an actor.",
        keywords=(("actor", A.ACTOR_MAIN),),
        required=("actor",),
    ),
    FunctionSpec(
        "rotate_z",
        A.POSE,
        BOTH,
        "A pose rotated about the world z axis by an angle in degrees.",
        positional=(("pose", A.POSE), ("angle", A.NUMBER)),
    ),
    FunctionSpec(
        "Pose",
        A.POSE,
        BOTH,
        "A pose from a position and a (w, x, y, z) quaternion.",
        positional=(("p", A.VEC3), ("q", A.QUAT)),
    ),
    FunctionSpec(
        "free_space",
        A.POSE,
        BOTH,
        "A free table position for an actor (Swap's buffer pose).",
        keywords=(("actor", A.ACTOR_MAIN), ("pose", A.POSE)),
        required=("actor",),
    ),
    FunctionSpec(
        "free_space_next_to",
        A.POSE,
        BOTH,
        "A free position for `actor` in a direction next to `next_to_actor` (PlaceNextTo).",
        keywords=(
            ("actor", A.ACTOR_MAIN),
            ("next_to_actor", A.ACTOR),
            ("direction", A.VEC3),
            ("description", A.STR_DOUBLE),
        ),
        required=("actor", "next_to_actor", "direction"),
    ),
    FunctionSpec(
        "get_actor_pose",
        A.POSE,
        BOTH,
        "The pose an actor has in a reference image (Rearrange).",
        keywords=(("image", A.STR_SINGLE), ("actor", A.ACTOR_MAIN)),
        required=("image", "actor"),
    ),
    FunctionSpec(
        "get_supporting_actor",
        A.ACTOR_MAIN,
        BOTH,
        "The actor under `name` in a reference image (image-prompted PlaceOnTop).",
        positional=(("image", A.STR_DOUBLE), ("name", A.STR_DOUBLE)),
    ),
    # --- level-1 actions (children of the top-level Solver) ----------------------------------
    FunctionSpec(
        "pick_move3d_place",
        A.NONE,
        ("level1",),
        "Pick `actor`, carry it and place it on `target_actor` or at `target_pose`; with neither, "
        "pick it up and hold it (Pick).",
        keywords=(
            ("actor", A.ACTOR_MAIN),
            ("target_actor", A.ACTOR_MAIN),
            ("target_pose", A.POSE),
            ("match_ori", A.BOOL),
        ),
        required=("actor",),
    ),
    FunctionSpec(
        "push",
        A.NONE,
        BOTH,
        "Push `actor` along the table to `target_pose` or towards `target_actor`.",
        keywords=(("actor", A.ACTOR_MAIN), ("target_pose", A.POSE), ("target_actor", A.ACTOR_MAIN)),
        required=("actor",),
    ),
    FunctionSpec(
        "touch",
        A.NONE,
        BOTH,
        "Touch `actor`; with push=True push it away, with topple=True topple it.",
        keywords=(("actor", A.ACTOR_MAIN), ("push", A.BOOL), ("topple", A.BOOL)),
        required=("actor",),
    ),
    FunctionSpec(
        "hit",
        A.NONE,
        ("level1",),
        "Throw the first actor at the second.",
        positional=(("actor", A.ACTOR), ("target_actor", A.ACTOR)),
        keywords=(("target_2d", A.BOOL), ("topple_target", A.BOOL)),
    ),
    FunctionSpec(
        "topple_structure",
        A.NONE,
        ("level1",),
        "Topple every actor of a stack.",
        positional=(("actors", A.ACTOR_LIST),),
    ),
    FunctionSpec(
        "balance_scale",
        A.NONE,
        ("level1",),
        "Place objects on the scale's plates until it balances.",
        positional=(("objects", A.ACTOR_LIST),),
    ),
    FunctionSpec(
        "pick",
        A.NONE,
        BOTH,
        "Descend onto `actor`, grasp it with the vacuum and lift it.",
        keywords=(("actor", A.ACTOR_MAIN),),
        required=("actor",),
    ),
    FunctionSpec("done", A.NONE, BOTH, "The task is solved; nothing is left to do."),
    # --- fine actions (the deepest solvers) ---------------------------------------------------
    FunctionSpec(
        "move3d",
        A.NONE,
        ("fine",),
        "Move the tool along a collision-free path: above `target_actor` when nothing is held, or "
        "carrying the grasped `actor` to above `target_actor` / to `target_pose`; with `actor` "
        "alone, hold it lifted.",
        keywords=(
            ("actor", A.ACTOR_MAIN),
            ("target_actor", A.ACTOR_MAIN),
            ("target_pose", A.POSE),
            ("match_ori", A.BOOL),
        ),
    ),
    FunctionSpec(
        "place",
        A.NONE,
        ("fine",),
        "Lower the grasped `actor` onto `target_actor` or to `target_pose` and release it.",
        keywords=(
            ("actor", A.ACTOR_MAIN),
            ("target_actor", A.ACTOR_MAIN),
            ("target_pose", A.POSE),
            ("match_ori", A.BOOL),
        ),
        required=("actor",),
    ),
    FunctionSpec(
        "throw",
        A.NONE,
        ("fine",),
        "Swing the grasped `actor` and release it towards the target.",
        keywords=(
            ("actor", A.ACTOR_MAIN),
            ("target_actor", A.ACTOR_MAIN),
            ("target_2d", A.BOOL),
            ("topple_target", A.BOOL),
        ),
        required=("actor",),
    ),
)

FUNCTIONS: dict[str, FunctionSpec] = {s.name: s for s in _SPECS}

# Local variables a code unit may assign and then use, with their types.
VARIABLES: dict[str, ArgType] = {"target_pose": ArgType.POSE, "target_actor": ArgType.ACTOR_MAIN}

# The memory dict and the pose attributes that may be read.
POSE_DICT = "pose_dict"
POSE_ATTRIBUTES: dict[str, ArgType] = {"p": ArgType.VEC3, "q": ArgType.QUAT}


def functions_for(level: str | None) -> dict[str, FunctionSpec]:
    """The functions usable at a level (`None`: the union of both levels)."""
    if level is None:
        return FUNCTIONS
    if level not in LEVELS:
        raise ValueError(f"unknown code level {level!r}; expected one of {LEVELS}")
    return {n: s for n, s in FUNCTIONS.items() if level in s.levels}


def _signature(spec: FunctionSpec) -> str:
    parts = [p for p, _ in spec.positional]
    parts += [k if k in spec.required else f"{k}=?" for k, _ in spec.keywords]
    return f"{spec.name}({', '.join(parts)})"


def api_reference_markdown() -> str:
    """The API reference table (docs/api.md is generated from this and checked by a test)."""
    lines = [
        "# Robot-API reference",
        "",
        "Generated from `c2a_jax/codeapi/registry.py` by "
        "`python -m c2a_jax.codeapi > docs/api.md`; do not edit by hand.",
        "",
        "| function | levels | returns | arguments | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in _SPECS:
        args = [f"`{p}`: {t.value}" for p, t in spec.positional]
        args += [f"`{k}`{'' if k in spec.required else ' (optional)'}: {t.value}" for k, t in spec.keywords]
        lines.append(
            f"| `{_signature(spec)}` | {', '.join(spec.levels)} | {spec.returns.value} | "
            f"{'; '.join(args) or '-'} | {spec.doc} |"
        )
    lines += [
        "",
        "Statements: an action call, or an assignment to `target_pose` (a pose), `target_actor` "
        "(an actor) or `pose_dict['<key>']` (a pose). A variable must be assigned before it is "
        "used in the same code unit; `pose_dict` persists across the calls of an episode. "
        "`<pose>.p` and `<pose>.q` read a pose's position and quaternion.",
        "",
    ]
    return "\n".join(lines)
