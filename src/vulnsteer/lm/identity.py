"""A model's identity, as one value: what vectors, saved detectors, runs, caches and Ray workers record of the model
they were made with, and the one check that refuses another model.

Torch-free (a rescan that loads no model still knows the identity it recorded). The identity of a loaded model is
:attr:`vulnsteer.lm.model.LoadedModel.identity`.

>>> a = ModelIdentity("tiny", "f00d", "beef", "float32", "cpu")
>>> ModelIdentity.from_dict(a.to_dict(), "x.json") == a
True
>>> check_same_model(a, a, "v.safetensors")
[]
>>> check_same_model(a, ModelIdentity("big", "cafe", "beef", "float32", "cpu"), "v.safetensors")
Traceback (most recent call last):
...
vulnsteer.lm.identity.ModelMismatchError: v.safetensors: made with tiny (fingerprint f00d), not this model big \
(fingerprint cafe); pass --allow-model-mismatch to use it anyway
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ModelIdentity", "ModelMismatchError", "check_same_model"]


class ModelMismatchError(ValueError):
    """Something made with one model (a vector, a saved detector, a run's choices, a Ray worker's copy) meets
    another; the message names the file (or the worker) and what differs."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model, and in which numbers.

    Attributes:
        id: what the model was loaded from (hub id, folder, ``.gguf`` file, the embedded default); informative only.
        fingerprint: a hash of the parameter names and shapes: the architecture.
        weights_digest: a hash of the weights (in :attr:`dtype`): tells two fine-tunes of one architecture apart;
            empty when unknown (files written before it was recorded).
        dtype: the weights' dtype (``float32``, ``bfloat16`` ...); empty when unknown.
        device_type: ``cpu``, ``cuda``, ``mps`` (numbers differ between them); empty when unknown.
        model_type: the Hugging Face ``model_type`` (``llama``, ``qwen2`` ...; llama.cpp's ``model_hint``).
        quantize: how the weights were quantised after loading (``model.quantize``: ``int8``), empty when they
            were not (or unknown): an int8 model's numbers differ from its float32 weights' (its
            :attr:`weights_digest` and :attr:`dtype` are those of the weights it was quantised from).
    """

    id: str
    fingerprint: str
    weights_digest: str = ""
    dtype: str = ""
    device_type: str = ""
    model_type: str = ""
    quantize: str = ""

    def to_dict(self) -> dict[str, str]:
        """The fields as a mapping; ``quantize`` only when set (what models that were not quantised wrote before
        it existed is unchanged).

        >>> int8 = ModelIdentity("m", "f", quantize="int8")
        >>> "quantize" in ModelIdentity("m", "f").to_dict(), int8.to_dict()["quantize"]
        (False, 'int8')
        """
        out = asdict(self)
        if not self.quantize:
            del out["quantize"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ModelIdentity:
        """The identity a :meth:`to_dict` mapping holds (absent optional fields are unknown); a mapping that holds
        none is a :class:`ValueError` naming *where*.

        >>> ModelIdentity.from_dict({"id": "m", "fingerprint": "f"}, "chosen.json").weights_digest
        ''
        """
        if not isinstance(data, Mapping) or not all(isinstance(data.get(k), str) for k in ("id", "fingerprint")):
            raise ValueError(f"{where}: no model identity (fields 'id' and 'fingerprint')")
        return cls(**{f.name: str(data.get(f.name) or "") for f in fields(cls)})

    def digest(self) -> str:
        """A short hash of what decides the numbers (architecture, weights, dtype, device type, quantisation; not
        the id): the model's part of a cache key, so a score cached from float32 is never reused for int8.

        >>> a, b = ModelIdentity("a", "f", "w", "float32", "cpu"), ModelIdentity("b", "f", "w", "float32", "cpu")
        >>> int8 = ModelIdentity("a", "f", "w", "float32", "cpu", quantize="int8")
        >>> a.digest() == b.digest(), a.digest() == int8.digest()
        (True, False)
        """
        decisive = [self.fingerprint, self.weights_digest, self.dtype, self.device_type]
        if self.quantize:  # (appended only when set: the digests of models that were not quantised are unchanged)
            decisive.append(self.quantize)
        return hashlib.sha256(json.dumps(decisive).encode()).hexdigest()[:16]


def check_same_model(
    made_with: ModelIdentity, model: ModelIdentity, where: str, *, allow: bool = False, numbers: bool = False
) -> list[str]:
    """Refuse *model* when *made_with* (what *where*, a file or a worker, records) is another model: another
    architecture, or other weights of it in the same dtype (a digest in another dtype is no evidence); with
    *numbers*, also another dtype, device type or quantisation (the same numbers are expected, as from a Ray
    worker). What records no fingerprint cannot be checked and is refused too; other unknown fields (empty) are
    not compared.

    Raises :class:`ModelMismatchError`, one message format naming *where*; with *allow*, returns the messages as
    warnings instead (an empty list when the models agree). See the module docstring for an example.
    """
    problems = []
    if not made_with.fingerprint:  # (a llama.cpp control vector made by another tool, say)
        kind = f"a {made_with.model_type} model" if made_with.model_type else "an unknown model"
        problems.append(f"records no model fingerprint (made by another tool for {kind}), so it cannot be checked")
    elif model.fingerprint and made_with.fingerprint != model.fingerprint:
        problems.append(
            f"made with {made_with.id} (fingerprint {made_with.fingerprint}), not this model {model.id} "
            f"(fingerprint {model.fingerprint})"
        )
    elif (
        made_with.weights_digest
        and model.weights_digest
        and made_with.weights_digest != model.weights_digest
        and (numbers or made_with.dtype == model.dtype)
    ):
        problems.append(
            f"made with other weights of this architecture (weights digest {made_with.weights_digest} in "
            f"{made_with.dtype or 'an unknown dtype'}, this model has {model.weights_digest} in {model.dtype})"
        )
    for name in ("dtype", "device_type") if numbers and not problems else ():
        theirs, ours = getattr(made_with, name), getattr(model, name)
        if theirs and ours and theirs != ours:
            problems.append(f"made with {name.replace('_', ' ')} {theirs}, this model has {ours}")
    if numbers and not problems and made_with.quantize != model.quantize:
        theirs, ours = made_with.quantize or "no quantisation", model.quantize or "no quantisation"
        problems.append(f"made with {theirs}, this model has {ours}")
    messages = [f"{where}: {problem}" for problem in problems]
    if messages and not allow:
        raise ModelMismatchError(f"{messages[0]}; pass --allow-model-mismatch to use it anyway")
    return messages
