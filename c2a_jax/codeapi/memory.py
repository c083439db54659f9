"""The VLM's memory of past key-steps and the cache info derived from it (paper Appendix E.3).

The memory buffer holds the key-step lines generated so far in an episode; intermediate
(commented) lines never enter it. `extract_memory_info` is the paper's Algorithm 1: it scans the
buffer for writes to ``pose_dict`` and keeps the latest write of every key, so the low-level
policy sees every stored pose that is still relevant, in one string, at every step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from c2a_jax.codeapi.keysteps import is_keystep

# What the diffusion policy reads when no key-step in memory writes to pose_dict.
NO_CACHE_INFO = "pose_dict = {}"

# `pose_dict['<key>'] = ...` at the start of a line (either quote style; escaped quotes allowed).
_POSE_DICT_WRITE = re.compile(r"""^\s*pose_dict\[\s*(?P<q>['"])(?P<key>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*\]\s*=(?!=)""")


def extract_memory_info(memory: Iterable[str]) -> str:
    """The cache info of a memory buffer: the latest ``pose_dict`` assignment of each key.

    Keys keep the order in which they were first written; each shows its latest assignment line.
    Lines are joined with newlines. Without any assignment the result is `NO_CACHE_INFO`.
    """
    latest: dict[str, str] = {}
    for entry in memory:
        for line in entry.split("\n"):
            match = _POSE_DICT_WRITE.match(line)
            if match:
                latest[match.group("key")] = line.strip()
    return "\n".join(latest.values()) if latest else NO_CACHE_INFO


@dataclasses.dataclass
class MemoryBuffer:
    """Key-step lines of one episode, in order."""

    entries: list[str] = dataclasses.field(default_factory=list)

    def update(self, code: str) -> bool:
        """Append `code` if it is a key-step; return whether it was appended."""
        if is_keystep(code):
            self.entries.append(code.strip())
            return True
        return False

    @property
    def last_keystep(self) -> str | None:
        return self.entries[-1] if self.entries else None

    def past_actions(self) -> str:
        """The memory as the VLM prompt shows it: entries joined with ``"; "`` (spec 6.6)."""
        return "; ".join(self.entries)

    def cache_info(self) -> str:
        return extract_memory_info(self.entries)
