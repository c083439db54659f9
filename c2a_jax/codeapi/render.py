"""Structured calls -> code text, byte-exact with ClevrSkills' converter (spec sections 6.3-6.10).

Rendering is driven by the argument types of `registry.FUNCTIONS`: the same `Actor` prints its grid
position as ``actor_pos=(3, 5)`` where the converter uses the main-actor form and as ``(3, 5)``
elsewhere; descriptions print with double quotes, names with single quotes; numbers print as
Python prints them (``60``, ``-90``, ``0.0``), which is what the converter's strings contain.
Every rendered program parses back to itself (`parse.parse`).
"""

from __future__ import annotations

import math
from typing import Any

from c2a_jax.codeapi.nodes import Actor, Assign, Call, Component, PoseEntry, Program, Statement, Var
from c2a_jax.codeapi.registry import FUNCTIONS, POSE_DICT, VARIABLES, ArgType


class RenderError(ValueError):
    """A structured value that has no text form (unknown function, wrong type, NaN, ...)."""


def quote(text: str, quote_char: str = "'") -> str:
    """A Python string literal using `quote_char`, escaping only what must be escaped.

    For the names and descriptions of real scenes this is the converter's ``'<name>'`` verbatim.
    """
    if not isinstance(text, str):
        raise RenderError(f"expected a string, got {text!r}")
    out = []
    for ch in text:
        if ch == "\\" or ch == quote_char:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return quote_char + "".join(out) + quote_char


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RenderError(f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RenderError(f"non-finite number {value!r} has no code form")
    return repr(value)


def _grid(pos: Any) -> str:
    if (
        not isinstance(pos, tuple)
        or len(pos) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pos)
    ):
        raise RenderError(f"grid position must be a tuple of two ints, got {pos!r}")
    return f"({pos[0]}, {pos[1]})"


def _actor(value: Any, typ: ArgType) -> str:
    if isinstance(value, Var):
        if VARIABLES.get(value.name) is not ArgType.ACTOR_MAIN:
            raise RenderError(f"variable {value.name!r} does not hold an actor")
        return value.name
    if isinstance(value, Call):
        if FUNCTIONS.get(value.name) is None or FUNCTIONS[value.name].returns not in (
            ArgType.ACTOR_MAIN,
            ArgType.ACTOR,
        ):
            raise RenderError(f"{value.name!r} does not return an actor")
        return _call(value)
    if not isinstance(value, Actor):
        raise RenderError(f"expected an actor, got {value!r}")
    text = "get_actor(" + quote(value.name, "'")
    if value.pos is not None:
        text += ", actor_pos=" if typ is ArgType.ACTOR_MAIN else ", "
        text += _grid(value.pos)
    return text + ")"


def _numbers(value: Any, n: int, attr: str) -> str:
    if isinstance(value, Component):
        if value.attr != attr:
            raise RenderError(f"expected .{attr}, got .{value.attr}")
        return render_value(value.pose, ArgType.POSE) + "." + attr
    if not isinstance(value, tuple) or len(value) != n:
        raise RenderError(f"expected {n} numbers, got {value!r}")
    return "[" + ", ".join(_number(v) for v in value) + "]"


def render_value(value: Any, typ: ArgType) -> str:
    """The text of one argument value of declared type `typ`."""
    if typ in (ArgType.ACTOR_MAIN, ArgType.ACTOR):
        return _actor(value, typ)
    if typ is ArgType.ACTOR_LIST:
        if not isinstance(value, tuple):
            raise RenderError(f"expected a tuple of actors, got {value!r}")
        return "[" + ", ".join("(" + _actor(v, ArgType.ACTOR) + ")" for v in value) + "]"
    if typ is ArgType.POSE:
        if isinstance(value, PoseEntry):
            return POSE_DICT + "[" + quote(value.key, "'") + "]"
        if isinstance(value, Var):
            if VARIABLES.get(value.name) is not ArgType.POSE:
                raise RenderError(f"variable {value.name!r} does not hold a pose")
            return value.name
        if isinstance(value, Call) and value.name in FUNCTIONS and FUNCTIONS[value.name].returns is ArgType.POSE:
            return _call(value)
        raise RenderError(f"expected a pose, got {value!r}")
    if typ is ArgType.VEC3:
        return _numbers(value, 3, "p")
    if typ is ArgType.QUAT:
        return _numbers(value, 4, "q")
    if typ is ArgType.NUMBER:
        return _number(value)
    if typ is ArgType.BOOL:
        if not isinstance(value, bool):
            raise RenderError(f"expected a bool, got {value!r}")
        return repr(value)
    if typ is ArgType.STR_SINGLE:
        return quote(value, "'")
    if typ is ArgType.STR_DOUBLE:
        return quote(value, '"')
    raise RenderError(f"no value has type {typ}")


def _call(call: Call) -> str:
    spec = FUNCTIONS.get(call.name)
    if spec is None:
        raise RenderError(f"unknown API function {call.name!r}")
    if call.name == "get_actor":
        raise RenderError("write actors as Actor(name, pos), not Call('get_actor')")
    if len(call.args) != len(spec.positional):
        raise RenderError(f"{call.name}() takes {len(spec.positional)} positional arguments, got {len(call.args)}")
    parts = [render_value(v, t) for v, (_, t) in zip(call.args, spec.positional, strict=True)]
    keys = [k for k, _ in call.kwargs]
    if len(set(keys)) != len(keys):
        raise RenderError(f"{call.name}() has a repeated keyword: {keys}")
    for key, value in call.kwargs:
        typ = spec.keyword_type(key)
        if typ is None:
            raise RenderError(f"{call.name}() has no keyword {key!r}")
        parts.append(f"{key}={render_value(value, typ)}")
    missing = [k for k in spec.required if k not in {k2 for k2, _ in call.kwargs}]
    if missing:
        raise RenderError(f"{call.name}() misses required keyword(s) {missing}")
    return f"{call.name}({', '.join(parts)})"


def render_statement(stmt: Statement) -> str:
    """One statement: an action call or an assignment."""
    if isinstance(stmt, Call):
        spec = FUNCTIONS.get(stmt.name)
        if spec is None or not spec.is_action:
            raise RenderError(f"{stmt.name!r} is not an action and cannot stand as a statement")
        return _call(stmt)
    if isinstance(stmt, Assign):
        if isinstance(stmt.target, PoseEntry):
            return render_value(stmt.target, ArgType.POSE) + " = " + render_value(stmt.value, ArgType.POSE)
        if isinstance(stmt.target, Var) and stmt.target.name in VARIABLES:
            return stmt.target.name + " = " + render_value(stmt.value, VARIABLES[stmt.target.name])
        raise RenderError(f"cannot assign to {stmt.target!r}")
    raise RenderError(f"not a statement: {stmt!r}")


def render(program: Program | Statement) -> str:
    """The code text of a program: one statement per line, joined with newlines (spec 6.4)."""
    if isinstance(program, (Call, Assign)):
        program = (program,)
    if not program:
        raise RenderError("an empty program has no code")
    return "\n".join(render_statement(s) for s in program)
