"""The hierarchical policy (paper section 4.3, Appendix E.4): a code writer above, a diffusion policy below.

Every control step the VLM is asked, in intermediate mode, for the code line of the current subtask
given the camera image, the task prompt and its memory; a key-step line enters the memory, whose
``pose_dict`` writes make the cache info (`c2a_jax.codeapi.memory`). The diffusion policy turns
(observation, code line, cache info) into an action chunk; its first ``n_action_steps`` actions
are executed one per step. A new chunk is drawn when the current one is used up, or -- with
``regenerate_on_keystep`` (the paper's choice, its Figure 5 ablation turns it off) -- as soon as
the VLM writes a new key-step (a plain line: a new API call begins; later steps of the same call
are its commented form): the chunk of a finished subtask is thrown away. The policy gets the line
as written, plain or commented, as it did in training (`c2a_jax.data.dp`).

The controller only sees callables, so it serves every evaluation mode and any model size:

* ``code_writer(image, prompt, memory, keystep_request) -> str`` (`CodeWriter.generate_code` or a
  replaying stand-in); `ORACLE_CODE` for Oracle+DP, whose line is the observation's
  ``oracle_code`` (the task's solver beside the policy, `c2a_jax.sim.shadow_oracle`); None for the
  flat DP baseline, whose policy reads the task prompt instead of code;
* ``policy(obs, code=..., cache_info=..., prompt=..., rng=...) -> (horizon, 7)`` in robot units
  (`c2a_jax.infer.dp_runner.DiffusionPolicyRunner.sample`).

Generated code is never executed here: it is text the policy conditions on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from c2a_jax.codeapi.memory import MemoryBuffer

POLICY_IMAGES = ("image", "wrist_image")  # the observation's images a policy may read
ORACLE_CODE = "oracle_code"  # code_writer for Oracle+DP: the observation's key of the solver's line
CodeWriterFn = Callable[[np.ndarray, str, Sequence[str], bool], str] | str
PolicyFn = Callable[..., np.ndarray]


@dataclasses.dataclass
class StepInfo:
    """What one control step did: the code line (None in flat mode), whether it entered memory,
    whether a chunk was drawn (and why), the index of the action within its chunk, and times."""

    code: str | None
    keystep: bool
    new_chunk: bool
    reason: str  # "first", "used_up", "new_keystep" or "" (no chunk drawn)
    chunk_index: int
    vlm_s: float
    dp_s: float


class HierarchicalController:
    """See the module docstring. One instance per episode stream; `reset(prompt)` starts an episode."""

    def __init__(
        self,
        policy: PolicyFn,
        code_writer: CodeWriterFn | None = None,
        *,
        n_action_steps: int = 8,
        regenerate_on_keystep: bool = True,
        keystep_request: bool = False,
        camera: str = "image",
        seed: int = 0,
    ):
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.policy = policy
        self.code_writer = code_writer
        self.n_action_steps = int(n_action_steps)
        self.regenerate_on_keystep = bool(regenerate_on_keystep)
        self.keystep_request = bool(keystep_request)
        self.camera = camera
        self.seed = int(seed)
        self.reset("")

    @property
    def reads_oracle_code(self) -> bool:
        """Oracle+DP: the simulator must put the solver's line in every observation."""
        return isinstance(self.code_writer, str) and self.code_writer == ORACLE_CODE

    def reset(self, prompt: str, episode_seed: int | None = None) -> None:
        """A new episode with task `prompt`: empty memory, no chunk; sampling keys from
        (controller seed, `episode_seed`) so that an episode replays identically."""
        self.prompt = prompt
        self.memory = MemoryBuffer()
        self._chunk: np.ndarray | None = None
        self._used = 0
        self._draws = 0
        self._episode_seed = 0 if episode_seed is None else int(episode_seed)

    @property
    def cache_info(self) -> str:
        return self.memory.cache_info()

    def _draw(self, obs: Mapping[str, Any], code: str | None) -> np.ndarray:
        rng = int(np.random.SeedSequence([self.seed, self._episode_seed, self._draws]).generate_state(1)[0])
        self._draws += 1
        if code is None:
            chunk = self.policy(obs, prompt=self.prompt, rng=rng)
        else:
            chunk = self.policy(obs, code=code, cache_info=self.memory.cache_info(), rng=rng)
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(f"the policy returned an action chunk of shape {chunk.shape}, expected (horizon, dims)")
        return chunk

    def images_needed(self) -> tuple[str, ...]:
        """The observation images the next `act` may read: the code writer reads its camera every
        step, the policy every camera when it draws a chunk (`POLICY_IMAGES`), nothing otherwise.
        With `regenerate_on_keystep` any line the code writer writes may draw, so every step may.
        A simulator may skip rendering the rest (the flat DP's episodes then render one step in
        `n_action_steps`), with the same actions."""
        draw = self._chunk is None or self._used >= min(self.n_action_steps, len(self._chunk))
        if draw or (self.code_writer is not None and self.regenerate_on_keystep):
            return POLICY_IMAGES
        return (self.camera,) if self.code_writer is not None and not self.reads_oracle_code else ()

    def act(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, StepInfo]:
        """The action for this step (robot units) and what the step did."""
        code, keystep, vlm_s = None, False, 0.0
        if self.reads_oracle_code:
            if ORACLE_CODE not in obs:
                raise KeyError(
                    f"Oracle+DP needs {ORACLE_CODE!r} in every observation (PolicyWorker.reset(oracle_code=True))"
                )
            code = str(obs[ORACLE_CODE])
            keystep = self.memory.update(code)
        elif self.code_writer is not None:
            start = time.perf_counter()
            code = str(self.code_writer(np.asarray(obs[self.camera]), self.prompt, list(self.memory.entries),
                                        self.keystep_request))  # fmt: skip
            vlm_s = time.perf_counter() - start
            keystep = self.memory.update(code)
        limit = self.n_action_steps if self._chunk is None else min(self.n_action_steps, len(self._chunk))
        if self._chunk is None:
            reason = "first"
        elif self.regenerate_on_keystep and keystep:
            reason = "new_keystep"
        elif self._used >= limit:
            reason = "used_up"
        else:
            reason = ""
        dp_s = 0.0
        if reason:
            start = time.perf_counter()
            self._chunk = self._draw(obs, code)
            dp_s = time.perf_counter() - start
            self._used = 0
        index = self._used
        action = self._chunk[index]
        self._used += 1
        return action, StepInfo(code, keystep, bool(reason), reason, index, vlm_s, dp_s)
