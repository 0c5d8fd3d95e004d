"""Recording hidden states: batched, left-padded forward passes with read-only hooks on chosen layers.

Poolings (how one hidden state is read from a prompt's tokens):

- ``last``: each row's last prompt token (the answer position: the prompt ends with ``Answer:``);
- ``code_mean``: the mean over the tokens of the code itself;
- ``code_max``: the maximum over the tokens of the code, per dimension;
- ``answer_vulnerable`` / ``answer_secure`` (:data:`ANSWER_POOLINGS`): the last token of each answer, teacher-forced
  after the prompt (its KV cache reused), as the answer-token behaviour vector needs: recorded in the same pass as
  the others, so that vector costs no pass of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.defaults import DEFAULT_BATCH_SIZE, DEFAULT_POOLING
from ..config.vocabulary import CODE_POOLINGS, POOLINGS
from ..data.sample import Sample
from ..progress import Progress
from .backend import Readout, backend_of
from .backend import masked_mean as masked_mean  # re-exported: callers import it from here
from .batching import AutoBatch
from .forward import cache_kwarg
from .identity import ModelIdentity
from .model import LayerMatcher, LoadedModel, decoder_layers, position_ids_for, resolve_layers
from .prompts import (
    DEFAULT_TEMPLATE,
    PromptBatch,
    PromptTemplate,
    answer_token_ids,
    build_prompt,
    code_token_counts,
    tokenize_prompts,
)

__all__ = [
    "ANSWER_POOLINGS",
    "SINK_POOLINGS",
    "ActivationSink",
    "Activations",
    "batch_states",
    "extract_activations",
    "length_order",
]

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
    #: the identity of the model they were recorded from (None when not known): a vector fitted on them records
    #: it (:func:`~vulnsteer.steering.vectors.fit_vector`)
    model: ModelIdentity | None = None
    #: per sample, how many prompt tokens overlap the code (what a probe's length term reads); None if not counted
    code_tokens: torch.Tensor | None = None

    def get(self, pooling: str, layer: int | None = None) -> torch.Tensor:
        if pooling not in self.by_pooling:
            raise KeyError(f"pooling {pooling!r} was not recorded (have {sorted(self.by_pooling)})")
        acts = self.by_pooling[pooling]
        if layer is None:
            return acts
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded (have {self.layers})")
        return acts[:, self.layers.index(layer)]

    def mean_norms(self, pooling: str = DEFAULT_POOLING) -> dict[int, float]:
        """Mean L2 norm of the hidden state per layer (the scale for relative steering strengths)."""
        acts = self.get(pooling)
        return {layer: float(acts[:, i].norm(dim=-1).mean()) for i, layer in enumerate(self.layers)}

    def subset(self, indices: Sequence[int]) -> Activations:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Activations(
            layers=list(self.layers),
            sample_ids=[self.sample_ids[i] for i in idx.tolist()],
            by_pooling={k: v.index_select(0, idx) for k, v in self.by_pooling.items()},
            model=self.model,
            code_tokens=None if self.code_tokens is None else self.code_tokens.index_select(0, idx),
        )


#: What an :class:`ActivationSink` records: the answer position and the code mean.
SINK_POOLINGS: tuple[str, ...] = ("last", "code_mean")


class ActivationSink:
    """Collects unsteered hidden states as a side effect of detection passes (see ``detect_variants_modes``).

    ``rows[sample_id][pooling]`` is a ``[n_layers, hidden]`` tensor; :meth:`activations` assembles them.
    """

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, sample_id: str, pooling: str, value: torch.Tensor) -> None:
        self.rows.setdefault(sample_id, {})[pooling] = value.detach().float().cpu()

    def complete(self, sample_ids: Sequence[str], poolings: Sequence[str] = SINK_POOLINGS) -> bool:
        return all(p in self.rows.get(sid, {}) for sid in sample_ids for p in poolings)

    def activations(self, sample_ids: Sequence[str], poolings: Sequence[str] = SINK_POOLINGS) -> Activations:
        missing = [sid for sid in sample_ids if any(p not in self.rows.get(sid, {}) for p in poolings)]
        if missing:
            raise KeyError(f"no captured activations for {len(missing)} samples (e.g. {missing[0]})")
        by_pooling = {p: torch.stack([self.rows[sid][p] for sid in sample_ids]) for p in poolings}
        return Activations(layers=list(self.layers), sample_ids=list(sample_ids), by_pooling=by_pooling)


@contextmanager
def recording(
    model: Any, layers: Sequence[int], layer_matcher: LayerMatcher | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, ``out[layer]`` holds the hidden state output by each chosen layer in the last pass.

    *model* is a bare model (forward hooks) or a :class:`LoadedModel` (its backend records; the passes must run
    through :func:`~vulnsteer.lm.forward.forward`).

    >>> with recording(lm, [3]) as seen:  # doctest: +SKIP
    ...     forward(lm, batch.input_ids, batch.attention_mask, None)
    >>> seen[3].shape  # doctest: +SKIP
    torch.Size([2, 40, 576])
    """
    backend, module, matcher = backend_of(model)
    with backend.recording(module, decoder_layers(module, layer_matcher or matcher), layers) as out:
        yield out


