"""Key-steps and their commented form, and the paper's early-stop comparison (section 4.2).

The first step of an API call is its *key-step* and is labelled with the plain code; every later
step of the same call carries the same code commented out, one ``# `` per line. The VLM learns to
write both; the memory keeps key-steps only.
"""

from __future__ import annotations

COMMENT_PREFIX = "# "


def comment(code: str) -> str:
    """The intermediate-step form of a key-step: every line prefixed with ``# ``."""
    return "\n".join(COMMENT_PREFIX + line for line in code.split("\n"))


def is_commented(code: str) -> bool:
    """True when every non-blank line of `code` is a comment (an intermediate step)."""
    lines = [line for line in code.split("\n") if line.strip()]
    return bool(lines) and all(line.lstrip().startswith("#") for line in lines)


def is_keystep(code: str) -> bool:
    """True for plain (non-commented, non-blank) code: the first step of a call."""
    return bool(code.strip()) and not is_commented(code)


def uncomment(code: str) -> str:
    """The key-step a commented line stands for (inverse of `comment`)."""
    out = []
    for line in code.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(COMMENT_PREFIX):
            out.append(stripped[len(COMMENT_PREFIX) :])
        elif stripped.startswith("#"):
            out.append(stripped[1:])
        else:
            out.append(line)
    return "\n".join(out)


def early_stop(partial: str, last_keystep: str | None, k: int) -> str | None:
    """The paper's early stop: once `partial` has k characters that equal the commented last
    key-step's first k characters, decoding can stop and return that commented line.

    Returns the commented last key-step, or None while generation must go on (fewer than k
    characters so far, no key-step in memory, or a mismatch).
    """
    if k < 1:
        raise ValueError(f"early-stop k must be >= 1, got {k}")
    if not last_keystep:
        return None
    target = comment(last_keystep)
    n = min(k, len(target))
    if len(partial) >= n and partial[:n] == target[:n]:
        return target
    return None
