"""Inference: the VLM's batched greedy decoding with a KV cache and the paper's early stop
(`decode`), and the code writer that keeps the memory buffer across control steps
(`code_writer`). The hierarchical controller joins them with the diffusion policy (issue 8).
"""
