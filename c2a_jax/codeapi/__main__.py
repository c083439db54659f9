"""Print the robot-API reference: `python -m c2a_jax.codeapi > docs/api.md`."""

from c2a_jax.codeapi.registry import api_reference_markdown

print(api_reference_markdown(), end="")
