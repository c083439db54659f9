"""Code text -> structured calls, with Python's `ast` and a whitelist. Nothing is ever executed.

Generated code is untrusted: it comes from a model. `parse` only builds an abstract syntax tree
(`ast.parse`, which compiles nothing and runs nothing) and then accepts exactly the grammar of the
registry: registered function names with their declared keywords, literals of the declared types,
``get_actor('...')``, ``get_pose(...)``, ``pose_dict['...']``, ``Pose(...)``, ``.p``/``.q``, and
assignments to ``target_pose``, ``target_actor`` and ``pose_dict['...']``. Everything else raises
`CodeParseError` naming the offending characters and the reason. Any input string, however
hostile, gives either a `Program` or a `CodeParseError`.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from c2a_jax.codeapi import keysteps
from c2a_jax.codeapi.nodes import Actor, Assign, Call, Component, PoseEntry, Program, Var
from c2a_jax.codeapi.registry import (
    ACTOR_TYPES,
    LEVELS,
    POSE_ATTRIBUTES,
    POSE_DICT,
    VARIABLES,
    ArgType,
    FunctionSpec,
    functions_for,
)

MAX_CODE_BYTES = 4096  # longer text is refused before it reaches the parser
MAX_DEPTH = 8  # the deepest legal expression (rotate_z(Pose(pose_dict[k].p, ...))) is 5
MAX_ABS_NUMBER = 1e9  # numbers in the API are angles, grid cells and unit vectors
# On a syntax error CPython tries to read the offending line from the "file" being parsed; a path
# under /dev/null can never exist, so that read fails at once and reads nothing.
SOURCE_NAME = "/dev/null/generated-code"

_NOT_ALLOWED = {
    ast.Import: "imports are not allowed",
    ast.ImportFrom: "imports are not allowed",
    ast.Lambda: "lambda expressions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.FunctionDef: "function definitions are not allowed",
    ast.AsyncFunctionDef: "function definitions are not allowed",
    ast.ClassDef: "class definitions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.Starred: "star arguments are not allowed",
    ast.BinOp: "operators are not allowed",
    ast.BoolOp: "operators are not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Slice: "slices are not allowed",
}


class CodeParseError(ValueError):
    """Generated text that is not a valid robot-API program.

    `span` is the (start, end) character range of the offending text, `reason` says why.
    """

    def __init__(self, reason: str, span: tuple[int, int] = (0, 0), text: str = ""):
        self.reason = reason
        self.span = span
        snippet = text[span[0] : span[1]] if isinstance(text, str) else ""
        if len(snippet) > 60:
            snippet = snippet[:57] + "..."
        super().__init__(f"{reason} (characters {span[0]}-{span[1]}: {snippet!r})")


class _Parser:
    def __init__(self, text: str, level: str | None):
        self.text = text
        self.functions = functions_for(level)
        self.level = level
        self.defined: set[str] = set()
        self._starts: list[int] | None = None

    @property
    def _line_starts(self) -> list[int]:
        """Character offset of each line's start; computed only when an error needs a span."""
        if self._starts is None:
            self._starts = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]
        return self._starts

    # --- error reporting ----------------------------------------------------------------------
    def _offset(self, lineno: int | None, col_bytes: int | None) -> int:
        if not lineno or lineno < 1:
            return 0
        lineno = min(lineno, len(self._line_starts))
        start = self._line_starts[lineno - 1]
        end = self._line_starts[lineno] - 1 if lineno < len(self._line_starts) else len(self.text)
        line = self.text[start:end]
        col = len(line.encode("utf-8", "surrogatepass")[: max(col_bytes or 0, 0)].decode("utf-8", "ignore"))
        return start + col

    def error(self, node: ast.AST | None, reason: str) -> CodeParseError:
        if node is None or not hasattr(node, "lineno"):
            return CodeParseError(reason, (0, len(self.text)), self.text)
        start = self._offset(node.lineno, node.col_offset)
        end = self._offset(node.end_lineno, node.end_col_offset)
        return CodeParseError(reason, (start, max(start, end)), self.text)

    def reject(self, node: ast.AST, expected: str) -> CodeParseError:
        for typ, reason in _NOT_ALLOWED.items():
            if isinstance(node, typ):
                return self.error(node, reason)
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            return self.error(node, f"dunder name {node.id!r} is not allowed")
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("__"):
                return self.error(node, f"dunder attribute {node.attr!r} is not allowed")
            return self.error(node, f"attribute access is limited to .p and .q; got .{node.attr}")
        if isinstance(node, ast.Name):
            if node.id in self.functions or expected == "an API function name":
                return self.error(
                    node,
                    f"unknown function {node.id!r}" if node.id not in self.functions else f"{node.id} must be called",
                )
            return self.error(node, f"unknown name {node.id!r}; expected {expected}")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in self.functions:
                return self.error(node, f"{func.id}() does not give {expected}")
            return self.reject(func, "an API function name")
        return self.error(node, f"expected {expected}, got {type(node).__name__.lower()}")

    # --- statements ---------------------------------------------------------------------------
    def program(self, module: ast.Module) -> Program:
        statements = []
        for stmt in module.body:
            if isinstance(stmt, ast.Expr):
                if not isinstance(stmt.value, ast.Call):
                    raise self.reject(stmt.value, "an API call")
                call = self.call(stmt.value, 0)
                if not isinstance(call, Call) or not self.functions[call.name].is_action:
                    name = stmt.value.func.id  # self.call() accepted it, so it is a registered name
                    raise self.error(stmt, f"{name}() has no effect as a statement")
                statements.append(call)
            elif isinstance(stmt, ast.Assign):
                statements.append(self.assign(stmt))
            else:
                raise self.error(
                    stmt, _NOT_ALLOWED.get(type(stmt), f"{type(stmt).__name__} statements are not allowed")
                )
        if not statements:
            raise CodeParseError("no code", (0, len(self.text)), self.text)
        return tuple(statements)

    def assign(self, stmt: ast.Assign) -> Assign:
        if len(stmt.targets) != 1:
            raise self.error(stmt, "chained assignment is not allowed")
        target = stmt.targets[0]
        if isinstance(target, ast.Name):
            if target.id not in VARIABLES:
                raise self.error(target, f"cannot assign to {target.id!r}; only {sorted(VARIABLES)} and pose_dict[...]")
            value = self.value(stmt.value, VARIABLES[target.id], 0)
            self.defined.add(target.id)
            return Assign(Var(target.id), value)
        if isinstance(target, ast.Subscript):
            return Assign(self.pose_entry(target), self.value(stmt.value, ArgType.POSE, 0))
        raise self.error(target, "only target_pose, target_actor and pose_dict[...] can be assigned")

    # --- expressions --------------------------------------------------------------------------
    def pose_entry(self, node: ast.Subscript) -> PoseEntry:
        if not (isinstance(node.value, ast.Name) and node.value.id == POSE_DICT):
            raise self.error(node, "only pose_dict can be subscripted")
        key = node.slice
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise self.error(key, "pose_dict keys must be string literals")
        return PoseEntry(key.value)

    def number(self, node: ast.AST, integer: bool = False) -> int | float:
        sign = 1
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            sign = -1 if isinstance(node.op, ast.USub) else 1
            node = node.operand
        if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
            raise self.reject(node, "an integer" if integer else "a number")
        value = node.value
        if integer and not isinstance(value, int):
            raise self.error(node, "expected an integer")
        if not isinstance(value, (int, float)):
            raise self.error(node, "expected a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, "number is not finite")
        if abs(value) > MAX_ABS_NUMBER:
            raise self.error(node, "number out of range")
        return -value if sign < 0 else value

    def numbers(self, node: ast.AST, typ: ArgType, depth: int) -> Any:
        n, attr = (3, "p") if typ is ArgType.VEC3 else (4, "q")
        if isinstance(node, ast.Attribute):
            if node.attr != attr:
                raise (
                    self.reject(node, f"a {typ.value}")
                    if node.attr not in POSE_ATTRIBUTES
                    else self.error(node, f"expected .{attr}, got .{node.attr}")
                )
            return Component(self.value(node.value, ArgType.POSE, depth + 1), attr)
        if not isinstance(node, ast.List):
            raise self.reject(node, f"a list of {n} numbers")
        if len(node.elts) != n:
            raise self.error(node, f"expected {n} numbers, got {len(node.elts)}")
        return tuple(self.number(e) for e in node.elts)

    def value(self, node: ast.AST, typ: ArgType, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(node, "nesting deeper than the grammar allows")
        if typ in ACTOR_TYPES:
            if isinstance(node, ast.Name) and VARIABLES.get(node.id) is ArgType.ACTOR_MAIN:
                return self.variable(node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                spec = self.functions.get(node.func.id)
                if spec is not None and spec.returns in ACTOR_TYPES:
                    return self.call(node, depth)
            raise self.reject(node, "an actor")
        if typ is ArgType.ACTOR_LIST:
            if not isinstance(node, ast.List):
                raise self.reject(node, "a list of actors")
            return tuple(self.value(e, ArgType.ACTOR, depth + 1) for e in node.elts)
        if typ is ArgType.POSE:
            if isinstance(node, ast.Subscript):
                return self.pose_entry(node)
            if isinstance(node, ast.Name) and VARIABLES.get(node.id) is ArgType.POSE:
                return self.variable(node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                spec = self.functions.get(node.func.id)
                if spec is not None and spec.returns is ArgType.POSE:
                    return self.call(node, depth)
            raise self.reject(node, "a pose")
        if typ in (ArgType.VEC3, ArgType.QUAT):
            return self.numbers(node, typ, depth)
        if typ is ArgType.NUMBER:
            return self.number(node)
        if typ is ArgType.BOOL:
            if isinstance(node, ast.Constant) and isinstance(node.value, bool):
                return node.value
            raise self.reject(node, "True or False")
        if typ in (ArgType.STR_SINGLE, ArgType.STR_DOUBLE):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            raise self.reject(node, "a string literal")
        raise self.error(node, f"no value has type {typ}")

    def variable(self, node: ast.Name) -> Var:
        if node.id not in self.defined:
            raise self.error(node, f"{node.id!r} is used before it is assigned")
        return Var(node.id)

    def grid(self, node: ast.AST) -> tuple[int, int]:
        if not isinstance(node, ast.Tuple) or len(node.elts) != 2:
            raise self.reject(node, "a grid position (x, y)")
        return (self.number(node.elts[0], integer=True), self.number(node.elts[1], integer=True))

    def actor(self, node: ast.Call) -> Actor:
        if not 1 <= len(node.args) <= 2:
            raise self.error(node, "get_actor() takes a name and an optional grid position")
        name = node.args[0]
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            raise self.reject(name, "an actor name string")
        pos = self.grid(node.args[1]) if len(node.args) == 2 else None
        for kw in node.keywords:
            if kw.arg != "actor_pos" or pos is not None:
                raise self.error(kw, "get_actor() accepts only one grid position, as (x, y) or actor_pos=(x, y)")
            pos = self.grid(kw.value)
        return Actor(name.value, pos)

    def call(self, node: ast.Call, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(node, "nesting deeper than the grammar allows")
        func = node.func
        if not isinstance(func, ast.Name):
            raise self.error(func, "only plain API function names can be called")
        spec: FunctionSpec | None = self.functions.get(func.id)
        if spec is None:
            if func.id.startswith("__"):
                raise self.error(func, f"dunder name {func.id!r} is not allowed")
            where = "" if self.level is None else f" at level {self.level}"
            raise self.error(func, f"unknown function {func.id!r}{where}")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "star arguments are not allowed")
        for kw in node.keywords:
            if kw.arg is None:
                raise self.error(kw, "** arguments are not allowed")
        if spec.name == "get_actor":
            return self.actor(node)
        if len(node.args) != len(spec.positional):
            raise self.error(
                node, f"{spec.name}() takes {len(spec.positional)} positional argument(s), got {len(node.args)}"
            )
        args = tuple(self.value(a, t, depth + 1) for a, (_, t) in zip(node.args, spec.positional, strict=True))
        kwargs = []
        for kw in node.keywords:
            typ = spec.keyword_type(kw.arg)
            if typ is None:
                raise self.error(kw, f"{spec.name}() has no keyword {kw.arg!r}")
            if any(k == kw.arg for k, _ in kwargs):
                raise self.error(kw, f"{spec.name}() got keyword {kw.arg!r} twice")
            kwargs.append((kw.arg, self.value(kw.value, typ, depth + 1)))
        missing = [k for k in spec.required if k not in {k2 for k2, _ in kwargs}]
        if missing:
            raise self.error(node, f"{spec.name}() misses required keyword(s) {', '.join(missing)}")
        return Call(spec.name, args, tuple(kwargs))


def parse(text: str, level: str | None = None) -> Program:
    """Parse code text into a `Program`; raise `CodeParseError` for anything outside the grammar.

    `level` restricts the functions to one label granularity ('level1' or 'fine'); None admits both.
    """
    if level is not None and level not in LEVELS:
        raise ValueError(f"unknown code level {level!r}; expected one of {LEVELS}")
    if not isinstance(text, str):
        raise CodeParseError(f"code must be a str, got {type(text).__name__}")
    if len(text) > MAX_CODE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise CodeParseError(f"code longer than {MAX_CODE_BYTES} bytes", (0, len(text)), text)
    parser = _Parser(text, level)
    try:
        module = ast.parse(text, filename=SOURCE_NAME, mode="exec")
    except SyntaxError as e:
        start = parser._offset(e.lineno, None) + max((e.offset or 1) - 1, 0)
        start = min(start, len(text))
        end = min(max(start + 1, parser._offset(e.end_lineno, None) + max((e.end_offset or 1) - 1, 0)), len(text))
        raise CodeParseError(f"syntax error: {e.msg}", (start, end), text) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise CodeParseError(f"unparseable code: {type(e).__name__}", (0, len(text)), text) from None
    try:
        return parser.program(module)
    except RecursionError:
        raise CodeParseError("nesting deeper than the grammar allows", (0, len(text)), text) from None


def parse_step(text: str, level: str | None = None) -> tuple[Program, bool]:
    """Parse one step's label, commented (intermediate step) or not: returns (program, is_keystep)."""
    if isinstance(text, str) and keysteps.is_commented(text):
        return parse(keysteps.uncomment(text), level), False
    return parse(text, level), True
