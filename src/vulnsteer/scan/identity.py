"""A model's identity (:class:`~vulnsteer.lm.identity.ModelIdentity`) without loading it.

Loading a model and hashing its weights takes seconds; a rescan whose functions are all cached needs neither.
The identity a real load measured is recorded under a key made of the model's local files (names, sizes,
modification times), the requested device and dtype, and the GPU visibility; the next scan with the same key
reads it back instead of loading. Whenever the model is loaded anyway the measured identity wins, and a recorded
one that disagrees is replaced. Hub ids have no local files and no key: they are always loaded.

>>> import tempfile
>>> from pathlib import Path
>>> store = Path(tempfile.mkdtemp())
>>> ident = ModelIdentity("tiny", "f00d", "beef", "float32", "cpu")
>>> remember_identity(store, "k1", ident)
>>> recall_identity(store, "k1") == ident, recall_identity(store, "k2")
(True, None)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..io import write_json
from ..lm.identity import ModelIdentity

__all__ = ["location_key", "recall_identity", "remember_identity"]


def location_key(location: Path, device: str | None, dtype: str | None, quantize: str = "none") -> str:
    """A key for a model's local files (a ``.gguf`` file, or the regular files directly in a model folder) as
    loaded with *device*, *dtype* (both as requested: the defaults depend on whether a GPU is visible, which
    the key includes) and *quantize*.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text("{}")
    >>> location_key(folder, "cpu", None) == location_key(folder, "cpu", "float32")
    False
    """
    files = [location] if location.is_file() else sorted(p for p in location.iterdir() if p.is_file())
    stats = []
    for file in files:
        st = file.stat()
        stats.append([file.name, st.st_size, st.st_mtime_ns])
    parts = {
        "location": str(location),
        "files": stats,
        "device": device,
        "dtype": dtype,
        "gpu": [os.environ.get("CUDA_VISIBLE_DEVICES"), Path("/dev/nvidiactl").exists()],
    }
    if quantize != "none":  # (only then: the keys of models that are not quantised are unchanged)
        parts["quantize"] = quantize
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def recall_identity(store: Path, key: str) -> ModelIdentity | None:
    """The identity recorded under *key*, or None (absent, unreadable or malformed records are ignored); see the
    module docstring for an example."""
    try:
        data = json.loads((store / f"{key}.json").read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        return ModelIdentity.from_dict(data["identity"], str(store / f"{key}.json"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remember_identity(store: Path, key: str, identity: ModelIdentity) -> None:
    """Record *identity* under *key* (atomically); see the module docstring for an example."""
    write_json(store / f"{key}.json", {"key": key, "identity": identity.to_dict()})
