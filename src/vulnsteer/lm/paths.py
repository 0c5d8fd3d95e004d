"""Where vulnsteer keeps its files, and which local files a model spec names. No torch: cheap to import, so a
command that only reads caches (a ``scan`` whose results are all cached) starts instantly.

>>> is_default_model(None), is_default_model("default"), is_default_model("Qwen/Qwen2.5-1.5B-Instruct")
(True, True, False)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "cache_root", "embedded_model_dir", "is_default_model", "local_model_location"]

#: Name of the embedded default model (``--model`` default).
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Root of vulnsteer's cache (``$VULNSTEER_CACHE`` or ``~/.cache/vulnsteer``).

    >>> cache_root().is_absolute() or "VULNSTEER_CACHE" in os.environ
    True
    """
    env = os.environ.get("VULNSTEER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vulnsteer"


def embedded_model_dir() -> Path:
    """Folder of the embedded model's safetensors conversion (made on its first load).

    >>> embedded_model_dir().name == DEFAULT_MODEL
    True
    """
    return cache_root() / "models" / DEFAULT_MODEL


def is_default_model(spec: str | None) -> bool:
    """True for the specs that name the embedded default model (none, ``""``, ``default``, its name)."""
    return spec in (None, "", DEFAULT_MODEL, "default")


def local_model_location(spec: str | None) -> Path | None:
    """The local file or folder *spec* loads from, without loading, converting or downloading anything: the
    embedded model's conversion (None until it exists), a ``.gguf`` file, or a model folder holding
    ``config.json``; None for anything else (a hub id).

    >>> local_model_location("Qwen/Qwen2.5-1.5B-Instruct") is None
    True
    """
    if is_default_model(spec):
        folder = embedded_model_dir()
        return folder if (folder / "config.json").is_file() else None
    assert spec is not None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return path.resolve() if path.is_file() else None
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    return None
