"""ClevrSkills tasks: importing this package registers every task (`get_task_class`)."""

from c2a_jax.sim.tasks import (  # noqa: F401  (registration)
    areas,
    balance_scale,
    follow_order,
    novel,
    pick,
    place,
    push,
    rotate,
    sort_stack,
    stack,
    swap,
    throw,
    touch,
)
from c2a_jax.sim.tasks.base import SceneObject, Task, get_task_class, register_task, render_prompt, task_names

__all__ = ["SceneObject", "Task", "get_task_class", "register_task", "render_prompt", "task_names"]
