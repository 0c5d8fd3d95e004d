"""Recording hidden states: batched, left-padded forward passes with read-only hooks on chosen layers.

Poolings (how one hidden state is read from a prompt's tokens):

- ``last``: each row's last prompt token (the answer position: the prompt ends with ``Answer:``);
- ``code_mean``: the mean over the tokens of the code itself;
- ``answer_vulnerable`` / ``answer_secure`` (:data:`ANSWER_POOLINGS`): the last token of each answer, teacher-forced
  after the prompt (its KV cache reused), as the answer-token behaviour vector needs: recorded in the same pass as
  the others, so that vector costs no pass of its own.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..data.sample import Sample
from ..progress import Progress
from .batching import AutoBatch
from .forward import cache_kwarg
from .model import LayerMatcher, LoadedModel, decoder_layers, hidden_of, position_ids_for, resolve_layers
from .prompts import (
    DEFAULT_TEMPLATE,
    PromptBatch,
    PromptTemplate,
    answer_token_ids,
    build_prompt,
    tokenize_prompts,
)

__all__ = [
    "ANSWER_POOLINGS",
    "POOLINGS",
    "ActivationSink",
    "Activations",
    "Pooling",
    "batch_states",
    "extract_activations",
    "length_order",
]

Pooling = Literal["last", "code_mean"]
POOLINGS: tuple[Pooling, ...] = ("last", "code_mean")
#: The answer poolings: the hidden state at the last token of the vulnerable / secure answer after the prompt.
ANSWER_POOLINGS: tuple[str, ...] = ("answer_vulnerable", "answer_secure")


@dataclass
class Activations:
    """Hidden states ``[n_samples, n_layers, hidden]`` per pooling, in the order of the input samples.

    >>> import torch
    >>> acts = Activations([15], ["a", "b"], {"last": torch.ones(2, 1, 4)})
    >>> acts.get("last", 15).shape, acts.mean_norms("last")
    (torch.Size([2, 4]), {15: 2.0})
    """

    layers: list[int]
    sample_ids: list[str]
    by_pooling: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, pooling: str, layer: int | None = None) -> torch.Tensor:
        if pooling not in self.by_pooling:
            raise KeyError(f"pooling {pooling!r} was not recorded (have {sorted(self.by_pooling)})")
        acts = self.by_pooling[pooling]
        if layer is None:
            return acts
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded (have {self.layers})")
        return acts[:, self.layers.index(layer)]

    def mean_norms(self, pooling: str = "last") -> dict[int, float]:
        """Mean L2 norm of the hidden state per layer (the scale for relative steering strengths)."""
        acts = self.get(pooling)
        return {layer: float(acts[:, i].norm(dim=-1).mean()) for i, layer in enumerate(self.layers)}

    def subset(self, indices: Sequence[int]) -> Activations:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Activations(
            layers=list(self.layers),
            sample_ids=[self.sample_ids[i] for i in idx.tolist()],
            by_pooling={k: v.index_select(0, idx) for k, v in self.by_pooling.items()},
        )


class ActivationSink:
    """Collects unsteered hidden states as a side effect of detection passes (see ``detect_variants_modes``).

    ``rows[sample_id][pooling]`` is a ``[n_layers, hidden]`` tensor; :meth:`activations` assembles them.
    """

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, sample_id: str, pooling: str, value: torch.Tensor) -> None:
        self.rows.setdefault(sample_id, {})[pooling] = value.detach().float().cpu()

    def complete(self, sample_ids: Sequence[str], poolings: Sequence[str] = POOLINGS) -> bool:
        return all(p in self.rows.get(sid, {}) for sid in sample_ids for p in poolings)

    def activations(self, sample_ids: Sequence[str], poolings: Sequence[str] = POOLINGS) -> Activations:
        missing = [sid for sid in sample_ids if any(p not in self.rows.get(sid, {}) for p in poolings)]
        if missing:
            raise KeyError(f"no captured activations for {len(missing)} samples (e.g. {missing[0]})")
        by_pooling = {p: torch.stack([self.rows[sid][p] for sid in sample_ids]) for p in poolings}
        return Activations(layers=list(self.layers), sample_ids=list(sample_ids), by_pooling=by_pooling)


@contextmanager
def recording(
    model: Any, layers: Sequence[int], layer_matcher: LayerMatcher | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, ``out[layer]`` holds the hidden state output by each chosen layer in the last pass."""
    blocks = decoder_layers(model, layer_matcher)
    out: dict[int, torch.Tensor] = {}

    def make(layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            out[layer] = hidden_of(output).detach()

        return hook

    handles = [blocks[layer].register_forward_hook(make(layer)) for layer in layers]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where *mask* is true: ``[batch, seq, hidden]`` -> ``[batch, hidden]``."""
    weights = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


def length_order(lm: LoadedModel, texts: Sequence[str]) -> list[int]:
    """Indices sorted by token length (batching similar lengths wastes less padding)."""
    lengths = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return sorted(range(len(texts)), key=lambda i: lengths[i])


def _run_until(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> None:
    """One pass of *ids* (continuing *cache* when given), stopped by the deepest recording hook."""
    with contextlib.suppress(_StopForward):
        lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask)[:, -ids.shape[1] :],
            use_cache=cache is not None,
            **({cache_kwarg(lm.model): cache} if cache is not None else {}),
        )


@torch.no_grad()
def batch_states(
    lm: LoadedModel,
    batch: PromptBatch,
    layers: Sequence[int],
    poolings: Sequence[str] = POOLINGS,
    answers: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """The unsteered hidden states of one tokenised batch: ``{pooling: [batch, len(layers), hidden]}`` (CPU,
    float32). Each layer's output is reduced to the poolings inside its hook and moved to the CPU there (on the
    layer's own device, so a model split over GPUs works); the forward pass stops after the deepest of *layers*
    (non-negative, as :func:`resolve_layers` returns them), so no logits are computed. Answer poolings need
    *answers* (``{pooling: token ids}``): each answer continues the prompt's KV cache (kept up to that layer)."""
    from transformers import DynamicCache

    unknown = [p for p in poolings if p not in POOLINGS and p not in ANSWER_POOLINGS]
    if unknown:
        raise ValueError(f"unknown pooling {unknown[0]!r}; choose from {POOLINGS + ANSWER_POOLINGS}")
    later = [p for p in poolings if p in ANSWER_POOLINGS]
    if later and (answers is None or any(p not in answers for p in later)):
        raise ValueError(f"the poolings {later} need the answers' token ids")
    blocks = lm.layers
    deepest = max(layers)
    reduced: dict[str, list[torch.Tensor | None]] = {pooling: [None] * len(layers) for pooling in poolings}
    reading: list[str] = [
        p for p in poolings if p in POOLINGS
    ]  # what the running pass records (changed between passes)

    def make_hook(li: int, layer: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = hidden_of(output).detach()
            for pooling in reading:
                value = masked_mean(hidden.float(), batch.code_mask) if pooling == "code_mean" else hidden[:, -1]
                reduced[pooling][li] = value.float().cpu()
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(li, layer)) for li, layer in enumerate(layers)]
    try:
        cache = DynamicCache() if later else None
        _run_until(lm, batch.input_ids, batch.attention_mask, cache)
        for k, pooling in enumerate(later):
            reading[:] = [pooling]
            answer = list(answers[pooling])  # type: ignore[index]
            ids = torch.tensor(answer, device=batch.input_ids.device).expand(len(batch.input_ids), -1)
            mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
            _run_until(lm, ids, mask, cache if k == len(later) - 1 else copy.deepcopy(cache))
    finally:
        for handle in handles:
            handle.remove()
    return {
        pooling: torch.stack([t for t in per_layer if t is not None], dim=1) for pooling, per_layer in reduced.items()
    }


