"""Actor references that tell same-named actors apart by their base-camera grid cell (spec 6.3).

Code names an actor by its name (`get_actor('red cube')`), and some scenes hold two actors of one
name (RotateSymmetry's two objects of one colour may share a shape; NovelAdjective's main object and
its normal-size twin always do). ClevrSkills' converter can add the actor's 10x10 grid cell in the
base camera (`get_actor('red cube', actor_pos=(3, 5))`), and the executor picks the actor nearest to
that cell. The oracle recorder adds the cell to a trace's actor references, `[name, id]` ->
`[name, id, [gx, gy]]`, exactly where the name alone is ambiguous, so unambiguous scenes keep the
converter's default labels (no positions) and ambiguous ones get labels that run as intended.
"""

from __future__ import annotations

import numpy as np

REF_KEYS = ("actor", "target_actor", "area_actor")  # action-state fields holding one actor reference
REF_LIST_KEYS = ("actors", "store_pose")  # fields holding a list of them


def grid_position(env, obj) -> tuple[int, int]:
    """The actor's 10x10 base-camera grid cell (spec 6.3), (-1, -1) when it is not in view."""
    box = env.bounding_boxes().get(obj.key)
    if box is None or box[0, 0] < 0:
        return (-1, -1)
    size = float(env.image_size)
    gx = int(np.round((box[0, 0] + box[1, 0]) / 2 / size * 10))
    gy = int(np.round((box[0, 1] + box[1, 1]) / 2 / size * 10))
    return gx, gy


def ambiguous_actors(env) -> dict[int, object]:
    """Task actors on the table whose name another one on the table shares, by id."""
    on_table = [o for o in env.task.task_actors() if float(o.pose().p[2]) > -1.0]
    names = [o.name for o in on_table]
    return {o.id: o for o in on_table if names.count(o.name) > 1}


def with_grid_positions(trace: list[dict], env) -> list[dict]:
    """`trace` with the current grid cell appended to every reference of an ambiguous actor."""
    ambiguous = ambiguous_actors(env)
    if not ambiguous:
        return trace

    def mark(ref):
        if isinstance(ref, (list, tuple)) and len(ref) == 2 and ref[1] in ambiguous:
            return [ref[0], ref[1], list(grid_position(env, ambiguous[ref[1]]))]
        return ref

    out = []
    for state in trace:
        state = dict(state)
        for k in REF_KEYS:
            if state.get(k) is not None:
                state[k] = mark(state[k])
        for k in REF_LIST_KEYS:
            if state.get(k):
                state[k] = [mark(r) for r in state[k]]
        out.append(state)
    return out
