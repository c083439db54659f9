"""Executes parsed robot-API code against the live simulator with the oracle's own solvers.

This is the "Oracle" half of the paper's VLM+Oracle mode (section 4.2, "Efficient Inference"): the
VLM writes one key-step line, and the line is carried out by the scripted ClevrSkills solvers it
names (`c2a_jax.sim.solvers`), exactly as the oracle would have carried it out had it chosen that
call itself. Code is never run: `c2a_jax.codeapi.parse` turns the text into a `Program` of plain
data, and this module interprets that data against a fixed table of meanings.

One code unit (one query's answer) is ``<assignment>* <action>?``: assignments to ``target_pose``,
``target_actor`` (local to the unit) and ``pose_dict['<key>']`` (the episode's memory of poses, which
persists across units: a later write of a key replaces the earlier one, as in
`codeapi.memory.extract_memory_info`), then at most one action call, which runs until it finishes.

Meanings (one per function, whichever code granularity wrote it; see `codeapi.registry`):

  expressions   get_actor('name'[, (gx, gy)]) -> the task actor of that name (the labeller's naming:
                `SceneObject.name`); the grid position picks among actors of the same name by
                their base-camera bounding box, as spec 6.3 computes it. An actor held by the
                gripper comes first (a carried actor changes cells); where the cell leaves a tie
                (no position, or two actors in one cell: the 10x10 grid is coarse along the
                camera's line of sight), one that no earlier call acted on comes first: a second
                identical "rotate the cyan hexagon" means the other cyan hexagon (RotateSymmetry). An
                ``actor`` and ``target_actor`` of one name stand for two such actors
                (`_split_same_name`; SortStack).
                get_pose(actor) -> its current pose; rotate_z(pose, deg) -> the pose turned about
                world z; Pose(p, q); pose.p / pose.q; free_space(actor) -> a free table position;
                free_space_next_to(actor, next_to_actor, direction, description) -> a feasible
                point of the `NextTo` area (the PlaceNextTo oracle's choice, spec 5.2).
  level-1       pick_move3d_place (lift only / onto target_actor / to target_pose) ->
                `PickMove3dPlaceSolver`, as the top-level `Solver` builds it for the matching
                predicate; touch -> `Move3dTouchSolver`; push -> `PushSolver` (towards
                target_actor: to the midpoint of the two actors, as the Push task's oracle);
                topple_structure -> `ToppleStructure`; hit(actor, target_actor, target_2d,
                topple_target) -> `PickMove3dThrowSolver` (pick up, wind up, throw; its goal is
                `HitPredicate`); balance_scale -> `BalanceScaleSolver` over the listed blocks
                (repeated names stand for distinct blocks of that name).
  fine          move3d (approach above target_actor and whatever stands on it, keeping the tool's
                orientation / carry the grasped actor to above target_actor or to target_pose /
                hold it lifted / retreat upwards) -> `Move3dSolver`; pick -> `PickSolver`;
                place -> `PlaceSolver` / `PlaceOnActorSolver`; touch and push as above; throw (the
                grasped actor at target_actor) -> `PickMove3dThrowSolver` from winding up on.
  done()        ends the episode.

When a call ends (`ExecutionResult.outcome`): the task succeeded ("task_success", with
``stop_on_success``); the call's goal predicate, the one the top-level `Solver` would be waiting on
for this call (`PickPredicate`, `OnTop`, `AtPosition`, `TouchPredicate`, `DirectionPushed`,
`AtPositionPushed`, `ToppleStructurePredicate`, `HitPredicate`, `BalanceScale`), is met ("goal_met"); the solver reports done, and, where there is a
goal, the scene had `settle_steps` steps to satisfy it ("finished"); an actor the call carries was
lost ("aborted"); or the call ran out of steps ("timed_out").

Anything that cannot run (an unknown object, a value of the wrong type, a function this port has no
solver for, an action invalid in the current state such as placing an actor that is not held, a
target out of reach) is a logged no-op: `ExecutionResult(ok=False, error=...)` with zero steps and
``pose_dict`` unchanged. A solver or the simulator failing mid-call gives kind "error" with the steps
taken so far. `Executor.execute` never raises.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import sapien

from c2a_jax.codeapi import keysteps
from c2a_jax.codeapi.nodes import Actor, Assign, Call, Component, PoseEntry, Var
from c2a_jax.codeapi.parse import CodeParseError, parse
from c2a_jax.codeapi.registry import FUNCTIONS
from c2a_jax.sim import grid_refs, placement
from c2a_jax.sim import predicates as P
from c2a_jax.sim import robot as robot_lib
from c2a_jax.sim.solvers.base import AbstractSolver, Move3dSolver, quat_mul, quat_z
from c2a_jax.sim.solvers.pick_place import PickMove3dPlaceSolver, PickSolver, PlaceOnActorSolver, PlaceSolver
from c2a_jax.sim.solvers.push import PushSolver
from c2a_jax.sim.solvers.top import PUSH_RETRIES
from c2a_jax.sim.solvers.touch import Move3dTouchSolver

logger = logging.getLogger(__name__)

# Control steps one call may take. The oracle gives a level-1 solver no limit but the episode's
# (1000 steps), and some L0 calls need ~600 (Touch push, seed 12), so by default neither do we:
# a caller that wants the writer to get another chance sooner passes a smaller limit.
CALL_STEP_LIMIT = 1000
SETTLE_STEPS = 30  # steps a finished solver keeps holding while its goal predicate settles
PLACE_LIFT = 0.03  # PickMove3dPlaceSolver's default lift / drop distance (spec 5.3)
PICK_LIFT = 0.1  # PickSolver's lift height, as for the Pick task (spec 5.4)
RETREAT_UP = 0.1  # a bare move3d() lifts the tool this much (Move3dTouchSolver's retreat)
MAX_TOOL_Z = 0.5
# Where a target pose may lie: horizontal distance from the robot base, and height above the table.
REACH_XY = (0.2, 0.85)
REACH_Z = (-0.02, 0.6)

UNSUPPORTED = {
    "get_actor_pose": "needs a reference image (multimodal prompts are not supported)",
    "get_supporting_actor": "needs a reference image (multimodal prompts are not supported)",
}


class InvalidCall(Exception):
    """A code unit that cannot run in the current state; becomes `ExecutionResult(ok=False)`."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass
