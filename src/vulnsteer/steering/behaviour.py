"""Behaviour vectors: what to push. The answer-token contrast (CAA-style) needs no labels.

``answer`` vector: for each training prompt, the hidden state at the answer token when the assistant turn
continues with the *vulnerable* answer and when it continues with the *secure* one; the vector is
``mean(h | secure answer) - mean(h | vulnerable answer)`` (vulnsteer's convention: it points toward secure, so a
positive strength pushes toward "vulnerable"). It isolates the model's own answer behaviour, whatever the code.

Every behaviour vector records, per layer, the spread (standard deviation) of the training activations projected
on its unit direction (``Provenance.layer_sigmas``), so a strength can be given in ``sigma`` units (ITI's
"alpha x the spread of the projections").

>>> import torch
>>> projection_sigmas({3: torch.tensor([[1.0, 0.0], [3.0, 0.0]])}, {3: torch.tensor([2.0, 0.0])})
{3: 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import torch

from ..config.defaults import DEFAULT_BATCH_SIZE
from ..data.sample import Sample, dataset_hash
from ..lm.activations import ANSWER_POOLINGS, Activations, extract_activations
from ..lm.model import LoadedModel
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from .vectors import Provenance, SteeringVector, recorded_identity, unit_direction

__all__ = ["answer_vector", "answer_vector_from", "projection_sigmas"]


def projection_sigmas(hidden: Mapping[int, torch.Tensor], directions: Mapping[int, torch.Tensor]) -> dict[int, float]:
    """Per layer: the standard deviation of ``hidden[layer] [n, h]`` projected on the unit ``directions[layer]``."""
    out: dict[int, float] = {}
    for layer, d in directions.items():
        unit = unit_direction(d)
        proj = hidden[layer].float() @ unit
        out[layer] = float(proj.std(unbiased=False)) if proj.numel() > 1 else 0.0
    return out


def answer_vector(
    lm: LoadedModel,
    samples: Sequence[Sample],
    layers: int | Sequence[int],
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cwe: str = "any",
    progress: bool = True,
) -> SteeringVector:
    """The answer-token contrast vector over the prompts of *samples* (labels are not used).

    >>> vector = answer_vector(load_model(), load_builtin()[:40], [15])  # doctest: +SKIP
    >>> vector.provenance.method, vector.provenance.layer_sigmas[15] > 0  # doctest: +SKIP
    ('answer', True)
    """
    if not samples:
        raise ValueError("the answer vector needs at least one prompt")
    acts = extract_activations(
        lm, samples, layers, ANSWER_POOLINGS, batch_size=batch_size, template=template, progress=progress
    )
    return answer_vector_from(lm, acts, samples, cwe=cwe)


def answer_vector_from(
    lm: LoadedModel,
    acts: Activations,
    samples: Sequence[Sample],
    layers: Sequence[int] | None = None,
    cwe: str = "any",
) -> SteeringVector:
    """The answer-token contrast from activations recorded with the answer poolings (``answer_vulnerable``,
    ``answer_secure``: e.g. from the activation cache, in the pass that records the others) over *samples*, at
    *layers* (default: every recorded layer).

    >>> acts = extract_activations(lm, train, [15], ["last", *ANSWER_POOLINGS])  # doctest: +SKIP
    >>> answer_vector_from(lm, acts, train).provenance.method  # doctest: +SKIP
    'answer'
    """
    chosen = list(layers) if layers else list(acts.layers)
    if len(acts.sample_ids) != len(samples) or not samples:
        raise ValueError(f"the activations hold {len(acts.sample_ids)} prompts but {len(samples)} samples were given")
    h_vuln = {layer: acts.get(ANSWER_POOLINGS[0], layer) for layer in chosen}
    h_secure = {layer: acts.get(ANSWER_POOLINGS[1], layer) for layer in chosen}
    directions = {layer: h_secure[layer].mean(0) - h_vuln[layer].mean(0) for layer in chosen}
    both = {layer: torch.cat([h_vuln[layer], h_secure[layer]]) for layer in chosen}
    norms = {layer: float(both[layer].norm(dim=-1).mean()) for layer in chosen}
    identity = lm.identity
    prov = Provenance(
        model_id=identity.id,
        model_fingerprint=identity.fingerprint,
        hidden_size=lm.hidden_size,
        layers=tuple(chosen),
        pooling="answer",
        method="answer",
        cwe=cwe,
        n_vulnerable=0,
        n_secure=0,
        dataset_hash=dataset_hash(samples),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        layer_norms=norms,
        layer_sigmas=projection_sigmas(both, directions),
        extra={**recorded_identity(identity), "n_prompts": len(samples)},
    )
    return SteeringVector(directions, prov)
