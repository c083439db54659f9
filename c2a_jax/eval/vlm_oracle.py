"""The VLM+Oracle evaluation mode (paper 4.2 "Efficient Inference", Table 2): a code writer asked for
key-steps drives the oracle solvers, one line at a time.

The code writer (a LLaVA `CodeWriter`, on JAX) lives in this process; the simulator (SAPIEN) lives
in a worker process (`c2a_jax.sim.worker`). They talk through three calls of `VlmOracleWorker`:

    reset(seed, task=None, task_args=None, prompt_index=None, split=None, record=False)
        -> {"episode": token, "task", "task_args", "split", "seed", "prompt", "prompt_index",
            "prompts", "actors", "observation"}
    execute(episode, code, record_frames=False) -> {"result": ExecutionResult, "observation"}
    observe(episode) -> observation

    observation = {"image": (S, S, 3) uint8 base camera, "success": bool (reached at any step so
                   far), "steps": int, "budget_left": int, "episode_done": bool,
                   "actors": (K, 13) float32 pose and velocity of each task actor, "actor_keys": [...]}

Each query costs one round trip: `execute` answers with the observation the next query needs.
With ``record=True`` the worker also records the episode as a demonstration file
(`c2a_jax.sim.code_episode`: both cameras, proprioception and actions at every control step, and
the running line as each step's code label); ``recorded_episode(episode)`` answers with it
(``{"arrays", "meta"}``, the layout of `record_oracle_episode`). `run_episode(...,
record_episode=True)` fetches it for successful episodes (`data_pipelines/regenerate_with_vlm_oracle.py`).

The episode token guards against a worker that crashed and was restarted by the pool: the new
process has no episode, refuses the old token, and the parent records a worker error instead of
driving a fresh scene. `record_oracle(seed)` runs the task's own oracle in the same worker (the
replay stand-in and the oracle baseline need it).

`run_episode` is the parent's loop: reset, then per query observe -> ask the writer ->
`codeapi.parse_step` (a parse error is a failed query; nothing is sent to the simulator) ->
execute -> the memory buffer takes the line if it ran (key-steps only, as `MemoryBuffer`) -> until
``done()``, task success, the step budget or `max_queries`. Decoding is greedy, as in the paper;
with ``refusal_temperature`` > 0 a query that follows a line that did not run (a parse error, a
commented line, a call the executor refused) is sampled at that temperature instead, because
greedy decoding from the same image and memory writes the refused line again until
`max_queries`. `sim` is anything with the methods above: a `SimulatorClient` (the worker
process) or a `VlmOracleWorker` in this process.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from c2a_jax.codeapi import CodeParseError, MemoryBuffer, parse_step

FACTORY = "c2a_jax.eval.vlm_oracle:VlmOracleWorker"
MAX_QUERIES = 25  # the paper's longest tasks average ~11 calls (Table 2)
MAX_STEPS = 1000  # control steps per episode (ClevrSkills-v0's episode limit)
CODE_RECORD_CHARS = 4096  # longer answers are stored truncated in the episode record

CodeWriterFn = Callable[..., str]  # (image, prompt, memory, keystep_request=True) -> str


def default_prompt_index(task: str, prompts: list[str] | None = None) -> int:
    """The prompt the benchmark evaluates (spec 3.0.5 TASK_PROMPT_IDX): Pick 3, every other task 0.
    Given the natural-language `prompts`, one that shows key-step images (FollowOrder's prompt 0)
    gives way to the first without, as in the LLaVA converter, which drops those."""
    index = 3 if task.lower() == "pick" else 0
    if prompts and index < len(prompts) and "keystep" in prompts[index]:
        index = next((k for k, p in enumerate(prompts) if "keystep" not in p), index)
    return index


# ---------------------------------------------------------------------------------------------
# Worker side


class VlmOracleWorker:
    """A simulator worker's payload for VLM+Oracle episodes: one environment (rebuilt when a reset
    names another task), an `Executor`, and the episode in progress."""

    def __init__(
        self,
        task: str = "Pick",
        task_args: dict | None = None,
        image_size: int = 128,
        split: str = "train",
        level: str | None = None,
        max_steps: int = MAX_STEPS,
        call_step_limit: int | None = None,
        images: bool = True,
    ):
        self.image_size, self.split, self.level = int(image_size), split, level
        self.max_steps = int(max_steps)
        self.call_step_limit = call_step_limit
        self.images = bool(images)
        self.env = None
        self.executor = None
        self._spec: tuple | None = None
        self._nonce = secrets.token_hex(4)  # a restarted worker never accepts its predecessor's tokens
        self._ids = itertools.count(1)
        self.episode: str | None = None
        self.steps = 0
        self._image: tuple | None = None  # ((episode, steps), base-camera image) of the last render
        self.recorder = None  # a CodeEpisodeRecorder while a recorded episode runs
        self._make(task, task_args)

    def _make(self, task: str, task_args: dict | None, split: str | None = None) -> None:
        split = self.split if split is None else split
        spec = (task, sorted((task_args or {}).items()), split)
        if self._spec == spec:
            return
        import gymnasium as gym

        import c2a_jax.sim.env  # noqa: F401  (registers ClevrSkills-v0)
        from c2a_jax.sim.executor import CALL_STEP_LIMIT, Executor

        self.close()
        self.env = gym.make("ClevrSkills-v0", task=task, task_args=dict(task_args or {}), image_size=self.image_size,
                            split=split).unwrapped  # fmt: skip
        limit = self.call_step_limit if self.call_step_limit is not None else CALL_STEP_LIMIT
        self.executor = Executor(self.env, level=self.level, call_step_limit=limit)
        self._spec = spec
        self.task_name, self.task_args, self.split = task, dict(task_args or {}), split

    def _check(self, episode: str) -> None:
        if self.episode is None or episode != self.episode:
            raise RuntimeError(f"no episode {episode!r} in this worker (it was reset or restarted)")

    def _observation(self) -> dict[str, Any]:
        env = self.env
        success = bool(self.executor.success_seen or env.task.evaluate()["success"])
        self.executor.success_seen = success
        actors = env.task.task_actors()
        states = np.stack([o.state() for o in actors]) if actors else np.zeros((0, 13))
        if self._image is None or self._image[0] != (self.episode, self.steps):  # nothing moved: no new render
            if self.recorder is not None and self.images:  # the recorder rendered this state already
                image = self.recorder.steps.last_base_image
            else:
                image = env.render_cameras()["base_camera"] if self.images else np.zeros((1, 1, 3), np.uint8)
            self._image = ((self.episode, self.steps), image)
        image = self._image[1]
        return {
            "image": image,
            "success": success,
            "steps": self.steps,
            "budget_left": max(0, self.max_steps - self.steps),
            "episode_done": self.executor.episode_done,
            "actors": states.astype(np.float32),
            "actor_keys": [o.key for o in actors],
        }

    def reset(self, seed: int, task: str | None = None, task_args: dict | None = None,
              prompt_index: int | None = None, split: str | None = None, record: bool = False) -> dict[str, Any]:  # fmt: skip
        if task is not None or (split is not None and split != self.split):
            self._make(task or self.task_name, task_args if task is not None else self.task_args, split)
        self._stop_recording()
        self.env.reset(seed=int(seed))
        self.executor.reset()
        self.steps = 0
        self.episode = f"{self._nonce}-{next(self._ids)}"
        if record:
            from c2a_jax.sim.code_episode import CodeEpisodeRecorder

            self.recorder = CodeEpisodeRecorder(self.env, self.executor, int(seed), images=self.images)
        described = self.env.task.describe()
        prompts = self.env.task.natural_prompts()
        index = default_prompt_index(self.task_name, prompts) if prompt_index is None else int(prompt_index)
        index = min(max(index, 0), len(prompts) - 1)
        return {
            "episode": self.episode,
            "task": self.task_name,
            "task_args": self.task_args,
            "split": self.split,
            "seed": int(seed),
            "prompt": prompts[index],
            "prompt_index": index,
            "prompts": prompts,
            "actors": described["actors"],
            "observation": self._observation(),
        }

    def observe(self, episode: str) -> dict[str, Any]:
        self._check(episode)
        return self._observation()

    def execute(self, episode: str, code: str, record_frames: bool = False) -> dict[str, Any]:
        self._check(episode)
        run = self.recorder.execute if self.recorder is not None else self.executor.execute
        result = run(code, max_steps=self.max_steps - self.steps, record_frames=record_frames)
        self.steps += result.steps
        return {"result": result.to_message(), "observation": self._observation()}

    def recorded_episode(self, episode: str) -> dict[str, Any]:
        """The episode so far as a demonstration (``{"arrays", "meta"}``); needs ``reset(record=True)``."""
        self._check(episode)
        if self.recorder is None:
            raise RuntimeError(f"episode {episode!r} is not recorded: reset it with record=True")
        return self.recorder.episode()

    def _stop_recording(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    def record_oracle(self, seed: int, task: str | None = None, task_args: dict | None = None,
                      max_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """The task's own oracle on `seed` (`record_oracle_episode` without images): its metadata."""
        from c2a_jax.sim.rollout import record_oracle_episode

        if task is not None:
            self._make(task, task_args if task_args is not None else {})
        self.episode = None  # the reset below ends any episode in progress
        self._stop_recording()
        episode = record_oracle_episode(self.env, int(seed), max_steps or self.max_steps, images=False)
        return episode["meta"]

    def ping(self) -> str:
        return "ok"

    def close(self) -> None:
        self._stop_recording()
        if self.env is not None:
            self.env.close()
            self.env = None
            self._spec = None


