"""Flax NNX models: the code-writing VLM (Phi-3 decoder, CLIP ViT, LLaVA) and the diffusion policy.

Every parameter carries *logical* axis names (MaxText's scheme, anchors.md sections 4 and 7); the
mapping to mesh axes (``data``, ``fsdp``, ``tensor``) lives in configs and ``c2a_jax.parallel``, never
here. Parameters are created with ``eager_sharding=False`` so a model builds without a mesh (tests,
conversion on CPU); sharding is applied when a train step places the state on a mesh.

Logical axis names used by the models:

==============  ==========================================================================
``vocab``        token vocabulary (embedding rows, LM head columns)
``embed``        the residual stream width (hidden_size)
``mlp``          the MLP hidden width (intermediate_size)
``mlp_fused``    a fused gate+up projection output (2 x intermediate_size, Hugging Face layout)
``qkv_fused``    a fused q/k/v projection output ((heads + 2 kv_heads) x head_dim, HF layout)
``heads``        query heads x head_dim, flattened (an attention output projection's input)
``kv``           key/value heads x head_dim, flattened
``norm``         a normalisation scale or bias
``patch``        flattened conv patch (kernel height x width x channels)
``position``     learned position-embedding rows
``layers``       stacked (scanned) layers, when a model scans its blocks
==============  ==========================================================================
"""

LOGICAL_AXES = ("vocab", "embed", "mlp", "mlp_fused", "qkv_fused", "heads", "kv", "norm", "patch", "position", "layers")
