"""The robot-API code language that both levels of the policy speak.

`render` turns structured calls into the exact strings of ClevrSkills' converter; `parse` turns
model-written text back into structured calls with an `ast` whitelist (never `exec`/`eval`);
`keysteps` and `memory` implement the paper's key-step labels, memory buffer and cache info.
"""

from c2a_jax.codeapi.keysteps import comment, early_stop, is_commented, is_keystep, uncomment
from c2a_jax.codeapi.memory import NO_CACHE_INFO, MemoryBuffer, extract_memory_info
from c2a_jax.codeapi.nodes import Actor, Assign, Call, Component, PoseEntry, Program, Statement, Var
from c2a_jax.codeapi.parse import MAX_CODE_BYTES, CodeParseError, parse, parse_step
from c2a_jax.codeapi.registry import FUNCTIONS, LEVELS, ArgType, FunctionSpec, functions_for
from c2a_jax.codeapi.render import RenderError, render, render_statement

__all__ = [
    "Actor",
    "ArgType",
    "Assign",
    "Call",
    "CodeParseError",
    "Component",
    "FUNCTIONS",
    "FunctionSpec",
    "LEVELS",
    "MAX_CODE_BYTES",
    "MemoryBuffer",
    "NO_CACHE_INFO",
    "PoseEntry",
    "Program",
    "RenderError",
    "Statement",
    "Var",
    "comment",
    "early_stop",
    "extract_memory_info",
    "functions_for",
    "is_commented",
    "is_keystep",
    "parse",
    "parse_step",
    "render",
    "render_statement",
    "uncomment",
]