# ---------------------------------------------------------------------------------------------
# Parent side


class SimulatorClient:
    """`VlmOracleWorker` in a child process: a `WorkerPool` of one worker, so that every call
    reaches the process that holds the episode. A crashed worker is restarted by the pool; its
    episode is gone, and the calls of that episode fail with `WorkerError`."""

    def __init__(self, task: str = "Pick", task_args: dict | None = None, image_size: int = 128,
                 split: str = "train", level: str | None = None, max_steps: int = MAX_STEPS,
                 call_step_limit: int | None = None, images: bool = True, timeout_s: float = 600.0,
                 python_executable: str | None = None, env: dict | None = None, log_path: str | None = None,
                 factory: str = FACTORY):  # fmt: skip
        from c2a_jax.sim.worker import WorkerPool

        kwargs = {"task": task, "task_args": dict(task_args or {}), "image_size": image_size, "split": split,
                  "level": level, "max_steps": max_steps, "call_step_limit": call_step_limit, "images": images}  # fmt: skip
        self.pool = WorkerPool(factory, kwargs, num_workers=1, timeout_s=timeout_s, max_retries=0,
                               python_executable=python_executable, env=env, log_path=log_path)  # fmt: skip

    def call(self, method: str, /, **kwargs) -> Any:
        return self.pool.call(method, **kwargs)

    def reset(self, **kwargs) -> dict[str, Any]:
        return self.pool.call("reset", **kwargs)

    def execute(self, **kwargs) -> dict[str, Any]:
        return self.pool.call("execute", **kwargs)

    def observe(self, **kwargs) -> dict[str, Any]:
        return self.pool.call("observe", **kwargs)

    def record_oracle(self, **kwargs) -> dict[str, Any]:
        return self.pool.call("record_oracle", **kwargs)

    def recorded_episode(self, **kwargs) -> dict[str, Any]:
        return self.pool.call("recorded_episode", **kwargs)

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass
class EpisodeRecord:
    """One VLM+Oracle episode, JSON-able (`to_json`); `frames` (when asked for) stay out of JSON.

    `episode` (with ``record_episode``, successful episodes only) is the recorded demonstration.

    end_reason: "done" (the writer said done()), "success" (the task succeeded first),
    "step_budget", "max_queries", or "worker_error" (`error` says what happened).
    `calls` has one entry per query: its code, its status ("parse_error", "commented", or the
    executor's kind: "action", "memory", "done", "invalid", "unsupported", "budget", "error"), and for
    actions the steps and outcome.
    """

    task: str
    seed: int
    task_args: dict = dataclasses.field(default_factory=dict)
    split: str | None = None
    prompt: str = ""
    level: str | None = None
    success: bool = False
    end_reason: str = ""
    steps: int = 0
    queries: int = 0
    parse_errors: int = 0
    invalid_calls: int = 0
    resampled: int = 0  # queries sampled after a line that did not run (``refusal_temperature``)
    commented: int = 0
    actions: int = 0
    code: list[str] = dataclasses.field(default_factory=list)
    calls: list[dict] = dataclasses.field(default_factory=list)
    vlm_s: float = 0.0
    sim_s: float = 0.0  # the reset included
    reset_s: float = 0.0
    total_s: float = 0.0
    error: str | None = None
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    episode: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        episode, self.episode = self.episode, None  # arrays stay out of JSON (and out of asdict's deep copy)
        try:
            out = dataclasses.asdict(self)
        finally:
            self.episode = episode
        out.pop("frames")
        out.pop("episode")
        for key in ("vlm_s", "sim_s", "reset_s", "total_s"):
            out[key] = round(out[key], 4)
        return out


