"""Action traces -> code labels at both granularities (clevrskills_spec.md 6.2-6.4, decision 3).

An oracle step's trace is the list of the active solvers' action states, top first (`Solver`,
then the level-1 solver, then its children). `level1_program` reproduces ClevrSkills' LLaVA
converter for the level-1 solver; `fine_program` names the deepest solver's call and, on the first
step of a level-1 solver, writes the values it computes for later use into ``pose_dict``.
`EpisodeLabeler` turns a stream of traces into per-step labels: the plain code on a key-step (the
first step of a call), the commented code on the steps after it, and ``done()`` from the first
successful step on.

Solver identity: our recorder gives every solver instance a ``solver_id``; ClevrSkills' own
traces (the released dataset) identify one by the triple (``solver_class``, ``solver_python_id``,
``solver_random_id``) instead (spec 6.2), which `solver_key` falls back to, so the labeler reads
both. Actor references may be lists or tuples ``(name, id)``, optionally with a third element,
the grid cell that tells same-named actors apart (written as ``get_actor('x', actor_pos=(gx, gy))``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from c2a_jax.codeapi.keysteps import comment
from c2a_jax.codeapi.nodes import Actor, Assign, Call, Component, PoseEntry, Program, Var
from c2a_jax.codeapi.render import render

DONE: Program = (Call("done"),)


def _actor(ref: Any) -> Actor:
    """An actor reference of the trace, ``[name, id]`` or ``[name, id, [gx, gy]]`` (the grid cell that
    tells same-named actors apart, `c2a_jax.sim.grid_refs`), as code."""
    pos = tuple(int(v) for v in ref[2]) if len(ref) > 2 and ref[2] is not None else None
    return Actor(str(ref[0]), pos)


def solver_key(state: dict) -> Any:
    """What tells one solver instance of a trace from another: ``solver_id`` (our recorder), else
    ClevrSkills' triple (``solver_class``, ``solver_python_id``, ``solver_random_id``)."""
    if "solver_id" in state:
        return state["solver_id"]
    return (state["solver_class"], state.get("solver_python_id"), state.get("solver_random_id"))


def _kw(*pairs) -> tuple:
    return tuple((k, v) for k, v in pairs if v is not None)


def target_key(actor_name: str) -> str:
    """The pose_dict key under which the fine labels keep a computed target pose."""
    return f"{actor_name} target"


def _pmp_target(state: dict) -> tuple[list, Any, Any]:
    """(statements before the call, target_pose expression, target_actor expression) of a
    `PickMove3dPlaceSolver` / `PushSolver` at level 1 (spec 6.4)."""
    a = _actor(state["actor"])
    pre: list = []
    for stored in state.get("store_pose") or ():
        pre.append(Assign(PoseEntry(str(stored[0])), Call("get_pose", (), (("actor", Actor(str(stored[0]))),))))
    fn = state.get("target_pose_function")
    if fn == "rotate":
        angle = -state["angle"] if state.get("restore") else state["angle"]
        pre.append(Assign(Var("target_pose"), Call("rotate_z", (Call("get_pose", (), (("actor", a),)), int(angle)))))
        return pre, Var("target_pose"), None
    if fn == "swap_rotate":  # the other's stored position, own stored orientation, turned (spec 6.9.2)
        other = PoseEntry(str(state["target_actor"][0]))
        pose = Call("Pose", (Component(other, "p"), Component(PoseEntry(a.name), "q")))
        pre.append(Assign(Var("target_pose"), Call("rotate_z", (pose, int(state["angle"])))))
        return pre, Var("target_pose"), None
    if fn == "free_space":
        return pre, Call("free_space", (), (("actor", a),)), None
    if fn == "swap":
        pre.append(Assign(PoseEntry(a.name), Call("get_pose", (), (("actor", a),))))
        return pre, PoseEntry(str(state["target_actor"][0])), None
    if fn == "in_area":
        direction = tuple(float(v) for v in state["area_direction"])
        expr = Call(
            "free_space_next_to",
            (),
            (
                ("actor", a),
                ("next_to_actor", _actor(state["area_actor"])),
                ("direction", direction),
                ("description", state["area_description"]),
            ),
        )
        pre.append(Assign(Var("target_pose"), expr))
        return pre, Var("target_pose"), None
    if fn == "on_top":  # the get_supporting_actor form needs the key-step image in the prompt: never in NL
        return pre, None, _actor(state["target_actor"])
    if fn is not None:
        return pre, None, None
    if state.get("target_actor") is not None:
        return pre, None, _actor(state["target_actor"])
    return pre, None, None


def level1_program(state: dict) -> Program | None:
    """The level-1 code of a level-1 solver's action state, or None when the converter has none."""
    cls = state["solver_class"]
    if cls == "PickMove3dPlaceSolver":
        pre, pose, target_actor = _pmp_target(state)
        if state.get("target_pose_function") is None and state.get("target_pose") is not None and target_actor is None:
            return None  # the converter's "to do" case
        call = Call(
            "pick_move3d_place",
            (),
            _kw(("actor", _actor(state["actor"])), ("target_actor", target_actor), ("target_pose", pose),
                ("match_ori", True if state.get("match_ori") else None)),
        )  # fmt: skip
        return (*pre, call)
    if cls == "PushSolver":
        pre, pose, _ = _pmp_target(state)
        towards = state.get("target_actor") if state.get("target_pose_function") == "towards" else None
        kw = _kw(("actor", _actor(state["actor"])), ("target_pose", pose),
                 ("target_actor", _actor(towards) if towards else None))  # fmt: skip
        return (*pre, Call("push", (), kw))
    if cls == "Move3dTouchSolver":
        kw = _kw(("actor", _actor(state["actor"])), ("push", True if state.get("push") else None),
                 ("topple", True if state.get("topple") else None))  # fmt: skip
        return (Call("touch", (), kw),)
    if cls == "PickMove3dThrowSolver":  # positional actors (spec 6.4)
        kw = _kw(("target_2d", True if state.get("target_2d") else None),
                 ("topple_target", True if state.get("topple_target") else None))  # fmt: skip
        return (Call("hit", (_actor(state["throw_actor"]), _actor(state["target_actor"])), kw),)
    if cls == "ToppleStructure":
        return (Call("topple_structure", (tuple(_actor(r) for r in state["actors"]),)),)
    if cls == "BalanceScaleSolver":
        return (Call("balance_scale", (tuple(_actor(r) for r in state["objects"]),)),)
    return None


