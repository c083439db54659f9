"""Training: losses, optimizer, train state, loops and checkpoints (issues 6 and 7).

`vlm_loss` is the code-writing VLM's objective: next-token cross-entropy on the answer tokens of
the input pipeline's batches (`c2a_jax.data.vlm`), with big_vision's prefix-LM attention.
"""
