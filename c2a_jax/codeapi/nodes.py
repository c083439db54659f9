"""Structured robot-API code: the values and statements that render to text and parse back.

A line of code the VLM writes (one key-step) is a `Program`: a tuple of statements, each either
an action call (`pick_move3d_place(...)`) or an assignment (`target_pose = ...`,
`pose_dict['red cube'] = ...`). Values are plain Python data plus the small node classes below,
all frozen so that programs hash and compare by value.

Value kinds:
  * `Actor(name, pos)`        -> ``get_actor('name'[, (x, y)])``
  * `Call(name, args, kwargs)` -> an expression call such as ``get_pose(...)`` or ``rotate_z(...)``
  * `PoseEntry(key)`          -> ``pose_dict['key']``
  * `Component(pose, attr)`   -> ``<pose>.p`` / ``<pose>.q``
  * `Var(name)`               -> ``target_pose`` / ``target_actor``
  * tuples of numbers          -> ``[x, y, z]`` (vectors, quaternions); tuples of actors -> actor lists
  * bool, int, float, str      -> literals
"""

from __future__ import annotations

import dataclasses
from typing import Any

GridPos = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Actor:
    """``get_actor('<name>')``, optionally with its 10x10 grid position in the base camera."""

    name: str
    pos: GridPos | None = None


@dataclasses.dataclass(frozen=True)
class Call:
    """A call of a registered API function; keyword order is kept because rendering is byte-exact."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def kwarg(self, key: str, default: Any = None) -> Any:
        for k, v in self.kwargs:
            if k == key:
                return v
        return default


@dataclasses.dataclass(frozen=True)
class PoseEntry:
    """``pose_dict['<key>']``: the memory of poses that persists across calls within an episode."""

    key: str


@dataclasses.dataclass(frozen=True)
class Component:
    """``<pose>.p`` (position, 3 numbers) or ``<pose>.q`` (quaternion wxyz, 4 numbers)."""

    pose: Any
    attr: str


@dataclasses.dataclass(frozen=True)
class Var:
    """A local variable of one code unit: ``target_pose`` or ``target_actor``."""

    name: str


@dataclasses.dataclass(frozen=True)
class Assign:
    """``<target> = <value>`` where target is a `Var` or a `PoseEntry`."""

    target: Var | PoseEntry
    value: Any


Statement = Call | Assign
Program = tuple[Statement, ...]