def _fine_memory(state: dict) -> tuple[list, Any]:
    """pose_dict writes of a level-1 solver's first fine step, and the fine target-pose expression."""
    if state["solver_class"] not in ("PickMove3dPlaceSolver", "PushSolver"):
        return [], None
    pre, pose, _ = _pmp_target(state)
    name = str(state["actor"][0])
    writes = [s for s in pre if isinstance(s.target, PoseEntry)]
    if pose is None:
        return writes, None
    if isinstance(pose, PoseEntry):
        return writes, pose
    value = next((s.value for s in pre if s.target == Var("target_pose")), None) if isinstance(pose, Var) else pose
    writes.append(Assign(PoseEntry(target_key(name)), value))
    return writes, PoseEntry(target_key(name))


def fine_call(state: dict, target_pose: Any) -> Call | None:
    """The fine call of the deepest solver's action state."""
    cls = state["solver_class"]
    a = _actor(state["actor"]) if state.get("actor") else None
    t = _actor(state["target_actor"]) if state.get("target_actor") else None
    match = True if state.get("match_ori") or state.get("match_ori_2d") else None
    if cls == "Move3dSolver":
        role = state.get("role")
        if role == "approach":
            return Call("move3d", (), _kw(("target_actor", t)))
        if role == "carry":
            return Call("move3d", (), _kw(("actor", a), ("target_actor", t),
                                          ("target_pose", target_pose if t is None else None), ("match_ori", match)))  # fmt: skip
        if role == "hold":
            return Call("move3d", (), _kw(("actor", a)))
        return Call("move3d")
    if cls == "PickSolver":
        return Call("pick", (), (("actor", a),))
    if cls in ("PlaceSolver", "PlaceOnActorSolver"):
        return Call("place", (), _kw(("actor", a), ("target_actor", t),
                                     ("target_pose", target_pose if t is None else None), ("match_ori", match)))  # fmt: skip
    if cls == "TouchSolver":
        return Call("touch", (), _kw(("actor", a), ("push", True if state.get("push") else None),
                                     ("topple", True if state.get("topple") else None)))  # fmt: skip
    if cls == "PushAlongPathSolver":
        return Call(
            "push", (), _kw(("actor", a), ("target_actor", t), ("target_pose", target_pose if t is None else None))
        )
    if cls == "ThrowSolver":
        return Call("throw", (), _kw(("actor", a), ("target_actor", t),
                                     ("topple_target", True if state.get("topple_target") else None)))  # fmt: skip
    return None


@dataclasses.dataclass
class StepLabels:
    """Code of one step at both granularities; `*_keystep` tells plain from commented."""

    level1: str
    level1_keystep: bool
    fine: str
    fine_keystep: bool

    def level1_label(self) -> str:
        return self.level1 if self.level1_keystep else comment(self.level1)

    def fine_label(self) -> str:
        return self.fine if self.fine_keystep else comment(self.fine)


class EpisodeLabeler:
    """Turns the per-step traces of one episode into `StepLabels`, in order."""

    def __init__(self):
        self.level1_id = None
        self.fine_id = None
        self.level1_code = ""
        self.fine_code = ""
        self.fine_target = None
        self.done = False

    def label(self, trace: list[dict], success_before: bool) -> StepLabels:
        """Labels for a step whose trace is `trace`; `success_before` is True from the first step
        whose action leads to success on (spec 6.2: that step already says ``done()``)."""
        if success_before or self.done:
            first = not self.done
            self.done = True
            text = render(DONE)
            return StepLabels(text, first, text, first)
        level1 = trace[1] if len(trace) > 1 else None
        deepest = trace[-1]
        new_level1 = level1 is not None and solver_key(level1) != self.level1_id
        memory = []
        if new_level1:
            self.level1_id = solver_key(level1)
            program = level1_program(level1)
            self.level1_code = render(program) if program else f"{level1['solver_class']}# to do: not implemented yet"
            memory, self.fine_target = _fine_memory(level1)
        new_fine = solver_key(deepest) != self.fine_id or new_level1
        if new_fine:
            call = fine_call(deepest, self.fine_target) if len(trace) > 2 else None
            if call is not None or memory:
                self.fine_id = solver_key(deepest)
                self.fine_code = render((*memory, call) if call is not None else tuple(memory))
            elif not self.fine_code:  # a level-1 solver acting itself before any child: its own code
                self.fine_id = solver_key(deepest)
                self.fine_code = self.level1_code
            else:  # the level-1 solver holds between children: the last call goes on
                new_fine = False
        return StepLabels(self.level1_code, new_level1, self.fine_code, new_fine)
