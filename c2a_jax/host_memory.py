"""Back large host buffers with transparent huge pages: glibc's ``hugetlb`` malloc tunable.

Why: XLA's CPU runtime allocates each call's temporary buffer afresh (230 MB for the tiny LLaVA's
training step) from its worker threads. glibc serves a request that large with a fresh ``mmap``
and unmaps it on free, so every step faults the whole buffer in again, 4 KB at a time: 62,000
minor faults and ~90 ms of kernel time per step on 2 cores, 40% of the step (bench/vlm_train.py).
With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` glibc asks for transparent huge pages on those
mappings (the kernel's default ``madvise`` mode grants them): a 2 MB page per fault, the step
falls from ~130 to ~90 ms there. Other allocations, and the input pipeline's threads, are left
alone (a single malloc arena, the other way to keep those pages, halves tf.data's throughput).

glibc reads its tunables once, at process start, so `reexec_with_huge_page_malloc` restarts the
program (same interpreter, same arguments, same pid) with the tunable added; the entry points
call it before anything else; ``python -m c2a_jax.host_memory COMMAND ...`` runs any other
command so (``make test`` runs pytest that way). ``C2A_HUGE_PAGE_MALLOC=0`` turns it off. It
does nothing where it cannot help: not Linux with glibc >= 2.35, or transparent huge pages off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
ENV_SWITCH = "C2A_HUGE_PAGE_MALLOC"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _transparent_huge_pages() -> bool:
    """True unless the kernel's transparent huge pages are off (``[never]``) or absent."""
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_page_malloc_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to restart with, or None when no restart is wanted: the tunable is already
    set, switched off, or would not help on this machine."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        return None  # set already (by us before the restart, or by the user: theirs wins)
    if platform.system() != "Linux" or _glibc_version() < (2, 35) or not _transparent_huge_pages():
        return None
    environ["GLIBC_TUNABLES"] = ":".join([*tunables, TUNABLE])
    return environ


def reexec_with_huge_page_malloc() -> None:
    """Restart this program with glibc's ``hugetlb`` tunable when it is missing and would help
    (see the module docstring); otherwise return at once. Call it first thing in ``__main__``,
    before output or threads: the process image is replaced and starts over."""
    env = huge_page_malloc_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """``python -m c2a_jax.host_memory COMMAND [ARGS...]``: run COMMAND with the tunable added
    (where it helps; unchanged otherwise)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m c2a_jax.host_memory COMMAND [ARGS...]", file=sys.stderr)
        return 2
    os.execvpe(argv[0], argv, huge_page_malloc_env() or dict(os.environ))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
