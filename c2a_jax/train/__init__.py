"""Training: losses, optimizer, train state, the jitted step, checkpoints, metrics and the loop (issues 6 and 7).

The loop is shared by the VLM and the diffusion policy and knows nothing about either: it takes a
model constructor, a loss ``loss_fn(model, batch, rng) -> (loss, metrics)`` and a batch iterator
factory (`c2a_jax.train.loop.train`). One idea per module:

* `vlm_loss`: the code-writing VLM's objective, next-token cross-entropy on the answer tokens of
  the input pipeline's batches (`c2a_jax.data.vlm`), with big_vision's prefix-LM attention;
* `optimizer`: AdamW, warmup + cosine, clipping, parameter groups and freezing by path regex;
* `state`: the `TrainState` pytree and its pure init function (sharded creation, abstract state);
* `step`: the functional train step (value_and_grad, microbatch accumulation) and its jit;
* `resumable`: the data-position protocol and the counting wrapper for deterministic iterators;
* `checkpoint`: orbax checkpoints with config, tokenizer, statistics and data position;
* `metrics`: throughput, MFU, JSONL / TensorBoard / progress bar;
* `loop`: `train` and `restore_checkpoint`.
"""
