"""Prompt rendering: ClevrSkills' placeholder prompts in natural language (spec 3.0.4).

A module of its own, importing nothing of the simulator, so that data tools (the converter of the
released dataset, the tokenizer corpus) render prompts without loading SAPIEN.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\{(obj|tex|ks|pos):([^}]*)\}")


def render_prompt(prompt: str, textures: dict[str, str], clean: bool = False) -> str:
    """Natural-language form of a placeholder prompt (spec 3.0.4).

    ``{obj:red cube_12}`` -> " the red cube" (the name before the first underscore),
    ``{tex:red cube_12}`` -> its texture name, ``{ks:...}``/``{pos:...}`` -> raw text; runs of
    spaces collapse to one. With `clean`, a doubled "the the" and leading space are removed.
    """

    def replace(match: re.Match) -> str:
        kind, key = match.group(1), match.group(2)
        if kind == "obj":
            return " the " + key.split("_")[0]
        if kind == "tex":
            return textures.get(key, key)
        return f"{kind}:{key}"

    text = re.sub(r" +", " ", _TOKEN.sub(replace, prompt))
    if clean:
        text = re.sub(r"\bthe the\b", "the", text).strip()
    return text
