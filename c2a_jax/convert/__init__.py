"""Hugging Face safetensors checkpoints in and out of our NNX models.

`safetensors_io` reads and writes state dicts (single files and sharded ``*.index.json``
checkpoints, bf16 included); one module per model family holds its key mapping table, checks
every shape, and names missing and unexpected keys when a checkpoint does not fit.
"""
