"""The oracle's code for the state a learned policy has reached: Oracle+DP's code writer.

Why: Oracle+DP isolates the low level the way VLM+Oracle isolates the high level. A diffusion
policy drives the robot, and at every step the task's scripted solver says which call it would be
running from the current state, at the fine granularity the policy was trained on: the plain line
on the step a call begins, its commented form after (`c2a_jax.codeapi.trace.EpisodeLabeler`, the
recorder's own labelling). The solver is stepped every control step and its action is thrown
away: its sub-solvers finish on the state they observe (a move ends when the hand is at the
target, a pick when the object is held), so it follows whatever the policy does, as a label
source, never as an actor.
"""

from __future__ import annotations

from c2a_jax.codeapi import comment
from c2a_jax.codeapi.trace import EpisodeLabeler
from c2a_jax.sim.grid_refs import with_grid_positions
from c2a_jax.sim.rollout import json_trace


class ShadowOracle:
    """One episode's solver beside a learned policy: `code(success)` each step, in step order."""

    def __init__(self, env):
        self.env = env
        self.solver = env.task.solver()
        self.labeler = EpisodeLabeler()

    def code(self, success: bool) -> str:
        """The fine-level line of the current step (plain on a key-step, else commented); the
        solver's action for this state is computed and discarded."""
        if not success:
            self.solver.step()
        trace = with_grid_positions(json_trace(self.solver.trace()), self.env)
        label = self.labeler.label(trace, success_before=success)
        return label.fine if label.fine_keystep else comment(label.fine)

    def close(self) -> None:
        """Undo what the solver set outside its actions (`AbstractSolver.stop`)."""
        self.solver.stop()