def length_order(lm: LoadedModel, texts: Sequence[str], buckets: bool = True) -> list[int]:
    """The order in which batches take *texts*: length buckets, i.e. sorted by token count (stable: equal counts
    keep their order), so each batch holds prompts of similar lengths and left padding wastes little; or, with
    ``buckets=False``, as given. Callers write each result back at its text's index, so the order changes no
    result's place, and under left padding (exact positions and masks) no result either, up to the last bits of
    matrix products of other shapes (tested).

    >>> length_order(lm, ["a b c", "a", "a b"]), length_order(lm, ["a b c", "a"], buckets=False)  # doctest: +SKIP
    ([1, 2, 0], [0, 1])
    """
    if not buckets:
        return list(range(len(texts)))
    lengths = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return sorted(range(len(texts)), key=lambda i: lengths[i])


@torch.no_grad()
def batch_states(
    lm: LoadedModel,
    batch: PromptBatch,
    layers: Sequence[int],
    poolings: Sequence[str] = POOLINGS,
    answer_tokens: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """The unsteered hidden states of one tokenised batch: ``{pooling: [batch, len(layers), hidden]}`` (CPU,
    float32), read by the model's backend (:meth:`~vulnsteer.lm.backend.Backend.states`). Each layer's output is
    reduced to the poolings where it is read and moved to the CPU there (on the layer's own device, so a model
    split over GPUs works); the forward pass stops after the deepest of *layers* (non-negative, as
    :func:`resolve_layers` returns them), so no logits are computed. Answer poolings need *answer_tokens*
    (``{pooling: token ids}``): each answer continues the prompt's KV cache (kept up to the deepest layer).

    >>> batch_states(lm, batch, [3, 5], ["last"])["last"].shape  # doctest: +SKIP
    torch.Size([2, 2, 576])
    """
    from transformers import DynamicCache

    unknown = [p for p in poolings if p not in POOLINGS and p not in ANSWER_POOLINGS]
    if unknown:
        raise ValueError(f"unknown pooling {unknown[0]!r}; choose from {POOLINGS + ANSWER_POOLINGS}")
    later = [p for p in poolings if p in ANSWER_POOLINGS]
    if later and (answer_tokens is None or any(p not in answer_tokens for p in later)):
        raise ValueError(f"the poolings {later} need the answers' token ids")
    backend, model, _ = backend_of(lm)
    if later and backend.remote:
        raise ValueError("the answer poolings continue a KV cache kept here: they need a local model, not --remote")
    cache = DynamicCache() if later else None

    def states(
        ids: torch.Tensor, mask: torch.Tensor, read: tuple[str, ...], past: Any
    ) -> list[dict[str, torch.Tensor]]:
        kwargs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids_for(mask)[:, -ids.shape[1] :],
            "use_cache": past is not None,
            **({cache_kwarg(model): past} if past is not None else {}),
        }
        code_mask = batch.code_mask if {"code_mean", "code_max"} & set(read) else None
        return backend.states(model, lm.layers, Readout(tuple(layers), read, code_mask), kwargs)

    first: tuple[str, ...] = tuple(p for p in poolings if p in POOLINGS)
    per_layer = states(batch.input_ids, batch.attention_mask, first, cache)
    out: dict[str, torch.Tensor] = {
        pooling: torch.stack([pooled[pooling] for pooled in per_layer], dim=1) for pooling in first
    }
    for k, pooling in enumerate(later):
        tokens = list(answer_tokens[pooling])  # type: ignore[index]
        ids = torch.tensor(tokens, device=batch.input_ids.device).expand(len(batch.input_ids), -1)
        mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
        got = states(ids, mask, ("last",), cache if k == len(later) - 1 else copy.deepcopy(cache))
        out[pooling] = torch.stack([pooled["last"] for pooled in got], dim=1)
    return out