class ExecutionResult:
    """What one code unit did.

    kind: "action" (an action ran), "memory" (assignments only), "done" (``done()``),
    "parse_error", "commented" (an intermediate-step line: nothing to run), "invalid", "unsupported",
    "budget" (no steps were left), "error" (a failure inside the simulator or a solver; `steps` says
    how many steps the call took before it).
    """

    ok: bool
    kind: str
    code: str = ""
    function: str | None = None
    error: str | None = None
    steps: int = 0
    outcome: str | None = None  # task_success | goal_met | finished | aborted | timed_out (actions only)
    finished: bool = False
    timed_out: bool = False
    goal_met: bool | None = None  # None when the call has no goal predicate
    success: bool = False  # the task's success after the call
    episode_done: bool = False
    frames: np.ndarray | None = None  # (N, S, S, 3) uint8 base-camera frames when asked for

    def to_message(self) -> dict[str, Any]:
        """A dict of JSON values and arrays only (the simulator worker protocol)."""
        out = dataclasses.asdict(self)
        if self.frames is None:
            out.pop("frames")
        return out


@dataclasses.dataclass
class _Job:
    """A planned action: the solver to step, when it has reached its goal, when to give up."""

    function: str
    solver: AbstractSolver
    goal: P.Predicate | None = None
    holds: Any = None  # an actor that must stay grasped while the solver is not done


def _pose(p, q) -> sapien.Pose:
    return sapien.Pose(np.asarray(p, np.float64).tolist(), np.asarray(q, np.float64).tolist())


def _copy(pose: sapien.Pose) -> sapien.Pose:
    return _pose(pose.p, pose.q)


def _norm_name(name: str) -> str:
    return " ".join(name.lower().split())


