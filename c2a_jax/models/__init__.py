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
``position``     learned rows indexed by position: position embeddings, T5's relative-position
                 buckets, the attention pool's learned queries
``layers``       stacked (scanned) layers, when a model scans its blocks
``num_heads``    attention heads, not flattened (T5's relative-position bias table)
``conv_in``      a convolution kernel's input channels (ResNet, 1-D UNet)
``conv_out``     a convolution's output channels (kernel, bias, FiLM scale/bias)
``window``       a convolution kernel's spatial/temporal taps
``time``         the diffusion-step embedding width
``cond``         the UNet's global conditioning width (step embedding + observation vector)
``features``     the input width of a projection into the policy's token width (T5 width,
                 camera feature, proprioception, keypoints)
==============  ==========================================================================
"""

LOGICAL_AXES = (
    "vocab",
    "embed",
    "mlp",
    "mlp_fused",
    "qkv_fused",
    "heads",
    "kv",
    "norm",
    "patch",
    "position",
    "layers",
    "num_heads",
    "conv_in",
    "conv_out",
    "window",
    "time",
    "cond",
    "features",
)