@torch.no_grad()
def extract_activations(
    lm: LoadedModel,
    samples: Sequence[Sample],
    layers: int | Sequence[int],
    poolings: Sequence[str] = POOLINGS,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
    desc: str = "activations",
    buckets: bool = True,
) -> Activations:
    """Run the model over *samples* and record the chosen layers' outputs at the chosen poolings
    (:func:`batch_states` per batch). Where only the code poolings are read, each prompt ends at its last code
    token (the tokens after it cannot change the code tokens' states, so they are not run). On CUDA a batch that
    runs out of memory is run again in smaller batches (:class:`~vulnsteer.lm.batching.AutoBatch`). *desc* names
    the progress phase (say which samples). Batches take the samples in length buckets (:func:`length_order`;
    ``buckets=False``: in the order given). Samples whose prompts are the same text are run once and share its
    rows.

    >>> acts = extract_activations(load_model(), samples, [10, -1], poolings=["last"])  # doctest: +SKIP
    >>> acts.get("last").shape  # doctest: +SKIP
    torch.Size([28, 2, 576])
    """
    for pos in poolings:
        if pos not in POOLINGS and pos not in ANSWER_POOLINGS:
            raise ValueError(f"unknown pooling {pos!r}; choose from {POOLINGS + ANSWER_POOLINGS}")
    wanted = any(p in ANSWER_POOLINGS for p in poolings)
    answer_tokens = (
        dict(zip(ANSWER_POOLINGS, answer_token_ids(lm.tokenizer, template), strict=True)) if wanted else None
    )
    chosen = resolve_layers(list(layers) if not isinstance(layers, int) else layers, lm.num_layers)
    prompts = [build_prompt(lm.tokenizer, s.code, s.language, template) for s in samples]
    # a prompt's states depend on its text alone: each distinct text is run once (two versions of a file share
    # most of their functions) and its rows copied to the samples that repeat it
    first: dict[str, int] = {}
    source = [first.setdefault(p.text, i) for i, p in enumerate(prompts)]
    distinct = list(first.values())
    order = [distinct[i] for i in length_order(lm, [prompts[r].text for r in distinct], buckets)]
    out = {pos: torch.zeros(len(samples), len(chosen), lm.hidden_size) for pos in poolings}

    through_code = set(poolings) <= set(CODE_POOLINGS)  # nothing after the code is read: it is not run

    def run(rows: list[int]) -> dict[str, torch.Tensor]:
        batch = tokenize_prompts(lm.tokenizer, [prompts[i] for i in rows], through_code=through_code).to(lm.device)
        return batch_states(lm, batch, chosen, poolings, answer_tokens)

    batcher = AutoBatch.for_model(lm, "extraction", batch_size)
    with Progress(len(distinct), desc, unit="sample", enabled=progress) as bar:
        for rows, values in batcher.map(order, run):
            index = torch.as_tensor(rows, dtype=torch.long)
            for pos, value in values.items():
                out[pos][index] = value
            bar.update(len(rows))
    repeats = [i for i, first_row in enumerate(source) if first_row != i]
    if repeats:  # (in place: no second copy of the states)
        copies, originals = torch.as_tensor(repeats), torch.as_tensor([source[i] for i in repeats])
        for value in out.values():
            value[copies] = value[originals]
    counts = torch.tensor(code_token_counts(lm.tokenizer, prompts), dtype=torch.long)
    return Activations(chosen, [s.id for s in samples], dict(out), lm.identity, counts)
