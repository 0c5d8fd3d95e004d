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

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import torch
from tqdm.auto import tqdm

from ..data.sample import Sample
from ..lm.activations import length_order, recording
from ..lm.forward import forward
from ..lm.model import LoadedModel, resolve_layers
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate, answer_token_ids, build_prompt, tokenize_prompts
from .vectors import Provenance, SteeringVector, dataset_hash

__all__ = ["answer_vector", "projection_sigmas"]


def projection_sigmas(hidden: Mapping[int, torch.Tensor], directions: Mapping[int, torch.Tensor]) -> dict[int, float]:
    """Per layer: the standard deviation of ``hidden[layer] [n, h]`` projected on the unit ``directions[layer]``."""
    out: dict[int, float] = {}
    for layer, d in directions.items():
        unit = d.float() / d.float().norm().clamp(min=1e-12)
        proj = hidden[layer].float() @ unit
        out[layer] = float(proj.std(unbiased=False)) if proj.numel() > 1 else 0.0
    return out


@torch.no_grad()
def _answer_states(
    lm: LoadedModel,
    texts: Sequence[str],
    prompts: Sequence[object],
    layers: Sequence[int],
    answers: Sequence[list[int]],
) -> list[dict[int, torch.Tensor]]:
    """For one batch: per answer, ``{layer: [batch, hidden]}`` at the answer's last token (teacher-forced after the
    prompt, reusing the prompt's KV cache)."""
    batch = tokenize_prompts(lm.tokenizer, prompts).to(lm.device)  # type: ignore[arg-type]
    _, cache = forward(lm, batch.input_ids, batch.attention_mask, None)
    states = []
    for answer in answers:
        ids = torch.tensor(answer, device=lm.device).expand(len(texts), -1)
        mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
        with recording(lm, layers) as seen:
            forward(lm, ids, mask, copy.deepcopy(cache))
        states.append({layer: seen[layer][:, -1].float().cpu() for layer in layers})
    return states


def answer_vector(
    lm: LoadedModel,
    samples: Sequence[Sample],
    layers: int | Sequence[int],
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = 8,
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
    chosen = resolve_layers(list(layers) if not isinstance(layers, int) else layers, lm.num_layers)
    vuln, secure = answer_token_ids(lm.tokenizer, template)
    prompts = [build_prompt(lm.tokenizer, s.code, s.language, template) for s in samples]
    order = length_order(lm, [p.text for p in prompts])
    per_answer: list[dict[int, list[torch.Tensor]]] = [{layer: [] for layer in chosen} for _ in range(2)]
    bar = tqdm(total=len(samples), desc="answer vector", unit="sample", disable=not progress)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        states = _answer_states(lm, [prompts[i].text for i in rows], [prompts[i] for i in rows], chosen, [vuln, secure])
        for k, found in enumerate(states):
            for layer in chosen:
                per_answer[k][layer].append(found[layer])
        bar.update(len(rows))
    bar.close()
    h_vuln = {layer: torch.cat(per_answer[0][layer]) for layer in chosen}
    h_secure = {layer: torch.cat(per_answer[1][layer]) for layer in chosen}
    directions = {layer: h_secure[layer].mean(0) - h_vuln[layer].mean(0) for layer in chosen}
    both = {layer: torch.cat([h_vuln[layer], h_secure[layer]]) for layer in chosen}
    norms = {layer: float(both[layer].norm(dim=-1).mean()) for layer in chosen}
    prov = Provenance(
        model_id=lm.model_id,
        model_fingerprint=lm.fingerprint,
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
        extra={
            **lm.weights_identity,
            "model_type": str(getattr(lm.model.config, "model_type", "")),
            "n_prompts": len(samples),
        },
    )
    return SteeringVector(directions, prov)
