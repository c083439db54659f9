"""Render -> parse round trips for every registered call, and hostile input that must never run.

Round trips: hypothesis builds random well-typed programs from the registry itself (every action,
every keyword, nested pose expressions, odd strings), renders them and parses them back.
Hostility: over 10,000 generated strings (random text, mutated valid code, Python fragments that
reach for the interpreter) must each give a `Program` or a `CodeParseError`, nothing else, while an
audit hook records that nothing was executed, imported, opened or spawned.
"""

import ast
import pathlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2a_jax.codeapi import (
    FUNCTIONS,
    LEVELS,
    Actor,
    ArgType,
    Assign,
    Call,
    CodeParseError,
    Component,
    PoseEntry,
    Var,
    functions_for,
    parse,
    parse_step,
    render,
)
from c2a_jax.codeapi.parse import MAX_CODE_BYTES, SOURCE_NAME

# ---------------------------------------------------------------------------------------------
# Strategies that build well-typed values from the registry.

names = st.text(min_size=1, max_size=12)
grid = st.tuples(st.integers(-1, 10), st.integers(-1, 10))
numbers = st.one_of(
    st.integers(-100_000, 100_000),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)


def value_of(typ, level, depth, defined):
    """A strategy for values of `typ` usable at `level`, with at most `depth` more nesting."""
    fns = functions_for(level)
    if typ in (ArgType.ACTOR_MAIN, ArgType.ACTOR):
        options = [st.builds(Actor, names, st.none() | grid)]
        if "target_actor" in defined:
            options.append(st.just(Var("target_actor")))
        if depth > 0:
            options.append(call_of(fns["get_supporting_actor"], level, depth - 1, defined))
        return st.one_of(options)
    if typ is ArgType.ACTOR_LIST:
        return st.lists(value_of(ArgType.ACTOR, level, depth, defined), max_size=4).map(tuple)
    if typ is ArgType.POSE:
        options = [st.builds(PoseEntry, names)]
        if "target_pose" in defined:
            options.append(st.just(Var("target_pose")))
        if depth > 0:
            options += [call_of(s, level, depth - 1, defined) for s in fns.values() if s.returns is ArgType.POSE]
        return st.one_of(options)
    if typ in (ArgType.VEC3, ArgType.QUAT):
        n, attr = (3, "p") if typ is ArgType.VEC3 else (4, "q")
        options = [st.lists(numbers, min_size=n, max_size=n).map(tuple)]
        if depth > 0:
            options.append(value_of(ArgType.POSE, level, depth - 1, defined).map(lambda p: Component(p, attr)))
        return st.one_of(options)
    if typ is ArgType.NUMBER:
        return numbers
    if typ is ArgType.BOOL:
        return st.booleans()
    if typ in (ArgType.STR_SINGLE, ArgType.STR_DOUBLE):
        return st.text(max_size=12)
    raise AssertionError(typ)


@st.composite
def call_of(draw, spec, level, depth, defined):
    args = tuple(draw(value_of(t, level, depth, defined)) for _, t in spec.positional)
    keys = [k for k, _ in spec.keywords]
    chosen = [k for k in keys if k in spec.required or draw(st.booleans())]
    chosen = draw(st.permutations(chosen))
    types = dict(spec.keywords)
    kwargs = tuple((k, draw(value_of(types[k], level, depth, defined))) for k in chosen)
    return Call(spec.name, args, kwargs)


@st.composite
def programs(draw, level, action=None):
    """A program: optional assignments, then one action (`action` fixes which)."""
    fns = functions_for(level)
    defined: set[str] = set()
    statements = []
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(["target_pose", "target_actor", "pose_dict"]))
        if target == "pose_dict":
            statements.append(
                Assign(draw(st.builds(PoseEntry, names)), draw(value_of(ArgType.POSE, level, 3, defined)))
            )
        else:
            typ = ArgType.POSE if target == "target_pose" else ArgType.ACTOR_MAIN
            statements.append(Assign(Var(target), draw(value_of(typ, level, 3, defined))))
            defined.add(target)
    actions = [s for s in fns.values() if s.is_action]
    spec = fns[action] if action else draw(st.sampled_from(actions))
    statements.append(draw(call_of(spec, level, 3, defined)))
    return tuple(statements)


ACTIONS = [(level, name) for level in LEVELS for name, s in functions_for(level).items() if s.is_action]


