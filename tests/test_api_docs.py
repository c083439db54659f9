"""docs/api.md is the registry's own table, regenerated whenever the registry changes."""

import os

from c2a_jax.codeapi.registry import FUNCTIONS, api_reference_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_api_reference_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        assert f.read() == api_reference_markdown(), "run: python -m c2a_jax.codeapi > docs/api.md"


def test_every_function_is_documented():
    table = api_reference_markdown()
    for name, spec in FUNCTIONS.items():
        assert f"`{name}(" in table
        assert spec.doc.endswith(".")