@torch.no_grad()
def extract_activations(
    lm: LoadedModel,
    samples: Sequence[Sample],
    layers: int | Sequence[int],
    poolings: Sequence[str] = POOLINGS,
    *,
    batch_size: int = 8,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
) -> Activations:
    """Run the model over *samples* and record the chosen layers' outputs at the chosen poolings
    (:func:`batch_states` per batch). On CUDA a batch that runs out of memory is run again in smaller batches
    (:class:`~vulnsteer.lm.batching.AutoBatch`).

    >>> acts = extract_activations(load_model(), samples, [10, -1], poolings=["last"])  # doctest: +SKIP
    >>> acts.get("last").shape  # doctest: +SKIP
    torch.Size([28, 2, 576])
    """
    for pos in poolings:
        if pos not in POOLINGS and pos not in ANSWER_POOLINGS:
            raise ValueError(f"unknown pooling {pos!r}; choose from {POOLINGS + ANSWER_POOLINGS}")
    wanted = any(p in ANSWER_POOLINGS for p in poolings)
    answers = dict(zip(ANSWER_POOLINGS, answer_token_ids(lm.tokenizer, template), strict=True)) if wanted else None
    chosen = resolve_layers(list(layers) if not isinstance(layers, int) else layers, lm.num_layers)
    prompts = [build_prompt(lm.tokenizer, s.code, s.language, template) for s in samples]
    order = length_order(lm, [p.text for p in prompts])
    out = {pos: torch.zeros(len(samples), len(chosen), lm.hidden_size) for pos in poolings}

    def run(rows: list[int]) -> dict[str, torch.Tensor]:
        batch = tokenize_prompts(lm.tokenizer, [prompts[i] for i in rows]).to(lm.device)
        return batch_states(lm, batch, chosen, poolings, answers)

    batcher = AutoBatch.for_model(lm, "extraction", batch_size)
    with Progress(len(samples), "activations", unit="sample", enabled=progress) as bar:
        for rows, values in batcher.map(order, run):
            index = torch.as_tensor(rows, dtype=torch.long)
            for pos, value in values.items():
                out[pos][index] = value
            bar.update(len(rows))
    return Activations(layers=chosen, sample_ids=[s.id for s in samples], by_pooling=dict(out))