@pytest.mark.parametrize("level,action", ACTIONS, ids=[f"{lv}-{a}" for lv, a in ACTIONS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_render_parse_round_trip(level, action, data):
    program = data.draw(programs(level, action))
    text = render(program)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        with pytest.raises(CodeParseError, match="longer than"):
            parse(text, level)
        return
    parsed = parse(text, level)
    assert parsed == program
    assert render(parsed) == text


def test_every_registered_function_is_covered_by_the_round_trip():
    reachable = {name for _, name in ACTIONS}
    reachable |= {n for n, s in FUNCTIONS.items() if not s.is_action}  # expressions nest inside actions
    assert reachable == set(FUNCTIONS)


# ---------------------------------------------------------------------------------------------
# Hostile input.

_DANGEROUS_EVENTS = (
    "exec",
    "import",
    "open",
    "os.",
    "subprocess.",
    "socket.",
    "shutil.",
    "ctypes",
    "pickle",
    "marshal",
)
_audit = {"armed": False, "events": []}


def _hook(event, args):
    if event == "open" and args and args[0] == SOURCE_NAME:
        return  # CPython's syntax-error report looks for the source file, which cannot exist
    if _audit["armed"] and event.startswith(_DANGEROUS_EVENTS):
        _audit["events"].append((event, repr(args)[:200]))


sys.addaudithook(_hook)


def check_safe(text, level=None):
    """`text` parses or raises CodeParseError, and nothing runs meanwhile."""
    _audit["armed"], _audit["events"] = True, []
    _audit["count"] = _audit.get("count", 0) + 1
    try:
        try:
            program = parse(text, level)
        except CodeParseError as e:
            assert 0 <= e.span[0] <= e.span[1] <= max(len(text), 0) or e.span == (0, 0)
            assert e.reason
            program = None
    finally:
        _audit["armed"] = False
    assert _audit["events"] == [], f"parsing had effects: {_audit['events']}"
    if program is not None:  # anything accepted is well-formed and renders back to valid code
        assert parse(render(program), level) == program
    return program


ATTACKS = [
    "__import__('os').system('x')",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd')",
    "open('/etc/passwd').read()",
    "exec('print(1)')",
    "eval('1+1')",
    "compile('1', 'x', 'exec')",
    "import os",
    "from os import system",
    "lambda: 0",
    "[x for x in range(10)]",
    "pick(actor=get_actor('a').__class__)",
    "pick(actor=get_actor('a')).__globals__",
    "get_actor.__globals__['os']",
    "pick(actor=get_actor(__name__))",
    "pick(**{'actor': get_actor('a')})",
    "pick(*[get_actor('a')])",
    "pose_dict.clear()",
    "pose_dict['a'].p.__class__",
    "target_pose = pose_dict",
    "x = 1",
    "globals()['pose_dict']",
    "getattr(get_actor('a'), '__class__')",
    "pick(actor=get_actor(f'{open(1)}'))",
    "pick(actor=get_actor('a' + 'b'))",
    "rotate_z(get_pose(actor=get_actor('a')), 10**100000)",
    "rotate_z(get_pose(actor=get_actor('a')), 1e999)",
    "pick(actor=get_actor('a')) if True else done()",
    "while True: pass",
    "def f(): pass",
    "class A: pass",
    "del pose_dict['a']",
    "pose_dict['a'] += 1",
    "with open('x') as f: pass",
    "try:\n  done()\nexcept: pass",
    "assert False",
    "raise SystemExit",
    "global pose_dict",
    "async def f(): pass",
    "done(); __import__('os')",
    "done()\n__builtins__",
    "(yield)",
    "pose_dict[open('x')] = get_pose(actor=get_actor('a'))",
    "target_pose = target_pose",
    "pick(actor=target_actor)",
    "pick(actor=get_actor('a'), actor=get_actor('b'))",
    "\x00",
    "done()\x00",
    "\ud800",
    "'\ud800'",
    "done(" + "(" * 500 + ")" * 500 + ")",
    "-" * 3000 + "1",
    "not " * 1000 + "done()",
    "rotate_z(" * 60 + "pose_dict['a']" + ", 1)" * 60,
    "a" + ".b" * 1500,
    "[" * 150 + "]" * 150,
    "pick(actor=get_actor('" + "x" * 5000 + "'))",
    "done()\n" * 1000,
]


@pytest.mark.parametrize("text", ATTACKS, ids=range(len(ATTACKS)))
def test_attacks_are_refused_without_effect(text):
    assert check_safe(text) is None


def test_one_megabyte_input_is_refused_quickly():
    import time

    text = "x" * (1 << 20)
    big = ("pick(actor=get_actor('a'))\n" * 40000)[: 1 << 20]
    for t in (text, big):
        start = time.perf_counter()
        with pytest.raises(CodeParseError, match="longer than 4096 bytes"):
            parse(t)
        assert time.perf_counter() - start < 0.5


def test_non_string_input_is_a_parse_error():
    for value in (None, b"done()", 3, ["done()"]):
        with pytest.raises(CodeParseError, match="must be a str"):
            parse(value)


def test_error_span_points_at_the_offending_text():
    text = "pick(actor=get_actor('a'))\ntouch(actor=get_actor('ä'), topple=__import__('os'))"
    with pytest.raises(CodeParseError) as info:
        parse(text)
    start, end = info.value.span
    assert text[start:end] == "__import__"
    assert "dunder" in info.value.reason


def test_unknown_keyword_and_missing_required_keyword():
    with pytest.raises(CodeParseError, match="has no keyword 'speed'"):
        parse("pick(actor=get_actor('a'), speed=3)")
    with pytest.raises(CodeParseError, match="misses required keyword"):
        parse("pick()")
    with pytest.raises(CodeParseError, match="used before it is assigned"):
        parse("pick_move3d_place(actor=get_actor('a'), target_pose=target_pose)")
    with pytest.raises(CodeParseError, match="has no effect"):
        parse("get_pose(actor=get_actor('a'))")
    with pytest.raises(CodeParseError, match="get_actor\\(\\) has no effect"):
        parse("get_actor('os')")
    with pytest.raises(CodeParseError, match="no code"):
        parse("# pick(actor=get_actor('a'))")


def test_parse_step_tells_keysteps_from_intermediate_steps():
    code = "pose_dict['a'] = get_pose(actor=get_actor('a'))\nmove3d(target_actor=get_actor('a'))"
    program, is_key = parse_step(code, "fine")
    assert is_key and len(program) == 2
    from c2a_jax.codeapi import comment

    program2, is_key2 = parse_step(comment(code), "fine")
    assert not is_key2 and program2 == program


python_fragments = st.sampled_from(
    [
        "__import__",
        "('os')",
        ".system",
        "('x')",
        "().__class__",
        ".__bases__",
        "open",
        "('/etc/passwd')",
        "exec",
        "eval",
        "compile",
        "lambda x: x",
        "[i for i in ()]",
        "import os",
        "get_actor",
        "('red cube')",
        "pick",
        "(actor=",
        ")",
        "(",
        "pose_dict",
        "['a']",
        ".p",
        ".q",
        " = ",
        "\n",
        "; ",
        "Pose(",
        "[1, 2, 3]",
        "rotate_z(",
        ", 90",
        "**",
        "*",
        "'",
        '"',
        "#",
        "\\",
        "globals()",
        "getattr",
        "__builtins__",
        "-",
        "1e999",
        "True",
        "None",
        "...",
        "{",
        "}",
        "done()",
        "target_pose",
        "target_actor",
        ":",
        "@",
        "await ",
        "yield ",
    ]
)


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_never_escapes(text):
    check_safe(text)


@settings(max_examples=3500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(python_fragments, max_size=30).map("".join))
def test_python_fragments_never_escape(text):
    check_safe(text)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_valid_code_never_escapes(data):
    level = data.draw(st.sampled_from(LEVELS))
    text = render(data.draw(programs(level)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + data.draw(st.text(max_size=6) | python_fragments) + text[j:]
    check_safe(text, data.draw(st.sampled_from((None, level))))


def test_library_never_calls_exec_eval_or_compile():
    """No module of the library calls exec, eval or compile (ast.parse is the only parser used)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "c2a_jax"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"exec", "eval", "compile"}
            ):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def test_over_ten_thousand_hostile_strings_were_checked():
    """Runs last in this file: the generated-input tests above checked at least 10,000 strings."""
    if _audit.get("count", 0) < len(ATTACKS):
        pytest.skip("run the whole file to count the hostile strings")
    assert _audit["count"] >= 10_000 + len(ATTACKS)