def _text(code: Any) -> str:
    text = code if isinstance(code, str) else repr(code)
    return text if len(text) <= CODE_RECORD_CHARS else text[:CODE_RECORD_CHARS] + "...<truncated>"


def _sample_seed(seed: int, query: int) -> int:
    """A uint32 sampling seed per (episode seed, query): reruns and resumed runs write the same lines."""
    return (int(seed) * 1_000_003 + int(query)) % (1 << 32)


def run_episode(
    sim,
    writer: CodeWriterFn | Any,
    seed: int,
    *,
    task: str | None = None,
    task_args: dict | None = None,
    prompt_index: int | None = None,
    split: str | None = None,
    level: str | None = None,
    max_queries: int = MAX_QUERIES,
    record_frames: bool = False,
    record_episode: bool = False,
    refusal_temperature: float = 0.0,
) -> EpisodeRecord:
    """One VLM+Oracle episode on `sim` (see the module docstring); never raises for what the writer
    writes or for a lost worker (`end_reason` "worker_error").

    `writer` is a callable ``(image, prompt, memory, keystep_request=True) -> str`` or an object
    with such a `generate_code` method (`c2a_jax.infer.code_writer.CodeWriter`). `level` is the
    code granularity the parser admits (None: both). `record_episode`: the simulator records the
    episode, and a successful one comes back in ``record.episode`` (`VlmOracleWorker.recorded_episode`).
    `refusal_temperature` > 0: after a line that did not run, the next query is sampled at that
    temperature with a seed fixed by (`seed`, query), so a rerun writes the same lines; the writer
    must then take ``temperature`` and ``seed`` keywords (`CodeWriter.generate_code` does).
    """
    from c2a_jax.sim.worker import WorkerError

    if not np.isfinite(refusal_temperature) or refusal_temperature < 0:
        raise ValueError(f"refusal_temperature must be finite and >= 0, got {refusal_temperature}")

    generate = getattr(writer, "generate_code", writer)
    start = time.perf_counter()
    record = EpisodeRecord(task=task or "", seed=int(seed), task_args=dict(task_args or {}), level=level)
    sim_s = 0.0
    try:
        t = time.perf_counter()
        options = {"split": split} if split is not None else {}  # stand-in simulators need not know splits
        if record_episode:
            options["record"] = True
        reset = sim.reset(seed=int(seed), task=task, task_args=task_args, prompt_index=prompt_index, **options)
        record.reset_s = time.perf_counter() - t
        sim_s += record.reset_s
    except WorkerError as e:
        record.end_reason, record.error = "worker_error", f"reset: {e}"
        record.total_s = time.perf_counter() - start
        return record
    record.task, record.task_args, record.prompt = reset["task"], dict(reset["task_args"]), reset["prompt"]
    record.split = reset.get("split", split)
    episode, obs = reset["episode"], reset["observation"]
    memory = MemoryBuffer()
    end = "success" if obs["success"] else ""
    last_ran = True  # the previous line ran (nothing to resample before the first query)
    while not end:
        if record.queries >= max_queries:
            end = "max_queries"
            break
        resample = refusal_temperature > 0 and not last_ran
        options = {"temperature": refusal_temperature, "seed": _sample_seed(seed, record.queries)} if resample else {}
        t = time.perf_counter()
        code = generate(obs["image"], record.prompt, list(memory.entries), keystep_request=True, **options)
        record.vlm_s += time.perf_counter() - t
        record.queries += 1
        record.resampled += resample
        text = _text(code)
        record.code.append(text)
        entry: dict[str, Any] = {"query": record.queries - 1, "code": text}
        if resample:
            entry["sampled"] = True
        record.calls.append(entry)
        last_ran = False  # until the simulator says the line ran
        try:
            _, is_keystep = parse_step(code, level)
        except CodeParseError as e:
            record.parse_errors += 1
            entry.update(status="parse_error", error=str(e))
            continue
        if not is_keystep:
            record.commented += 1
            entry.update(status="commented", error="an intermediate-step (commented) line has nothing to execute")
            continue
        try:
            t = time.perf_counter()
            reply = sim.execute(episode=episode, code=code, record_frames=record_frames)
            sim_s += time.perf_counter() - t
        except WorkerError as e:
            record.error = f"execute (query {entry['query']}): {e}"
            entry.update(status="worker_error", error=str(e))
            end = "worker_error"
            break
        result, obs = reply["result"], reply["observation"]
        entry.update(status=result["kind"], error=result["error"], steps=result["steps"], outcome=result["outcome"])
        if record_frames and result.get("frames") is not None:
            record.frames.append(result["frames"])
        last_ran = bool(result["ok"])
        if result["ok"]:
            memory.update(code)
            record.actions += result["kind"] == "action"
        else:
            record.invalid_calls += 1
        if result["episode_done"] or obs["episode_done"]:
            end = "done"
        elif obs["success"]:
            end = "success"
        elif obs["budget_left"] <= 0:
            end = "step_budget"
    record.success = bool(obs["success"])
    record.steps = int(obs["steps"])
    record.end_reason = end
    if record_episode and record.success and end != "worker_error":
        try:
            t = time.perf_counter()
            record.episode = sim.recorded_episode(episode=episode)
            sim_s += time.perf_counter() - t
        except WorkerError as e:
            record.end_reason, record.error = "worker_error", f"recorded_episode: {e}"
    record.sim_s = sim_s
    record.total_s = time.perf_counter() - start
    return record
