"""Evaluation in the simulator (design.md section 1, item 4; paper sections 4.2, 4.3, 5.1).

* `vlm_oracle`: the VLM+Oracle mode, a code writer in this process driving oracle solvers in a
  simulator worker process, one key-step line at a time;
* `policy_episodes`: the learned-policy modes (VLM+DP, flat DP, DP+Oracle), one action per step;
* `tasks`: the paper's task names and the registry task + arguments each is evaluated as;
* `runner`: jobs over parallel simulator workers, the per-episode JSONL, resume, retries;
* `evaluate`: `evaluate.py`'s work, a mode's policy from its checkpoints through the runner;
* `report`: Wilson intervals, the paper's Table 1 / Table 2 layouts, charts, captioned videos.

This package imports nothing heavy at import time: simulator workers import it too.
"""
