"""YAML text a person or a tool wrote, read without letting its shape crash the reader."""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, with a document nested too deeply for the parser (PyYAML recurses once per level:
    100,000 `[` raised RecursionError, a 3,000-line traceback) raised as a yaml.YAMLError, so every caller's
    one line naming the file ("<file>: not YAML: ...") covers it too."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to read") from None
