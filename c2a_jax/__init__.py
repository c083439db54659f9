"""c2a-jax: hierarchical robot policies learned from code (From Code to Action), in JAX/Flax.

Subpackages, in the order data moves through them (design.md section 4): `codeapi` (the robot-API
code language), `sim` (ClevrSkills on ManiSkill3), `data`, `models`, `convert`, `parallel`,
`train`, `infer`, `eval`. Importing the package is cheap: heavy dependencies load on first use.
"""

__version__ = "0.1.0"