class Executor:
    """Runs code units against one `ClevrSkillsEnv` (see the module docstring).

    `reset()` must be called after every `env.reset()`: it forgets ``pose_dict`` and the end of the
    previous episode. `level` restricts the functions accepted by the parser ("level1", "fine"),
    None accepts both.
    """

    def __init__(
        self,
        env,
        level: str | None = None,
        call_step_limit: int = CALL_STEP_LIMIT,
        settle_steps: int = SETTLE_STEPS,
        stop_on_success: bool = True,
    ):
        self.env = env
        self.level = level
        self.call_step_limit = int(call_step_limit)
        self.settle_steps = int(settle_steps)
        self.stop_on_success = bool(stop_on_success)
        self.pose_dict: dict[str, sapien.Pose] = {}
        self.episode_done = False
        self.success_seen = False
        self.handled: set[int] = set()  # ids of the actors earlier calls acted on (their `actor`)
        # Called after every control step with (action, reward, info): an episode recorder's hook
        # (`VlmOracleWorker` records regenerated demonstrations through it).
        self.on_step: Callable[[np.ndarray, float, dict], None] | None = None

    def reset(self) -> None:
        self.pose_dict = {}
        self.episode_done = False
        self.success_seen = False
        self.handled = set()

    # --- entry point ----------------------------------------------------------------------------
    def execute(
        self,
        code: str | tuple,
        max_steps: int | None = None,
        record_frames: bool = False,
        frame_every: int = 1,
    ) -> ExecutionResult:
        """Run one code unit (text, or an already parsed `Program`); never raises."""
        text = code if isinstance(code, str) else repr(code)
        try:
            return self._execute(code, text, max_steps, record_frames, max(1, int(frame_every)))
        except InvalidCall as e:
            logger.info("no-op code unit %.200r: %s", text, e)
            return ExecutionResult(False, e.kind, text, error=str(e), success=self.success_seen)
        except Exception as e:  # noqa: BLE001 -- a solver or the simulator failed; the episode goes on
            logger.exception("code unit %.200r failed inside the simulator", text)
            return ExecutionResult(False, "error", text, error=f"{type(e).__name__}: {e}", success=self.success_seen)

    def _execute(self, code, text, max_steps, record_frames, frame_every) -> ExecutionResult:
        if isinstance(code, str):
            if keysteps.is_commented(code):
                raise InvalidCall("an intermediate-step (commented) line has nothing to execute", "commented")
            try:
                program = parse(code, self.level)
            except CodeParseError as e:
                raise InvalidCall(str(e), "parse_error") from None
        else:
            program = tuple(code)
        if self.episode_done:
            raise InvalidCall("the episode is over: done() was called")
        if not program:
            raise InvalidCall("no code")
        if not all(isinstance(s, (Assign, Call)) for s in program):
            raise InvalidCall("a code unit holds only assignments and calls")
        actions = [i for i, s in enumerate(program) if isinstance(s, Call)]
        if len(actions) > 1:
            raise InvalidCall(f"a code unit holds at most one action call, got {len(actions)}")
        if actions and actions[0] != len(program) - 1:
            raise InvalidCall("assignments after the action call are not supported")
        local: dict[str, Any] = {}
        work = dict(self.pose_dict)
        for statement in program:
            if isinstance(statement, Assign):
                self._assign(statement, local, work)
        if not actions:
            self.pose_dict = work
            return ExecutionResult(True, "memory", text, success=self.success_seen)
        call = program[-1]
        spec = FUNCTIONS.get(call.name) if isinstance(call.name, str) else None
        if spec is None or not spec.is_action:
            raise InvalidCall(f"unknown action {call.name!r}")
        if call.name in UNSUPPORTED:
            raise InvalidCall(f"{call.name}(): {UNSUPPORTED[call.name]}", "unsupported")
        if call.name == "done":
            self._bind(call, local, work)
            self.pose_dict = work
            self.episode_done = True
            return ExecutionResult(True, "done", text, function="done", success=self.success_seen, episode_done=True)
        args = self._bind(call, local, work)
        self._split_same_name(args)
        plan = getattr(self, f"_plan_{call.name}", None)
        if plan is None:
            raise InvalidCall(f"{call.name}() has no solver here", "unsupported")
        job = plan(args)
        limit = self.call_step_limit if max_steps is None else min(self.call_step_limit, int(max_steps))
        if limit <= 0:
            raise InvalidCall("no control steps are left in this episode", "budget")
        self.pose_dict = work
        if getattr(args.get("actor"), "id", None) is not None:
            self.handled.add(int(args["actor"].id))
        return self._run(job, text, limit, record_frames, frame_every)

    # --- running ---------------------------------------------------------------------------------
    def _run(self, job: _Job, text: str, limit: int, record_frames: bool, frame_every: int) -> ExecutionResult:
        goal = job.goal
        frames: list[np.ndarray] = []
        state = {"steps": 0}
        try:
            if goal is not None:
                goal.evaluate()  # latches the state at the start of the call (initial poses, contacts)
            try:
                outcome, goal_met = self._step_until_done(job, limit, record_frames, frame_every, frames, state)
            finally:
                job.solver.stop()  # e.g. a throw whose target is hit while the arm still follows through
        except Exception as e:  # noqa: BLE001 -- the call fails; the steps it took still count
            logger.exception("code unit %.200r failed inside the simulator", text)
            return ExecutionResult(
                False, "error", text, function=job.function, error=f"{type(e).__name__}: {e}", steps=state["steps"],
                outcome="error", success=self.success_seen,
            )  # fmt: skip
        steps = state["steps"]
        if goal is not None and goal_met is None:
            goal_met = bool(goal.success())
        finished = outcome in ("task_success", "goal_met", "finished")
        return ExecutionResult(
            True, "action", text, function=job.function, steps=steps, outcome=outcome, finished=finished,
            timed_out=outcome == "timed_out", goal_met=goal_met, success=self.success_seen,
            frames=np.stack(frames) if frames else None,
        )  # fmt: skip

    def _step_until_done(self, job: _Job, limit: int, record_frames: bool, frame_every: int, frames: list,
                         state: dict) -> tuple[str, bool | None]:  # fmt: skip
        """Step the job's solver until the call ends; (outcome, goal_met); `state["steps"]` counts."""
        env, goal = self.env, job.goal
        settle = 0
        while state["steps"] < limit:
            if job.holds is not None and not job.solver.done and not env.agent.check_grasp(job.holds.body):
                return "aborted", None
            action = np.asarray(job.solver.step(), dtype=np.float32)
            _, reward, _, _, info = env.step(action)
            state["steps"] += 1
            if self.on_step is not None:
                self.on_step(action, float(np.asarray(reward).reshape(-1)[0]), info)
            if record_frames and (state["steps"] - 1) % frame_every == 0:
                frames.append(env.render_cameras()["base_camera"])
            if bool(np.asarray(info["success"]).reshape(-1)[0]):
                self.success_seen = True
                if self.stop_on_success:
                    return "task_success", None
            if goal is not None and goal.success():
                return "goal_met", True
            if job.solver.done:
                if goal is None:
                    return "finished", None
                settle += 1
                if settle > self.settle_steps:
                    return "finished", None
        return "timed_out", None

    # --- values ----------------------------------------------------------------------------------
    def _assign(self, statement: Assign, local: dict, work: dict) -> None:
        target = statement.target
        value = self._value(statement.value, local, work)
        if isinstance(target, PoseEntry):
            work[str(target.key)] = self._as_pose(value, f"pose_dict[{target.key!r}]")
        elif isinstance(target, Var) and target.name == "target_pose":
            local["target_pose"] = self._as_pose(value, "target_pose")
        elif isinstance(target, Var) and target.name == "target_actor":
            local["target_actor"] = self._as_actor(value, "target_actor")
        else:
            raise InvalidCall(f"cannot assign to {target!r}")

    def _value(self, value: Any, local: dict, work: dict) -> Any:
        if isinstance(value, Actor):
            return self.resolve_actor(value)
        if isinstance(value, Var):
            if value.name not in local:
                raise InvalidCall(f"{value.name!r} is used before it is assigned")
            return local[value.name]
        if isinstance(value, PoseEntry):
            if value.key not in work:
                raise InvalidCall(f"pose_dict has no entry {value.key!r} (stored: {sorted(work)})")
            return _copy(work[value.key])
        if isinstance(value, Component):
            pose = self._as_pose(self._value(value.pose, local, work), f".{value.attr}")
            if value.attr == "p":
                return np.asarray(pose.p, np.float64)
            if value.attr == "q":
                return np.asarray(pose.q, np.float64)
            raise InvalidCall(f"poses have no attribute {value.attr!r}")
        if isinstance(value, Call):
            return self._expression(value, local, work)
        if isinstance(value, tuple):
            return tuple(self._value(v, local, work) for v in value)
        if isinstance(value, (bool, int, float, str)):
            return value
        raise InvalidCall(f"unsupported value of type {type(value).__name__}")

    def _bind(self, call: Call, local: dict, work: dict) -> dict[str, Any]:
        """The call's arguments by parameter name, evaluated; checks the signature again (a `Program`
        may be built by hand)."""
        spec = FUNCTIONS.get(call.name)
        if spec is None:
            raise InvalidCall(f"unknown function {call.name!r}")
        if len(call.args) != len(spec.positional):
            raise InvalidCall(f"{call.name}() takes {len(spec.positional)} positional argument(s)")
        args = {name: self._value(v, local, work) for (name, _), v in zip(spec.positional, call.args, strict=True)}
        for key, v in call.kwargs:
            if spec.keyword_type(key) is None or key in args:
                raise InvalidCall(f"{call.name}() has no keyword {key!r} (or got it twice)")
            args[key] = self._value(v, local, work)
        missing = [k for k in spec.required if k not in args]
        if missing:
            raise InvalidCall(f"{call.name}() misses {', '.join(missing)}")
        return args

    def _expression(self, call: Call, local: dict, work: dict) -> Any:
        if call.name in UNSUPPORTED:
            raise InvalidCall(f"{call.name}(): {UNSUPPORTED[call.name]}", "unsupported")
        if call.name == "get_actor":
            if not call.args or not isinstance(call.args[0], str):
                raise InvalidCall("get_actor() needs a name")
            pos = call.args[1] if len(call.args) > 1 else call.kwarg("actor_pos")
            return self.resolve_actor(Actor(call.args[0], pos))
        spec = FUNCTIONS.get(call.name)
        if spec is None or spec.is_action:
            raise InvalidCall(f"{call.name!r} is not an expression")
        a = self._bind(call, local, work)
        if call.name == "get_pose":
            return _copy(self._as_actor(a["actor"], "actor").pose())
        if call.name == "rotate_z":
            pose = self._as_pose(a["pose"], "rotate_z pose")
            angle = math.radians(math.fmod(self._as_number(a["angle"], "rotate_z angle"), 360.0))
            return _pose(pose.p, quat_mul(quat_z(angle), pose.q))
        if call.name == "Pose":
            p = self._as_vector(a["p"], 3, "Pose position")
            q = self._as_vector(a["q"], 4, "Pose quaternion")
            n = float(np.linalg.norm(q))
            if not n > 1e-6:
                raise InvalidCall("Pose quaternion has zero length")
            return _pose(p, q / n)
        if call.name == "free_space":
            actor = self._as_actor(a["actor"], "actor")
            if "pose" in a:  # the converter's "cheat" form carries the pose itself
                return self._as_pose(a["pose"], "free_space pose")
            return self.free_space(actor)
        if call.name == "free_space_next_to":
            actor = self._as_actor(a["actor"], "actor")
            other = self._as_actor(a["next_to_actor"], "next_to_actor")
            direction = self._as_vector(a["direction"], 3, "direction")
            description = a.get("description", "")
            if not isinstance(description, str):
                raise InvalidCall("description must be a string")
            return self.free_space_next_to(actor, other, direction, description)
        raise InvalidCall(f"{call.name}() is not supported here")

    # --- type checks -----------------------------------------------------------------------------
    def _as_actor(self, value: Any, what: str):
        from c2a_jax.sim.tasks.base import SceneObject

        if not isinstance(value, SceneObject):
            raise InvalidCall(f"{what} must be an actor, got {type(value).__name__}")
        return value

    @staticmethod
    def _as_pose(value: Any, what: str) -> sapien.Pose:
        if not isinstance(value, sapien.Pose):
            raise InvalidCall(f"{what} must be a pose, got {type(value).__name__}")
        return value

    @staticmethod
    def _as_number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidCall(f"{what} must be a finite number, got {value!r}")
        return float(value)

    def _as_vector(self, value: Any, n: int, what: str) -> np.ndarray:
        if isinstance(value, np.ndarray):
            value = tuple(value.tolist())
        if not isinstance(value, tuple) or len(value) != n:
            raise InvalidCall(f"{what} must be {n} numbers")
        return np.array([self._as_number(v, what) for v in value], np.float64)

    @staticmethod
    def _as_bool(value: Any, what: str) -> bool:
        if not isinstance(value, bool):
            raise InvalidCall(f"{what} must be True or False, got {value!r}")
        return value

    @staticmethod
    def _check_reachable(pose: sapien.Pose, what: str) -> sapien.Pose:
        p = np.asarray(pose.p, np.float64)
        if not np.all(np.isfinite(p)):
            raise InvalidCall(f"{what} is not finite")
        d = float(np.linalg.norm(p[:2] - np.asarray(robot_lib.BASE_POSE.p[:2])))
        if not (REACH_XY[0] <= d <= REACH_XY[1] and REACH_Z[0] <= p[2] <= REACH_Z[1]):
            raise InvalidCall(f"{what} {np.round(p, 3).tolist()} is out of the robot's reach")
        return pose

    # --- actors and places -----------------------------------------------------------------------
    def actors(self) -> list:
        """The task actors code can name (those on the table), and parts such as a scale's plates."""
        task = self.env.task
        named = task.code_actors() if hasattr(task, "code_actors") else task.task_actors()
        return [o for o in named if float(o.pose().p[2]) > -1.0]

    def grid_position(self, obj) -> tuple[int, int]:
        """The actor's 10x10 base-camera grid cell (spec 6.3), (-1, -1) when it is not in view."""
        return grid_refs.grid_position(self.env, obj)

    def resolve_actor(self, ref: Actor):
        """The scene actor `get_actor(name[, pos])` names; InvalidCall when there is none."""
        if not isinstance(ref.name, str):
            raise InvalidCall("an actor name must be a string")
        actors = self.actors()
        matches = [o for o in actors if o.name == ref.name]
        if not matches:
            matches = [o for o in actors if _norm_name(o.name) == _norm_name(ref.name)]
        if not matches:
            shown = ref.name if len(ref.name) <= 60 else ref.name[:57] + "..."
            raise InvalidCall(f"unknown object {shown!r}; the scene has {sorted({o.name for o in actors})}")
        if len(matches) > 1:
            distance = lambda o: 0.0  # noqa: E731
            if ref.pos is not None:
                pos = np.asarray(ref.pos, np.float64)
                if pos.shape != (2,) or not np.all(np.isfinite(pos)):
                    raise InvalidCall(f"bad grid position {ref.pos!r}")
                distance = lambda o: float(np.linalg.norm(np.asarray(self.grid_position(o)) - pos))  # noqa: E731
            held = lambda o: self.env.agent.check_grasp(o.body)  # noqa: E731
            matches.sort(key=lambda o: (not held(o), round(distance(o), 6), o.id in self.handled))
        return matches[0]

    def _split_same_name(self, args: dict) -> None:
        """Where several actors share a name (SortStack: "stack the blue cube on the blue cube"), the
        name's ``actor`` is the held one, or else the lowest one with nothing on it, and its
        ``target_actor`` the highest other one with nothing on it (the top of their stack); an
        actor the code (or its grid position) named that already fits is kept."""
        actor, target = args.get("actor"), args.get("target_actor")
        if actor is None or target is None:
            return

        def free(o) -> bool:
            return self._stack_top(o) <= o.top_z() + 1e-3

        def siblings(o) -> list:
            return [x for x in self.actors() if x.name == o.name]

        if actor is target or not free(actor) or self.env.agent.check_grasp(target.body):
            same = siblings(actor)
            held = [o for o in same if self.env.agent.check_grasp(o.body)]
            loose = [o for o in same if free(o) and o is not target] or [o for o in same if o is not target]
            if held:
                actor = held[0]
            elif actor is target or not free(actor):
                actor = min(loose, key=lambda o: o.top_z()) if loose else actor
        if target is actor or not free(target):
            tops = [o for o in siblings(target) if o is not actor and free(o)]
            others = tops or [o for o in siblings(target) if o is not actor]
            if others:
                target = max(others, key=lambda o: o.top_z())
        args["actor"], args["target_actor"] = actor, target

    def free_space(self, actor, attempts: int = 10, margin: float = 0.02) -> sapien.Pose:
        """A free table position for `actor` in the task's workspace, keeping its orientation.

        Candidates come from `place_actor_randomly_v2`; the first is taken whose disc around the
        actor's footprint (any yaw: a carry without match_ori does not keep the actor's yaw) keeps
        `margin` from every other object and the robot base, and where the robot can lower an object
        (the rule of `NextTo.feasible_positions`: within 0.6 m of the base, not nearer than
        MIN_PLACE_REACH)."""
        task = self.env.task
        base = np.asarray(robot_lib.BASE_POSE.p, np.float64)
        rest = float(actor.pose().p[2] - actor.bottom_z())
        radius = float(np.max(np.linalg.norm(actor.local_vertices[:, :2], axis=1)))
        angles = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        disc = radius / np.cos(np.pi / 24) * np.stack([np.cos(angles), np.sin(angles)], 1)  # encloses the circle
        obstacles = [placement.footprint(v) for v in task.obstacles(exclude=actor)]
        for _ in range(attempts):
            pos, _, _ = placement.place_actor_randomly_v2(
                self.env.rng,
                actor.local_vertices,
                task.workspace,
                task.obstacles(exclude=actor),
                grow_actor_bounds=margin,
            )
            point = np.array([pos[0], pos[1], rest + 0.01])
            if (
                float(np.linalg.norm(point - base)) >= 0.6
                or float(np.linalg.norm(point[:2] - base[:2])) < P.MIN_PLACE_REACH
            ):
                continue
            if all(placement.polygon_distance(disc + point[:2], o) >= margin for o in obstacles):
                return _pose(point, actor.pose().q)
        raise InvalidCall(f"free_space(): no free place the robot can reach for the {actor.name}")

    def free_space_next_to(self, actor, other, direction: np.ndarray, description: str) -> sapien.Pose:
        """A point of the `NextTo` area of `actor` beside `other`, as the PlaceNextTo oracle picks it."""
        if actor is other:
            raise InvalidCall("free_space_next_to() needs two different actors")
        d = np.array([direction[0], direction[1], 0.0])
        n = float(np.linalg.norm(d))
        if not n > 1e-6:
            raise InvalidCall("direction must have a horizontal component")
        pred = P.NextTo(self.env, actor, other, d / n, description)
        points = pred.feasible_positions(workspace=self.env.task.workspace)
        if not len(points):
            points = pred.area()
        if not len(points):
            raise InvalidCall(f"no free space {description} the {other.name}")
        point = points[int(self.env.rng.randint(len(points)))]
        return _pose(point, actor.pose().q)

    def _grasped(self) -> list:
        return [o for o in self.env.task.objects if self.env.agent.check_grasp(o.body)]

    def _holding(self, actor, function: str) -> None:
        if not self.env.agent.check_grasp(actor.body):
            raise InvalidCall(f"{function}(): the {actor.name} is not held by the gripper")

    def _stack_top(self, actor) -> float:
        """The top of `actor` and of everything standing on it (x-y boxes overlapping, higher up)."""
        v = actor.world_vertices()
        lo, hi = v[:, :2].min(0), v[:, :2].max(0)
        top = float(v[:, 2].max())
        for o in sorted(self.actors(), key=lambda o: o.bottom_z()):
            w = o.world_vertices()
            if (
                o is not actor
                and np.all(w[:, :2].min(0) < hi)
                and np.all(w[:, :2].max(0) > lo)
                and o.bottom_z() > top - 0.02
            ):
                top = max(top, float(w[:, 2].max()))
        return top

    def _on_top_offset(self, actor, dest) -> sapien.Pose:
        """Where `actor` goes on `dest`, relative to dest: 1 cm above its top (spec 5.3)."""
        height = float(actor.pose().p[2]) - actor.bottom_z()
        return sapien.Pose([0.0, 0.0, dest.top_z() - float(dest.pose().p[2]) + height + 0.01])

    def _targets(self, args: dict, function: str) -> tuple[Any, sapien.Pose | None]:
        actor = self._as_actor(args["actor"], "actor")
        target_actor = self._as_actor(args["target_actor"], "target_actor") if "target_actor" in args else None
        target_pose = self._as_pose(args["target_pose"], "target_pose") if "target_pose" in args else None
        if target_actor is not None and target_pose is not None:
            raise InvalidCall(f"{function}(): give target_actor or target_pose, not both")
        if target_actor is actor:
            raise InvalidCall(f"{function}(): the target actor is the actor itself")
        if target_pose is not None:
            self._check_reachable(target_pose, f"{function}() target_pose")
        return target_actor, target_pose

    # --- level-1 actions -------------------------------------------------------------------------
    def _plan_pick_move3d_place(self, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        match_ori = self._as_bool(args.get("match_ori", False), "match_ori")
        target_actor, target_pose = self._targets(args, "pick_move3d_place")
        if not actor.dynamic:
            raise InvalidCall(f"pick_move3d_place(): the {actor.name} cannot be moved")
        env = self.env
        if target_actor is not None:
            solver = PickMove3dPlaceSolver(env, actor, target_actor=target_actor, match_ori=match_ori)
            goal = P.OnTop(env, actor, target_actor)
        elif target_pose is not None:
            solver = PickMove3dPlaceSolver(env, actor, target_pose=target_pose, match_ori=match_ori,
                                           target_pose_name="designated pose")  # fmt: skip
            goal = P.AtPosition(env, actor, target_pose, match_ori=match_ori)
        else:
            solver = PickMove3dPlaceSolver(env, actor, target_pose_name="lifted pose", lift=PICK_LIFT)
            goal = P.PickPredicate(env, actor, clear_distance=0.02)
        return _Job("pick_move3d_place", solver, goal)

    def _plan_touch(self, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        push = self._as_bool(args.get("push", False), "push")
        topple = self._as_bool(args.get("topple", False), "topple")
        if self.env.agent.check_grasp(actor.body):
            raise InvalidCall(f"touch(): the {actor.name} is held by the gripper")
        solver = Move3dTouchSolver(self.env, actor, push=push, topple=topple)
        return _Job("touch", solver, P.TouchPredicate(self.env, actor, push=push, topple=topple))

    def _plan_push(self, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        target_actor, target_pose = self._targets(args, "push")
        if self.env.agent.check_grasp(actor.body):
            raise InvalidCall(f"push(): the {actor.name} is held by the gripper")
        if target_actor is not None:  # "push A towards B": to the midpoint (the Push task's oracle)
            a, b = np.asarray(actor.pose().p), np.asarray(target_actor.pose().p)
            target = _pose([*((a[:2] + b[:2]) / 2), a[2]], actor.pose().q)
            solver = PushSolver(self.env, actor, target, target_actor=target_actor,
                                extra={"target_pose_function": "towards"})  # fmt: skip
            return _Job("push", solver, P.DirectionPushed(self.env, actor, target))
        if target_pose is None:
            raise InvalidCall("push(): needs target_actor or target_pose")
        solver = PushSolver(self.env, actor, target_pose, retries=PUSH_RETRIES, plan_path=True)
        return _Job("push", solver, P.AtPositionPushed(self.env, actor, target_pose))

    def _plan_topple_structure(self, args: dict) -> _Job:
        actors = args["actors"]
        if not isinstance(actors, tuple) or not actors:
            raise InvalidCall("topple_structure(): needs a list of actors")
        actors = [self._as_actor(a, "topple_structure actor") for a in actors]
        if len({id(a) for a in actors}) != len(actors):
            raise InvalidCall("topple_structure(): an actor is listed twice")
        try:  # StackTopple's solver; absent from a checkout without that task
            from c2a_jax.sim.solvers.topple import ToppleStructure
        except ImportError:
            raise InvalidCall("topple_structure(): no ToppleStructure solver in this checkout", "unsupported") from None
        goal = P.ToppleStructurePredicate(self.env, actors) if hasattr(P, "ToppleStructurePredicate") else None
        return _Job("topple_structure", ToppleStructure(self.env, actors), goal)

    def _throw_job(self, function: str, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        if "target_actor" not in args:
            raise InvalidCall(f"{function}(): needs a target_actor to throw at")
        target = self._as_actor(args["target_actor"], "target_actor")
        if target is actor:
            raise InvalidCall(f"{function}(): the target actor is the actor itself")
        if not actor.dynamic:
            raise InvalidCall(f"{function}(): the {actor.name} cannot be moved")
        target_2d = self._as_bool(args.get("target_2d", False), "target_2d")
        topple = self._as_bool(args.get("topple_target", False), "topple_target")
        from c2a_jax.sim.solvers.throw import PickMove3dThrowSolver

        solver = PickMove3dThrowSolver(self.env, actor, target, target_2d=target_2d, topple_target=topple)
        return _Job(function, solver, P.HitPredicate(self.env, actor, target, target_2d, topple))

    def _plan_hit(self, args: dict) -> _Job:
        held = [o for o in self._grasped() if o is not args.get("actor")]
        if held:
            raise InvalidCall(f"hit(): the gripper already holds the {held[0].name}")
        return self._throw_job("hit", args)

    def _plan_balance_scale(self, args: dict) -> _Job:
        listed = args["objects"]
        if not isinstance(listed, tuple) or not listed:
            raise InvalidCall("balance_scale(): needs a list of actors")
        task = self.env.task
        if not all(hasattr(task, k) for k in ("scale_px", "plate1", "plate2")):
            raise InvalidCall("balance_scale(): there is no scale in this scene")
        objects = []
        for value in listed:  # blocks share one name: a repeated name stands for the next such block
            actor = self._as_actor(value, "balance_scale actor")
            if actor in objects:
                others = [o for o in self.actors() if o.name == actor.name and o not in objects]
                if not others:
                    raise InvalidCall(f"balance_scale(): more {actor.name!r} listed than the scene has")
                actor = others[0]
            if actor in (task.plate1, task.plate2):
                raise InvalidCall("balance_scale(): the plates are part of the scale")
            objects.append(actor)
        from c2a_jax.sim.solvers.balance import BalanceScaleSolver

        try:
            goal = P.BalanceScale(self.env, task.scale_px, task.plate1, task.plate2, objects)
        except ValueError:
            raise InvalidCall("balance_scale(): these objects cannot balance the scale") from None
        return _Job("balance_scale", BalanceScaleSolver(self.env, goal), goal)

    # --- fine actions ----------------------------------------------------------------------------
    def _plan_throw(self, args: dict) -> _Job:
        self._holding(self._as_actor(args["actor"], "actor"), "throw")
        return self._throw_job("throw", args)

    def _plan_pick(self, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        if not actor.dynamic:
            raise InvalidCall(f"pick(): the {actor.name} cannot be moved")
        held = [o for o in self._grasped() if o is not actor]
        if held:
            raise InvalidCall(f"pick(): the gripper already holds the {held[0].name}")
        return _Job("pick", PickSolver(self.env, actor, lift=PICK_LIFT))

    def _plan_place(self, args: dict) -> _Job:
        actor = self._as_actor(args["actor"], "actor")
        match_ori = self._as_bool(args.get("match_ori", False), "match_ori")
        target_actor, target_pose = self._targets(args, "place")
        self._holding(actor, "place")
        env = self.env
        if target_actor is not None:
            solver = PlaceOnActorSolver(env, actor, target_actor, self._on_top_offset(actor, target_actor),
                                        drop_distance=PLACE_LIFT)  # fmt: skip
            return _Job("place", solver, P.OnTop(env, actor, target_actor))
        if target_pose is None:
            raise InvalidCall("place(): needs target_actor or target_pose")
        solver = PlaceSolver(env, actor, target_pose, match_ori_2d=match_ori, drop_distance=PLACE_LIFT)
        return _Job("place", solver, P.AtPosition(env, actor, target_pose, match_ori=match_ori))

    def _plan_move3d(self, args: dict) -> _Job:
        env = self.env
        tcp = env.agent.tcp_pose()
        match_ori = self._as_bool(args.get("match_ori", False), "match_ori")
        if "actor" not in args:
            if "target_pose" in args:
                raise InvalidCall("move3d(): target_pose needs the carried actor")
            vacuum = bool(self._grasped())
            if "target_actor" not in args:  # retreat upwards
                goal = _pose([tcp.p[0], tcp.p[1], min(MAX_TOOL_Z, float(tcp.p[2]) + RETREAT_UP)], tcp.q)
                return _Job("move3d", Move3dSolver(env, goal, match_ori=True, vacuum=vacuum, role="retreat"))
            # above the actor, keeping the tool's orientation: turning it to the orbit orientation here
            # can wind the wrist to its limit after a touch stroke, which the next solver cannot undo
            dest = self._as_actor(args["target_actor"], "target_actor")
            a = np.asarray(dest.pose().p)
            goal = _pose([a[0], a[1], self._stack_top(dest) + 0.03], tcp.q)
            solver = Move3dSolver(env, goal, match_ori=True, vacuum=vacuum, role="approach", target_actor=dest)
            return _Job("move3d", solver)
        actor = self._as_actor(args["actor"], "actor")
        target_actor, target_pose = self._targets(args, "move3d")
        self._holding(actor, "move3d")
        if target_actor is None and target_pose is None:  # hold it lifted
            goal = _pose(np.asarray(tcp.p) + [0.0, 0.0, 0.05], tcp.q)
            solver = Move3dSolver(env, goal, match_ori=False, vacuum=True, role="hold", actor=actor)
            return _Job("move3d", solver, holds=actor)
        if target_actor is not None:
            dest = target_actor.pose()
            target = _pose(np.asarray(dest.p) + self._on_top_offset(actor, target_actor).p, actor.pose().q)
        else:
            target = target_pose
        # carry as PickMove3dPlaceSolver does: the actor to `lift` above the target (spec 5.3)
        pose = actor.pose()
        raised = np.asarray(target.p) + [0.0, 0.0, PLACE_LIFT]
        goal_p = np.asarray(tcp.p) + (raised - np.asarray(pose.p))
        q_actor = np.asarray(pose.q)
        if np.dot(q_actor, target.q) < 0:
            q_actor = -q_actor
        inverse = np.asarray(sapien.Pose(q=q_actor).inv().q)
        goal_q = quat_mul(quat_mul(target.q, inverse), tcp.q) if match_ori else tcp.q
        solver = Move3dSolver(env, _pose(goal_p, goal_q), match_ori=match_ori, vacuum=True, role="carry",
                              actor=actor, target_actor=target_actor)  # fmt: skip
        return _Job("move3d", solver, holds=actor)
