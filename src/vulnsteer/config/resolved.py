"""Writing the resolved configuration as TOML (every key, commented with its help text)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .experiment import SECTIONS, ExperimentConfig, config_document, key_info

__all__ = ["dump_config"]


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def dump_config(config: ExperimentConfig, header: str = "") -> str:
    """TOML text of the resolved config, each key commented with its help text; parses back to *config*."""
    doc = config_document(config)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if "description" in doc:
        lines.append(f"description = {_toml_value(doc['description'])}")
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for key, value in doc[section].items():
            comment = key_info(section, key).help
            if value is None:
                lines.append(f"# {_toml_key(key)}: not set ({comment})")
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}  # {comment}")
    return "\n".join(lines) + "\n"
