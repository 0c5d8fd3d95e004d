"""Detectors: the generated verdict, the answer logits, or a vector read as a probe.

Detectors know nothing of steering: wrap a call in :func:`vulnsteer.steering.hooks.steer` to steer it. The same
prompt (:mod:`vulnsteer.lm.prompts`) serves every detector and activation extraction.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ..config.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from ..config.vocabulary import CODE_POOLINGS
from ..data.sample import Sample
from ..lm.activations import ActivationSink, batch_states, length_order, masked_mean, recording
from ..lm.backend import masked_max
from ..lm.batching import AutoBatch
from ..lm.forward import NonFiniteLogitsError, forward
from ..lm.model import LayerMatcher, LoadedModel
from ..lm.prompts import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    answer_token_ids,
    build_prompt,
    tokenize_prompts,
)
from ..progress import Progress
from ..steering.hooks import SteeringSpec, steer_rows
from .prefix import PrefixStore
from .records import DetectionRecord
from .verdict import parse_verdict

__all__ = [
    "DetectionRecord",
    "NonFiniteLogitsError",
    "PrefixStore",
    "Variant",
    "detect",
    "detect_variants",
    "detect_variants_modes",
    "generate_verdicts",
    "score_logits",
    "shares_prefix",
]


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


#: A variant of the model to detect with: the steering specs applied (empty = the plain model), or a function
#: giving them per sample (e.g. each CWE's own vector); a function returning None leaves that sample out.
Variant = Sequence[SteeringSpec] | Callable[[Sample], Sequence[SteeringSpec] | None]


def shares_prefix(specs: Iterable[SteeringSpec]) -> bool:
    """Settings can share one unsteered pass over the prompt (all but its last token) when no spec steers
    ``prompt`` or ``all`` positions: then everything before the answer position is identical across them."""
    return all(spec.positions in ("last", "answer", "generated") for spec in specs)


def _retarget(
    rows: Sequence[Sequence[SteeringSpec]], keep: tuple[str, ...], positions: str | None
) -> list[list[SteeringSpec]]:
    """Per row, the specs whose positions are in *keep*, re-targeted to *positions* if given."""
    out = []
    for specs in rows:
        kept = [s for s in specs if s.positions in keep]
        if positions is not None:
            kept = [dataclasses.replace(s, positions=positions) for s in kept]  # type: ignore[arg-type]
        out.append(kept)
    return out


_PROMPT_POSITIONS = ("last", "answer", "prompt", "all")
_LATER_POSITIONS = ("answer", "generated", "all")


def _gather_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new KV cache whose row ``r`` is *cache*'s row ``index[r]`` (rows may repeat), *cache* unchanged; None if
    the cache type cannot do it. Layers that gather into new tensors (``reorder_cache``, as transformers' dynamic
    layers do) are copied once, by that gather; other caches are deep-copied first."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list) and layers and all(hasattr(layer, "reorder_cache") for layer in layers):
        gathered = copy.copy(cache)
        gathered.layers = [copy.copy(layer) for layer in layers]
        for layer in gathered.layers:
            layer.reorder_cache(index)
        return gathered
    if not hasattr(cache, "batch_select_indices"):
        return None
    gathered = copy.deepcopy(cache)
    gathered.batch_select_indices(index)
    return gathered


@torch.no_grad()
def _first_step(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: Sequence[Sequence[SteeringSpec]],
    prefix: tuple[Any, torch.Tensor] | None,
    matcher: LayerMatcher | None = None,
) -> tuple[torch.Tensor, Any]:
    """Logits at the answer position for every row under its own specs.

    With a shared *prefix* ``(cache, index)`` only the last prompt token is run, row ``r`` continuing the prefix's
    row ``index[r]``; the specs that steer ``last`` are applied to that one-token pass.
    """
    if prefix is not None:
        cache = _gather_cache(prefix[0], prefix[1])
        if cache is not None:
            with steer_rows(model, _retarget(rows, ("last", "answer"), "all"), matcher):
                return forward(model, ids[:, -1:], mask, cache)
    with steer_rows(model, _retarget(rows, _PROMPT_POSITIONS, None), matcher):
        return forward(model, ids, mask, None)


@torch.no_grad()
def _answer_scores(
    model: Any,
    logits: torch.Tensor,
    cache: Any,
    mask: torch.Tensor,
    rows: Sequence[Sequence[SteeringSpec]],
    answer_tokens: Sequence[list[int]],
    matcher: LayerMatcher | None = None,
) -> list[torch.Tensor]:
    """Summed log-probabilities of each candidate answer (teacher-forced after the first token)."""
    logp = torch.log_softmax(logits, dim=-1)
    later = _retarget(rows, _LATER_POSITIONS, None)
    out = []
    for tokens in answer_tokens:
        total = logp[:, tokens[0]].clone()
        if len(tokens) > 1:
            forced = torch.tensor(tokens, device=mask.device).expand(mask.shape[0], -1)
            ext = torch.cat([mask, torch.ones_like(forced[:, :-1])], dim=1)
            with steer_rows(model, later, matcher):
                step_logits, _ = forward(model, forced[:, :-1], ext, copy.deepcopy(cache), all_logits=True)
            step_logp = torch.log_softmax(step_logits, dim=-1)
            total = total + step_logp.gather(-1, forced[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
        out.append(total)
    return out


@torch.no_grad()
def _greedy(
    model: Any,
    logits: torch.Tensor,
    cache: Any,
    mask: torch.Tensor,
    rows: Sequence[Sequence[SteeringSpec]],
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    matcher: LayerMatcher | None = None,
) -> torch.Tensor:
    """Greedy decoding with the KV cache; returns the new tokens ``[rows, <= max_new_tokens]``."""
    n = mask.shape[0]
    done = torch.zeros(n, dtype=torch.bool, device=mask.device)
    eos_t = torch.tensor(sorted(eos), device=mask.device)
    tokens: list[torch.Tensor] = []
    with steer_rows(model, _retarget(rows, _LATER_POSITIONS, None), matcher):
        for step in range(max_new_tokens):
            nxt = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))
            tokens.append(nxt)
            done = done | torch.isin(nxt, eos_t)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            logits, cache = forward(model, nxt.unsqueeze(1), mask, cache)
    return torch.stack(tokens, dim=1) if tokens else torch.zeros(n, 0, dtype=torch.long)


def _unsteered(specs: Sequence[SteeringSpec] | None) -> bool:
    return specs is not None and len(specs) == 0


def _maybe_recording(model: Any, sink: ActivationSink | None, matcher: LayerMatcher | None) -> Any:
    return recording(model, sink.layers, matcher) if sink is not None else nullcontext({})


def _sink_first_step(
    sink: ActivationSink,
    seen: Mapping[int, torch.Tensor],
    samples: Sequence[Sample],
    idx: Sequence[int],
    names: Sequence[str],
    base: Mapping[int, str | None],
    code_mask: torch.Tensor,
    shared: bool,
    row_of: Mapping[int, int],
) -> None:
    """Record the unsteered rows' answer-position (and, without a shared prefix, code-mean) hidden states; a row
    ``j * len(names) + v`` (sample ``idx[j]``, variant ``names[v]``) ran in this pass as ``row_of``'s row."""
    for j, i in enumerate(idx):
        name = base.get(i)
        k = j * len(names) + names.index(name) if name is not None else -1
        if k not in row_of:
            continue
        hidden = torch.stack([seen[layer][row_of[k]].float() for layer in sink.layers])  # [layers, seq, hidden]
        sink.add(samples[i].id, "last", hidden[:, -1])
        if not shared:
            sink.add(samples[i].id, "code_mean", masked_mean(hidden, code_mask[j].expand(len(sink.layers), -1)))


def _eos_ids(tok: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def _gate_needs(specs: Mapping[tuple[int, str], Sequence[SteeringSpec] | None]) -> tuple[list[int], list[str]]:
    """The layers and poolings the gating probes of a batch read (empty when nothing is gated)."""
    needed = {read for v in specs.values() if v for sp in v if sp.gate for read in sp.gate.probe.reads}
    return sorted({layer for layer, _ in needed}), sorted({pooling for _, pooling in needed})


def _resolve_gates(
    idx: Sequence[int],
    specs: Mapping[tuple[int, str], Sequence[SteeringSpec] | None],
    states: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    code_tokens: torch.Tensor,
    codes: Mapping[int, str],
) -> tuple[dict[tuple[int, str], Sequence[SteeringSpec] | None], dict[tuple[int, str], tuple[float, float]]]:
    """Resolve every gated spec of a batch: each gate's probe reads the row's unsteered hidden states
    (*states*: ``{pooling: [batch, len(layers), hidden]}``; *code_tokens*: each row's code-token count, for a
    probe with a length term; *codes*: each sample's code text by index, for a probe with a bag-of-tokens term:
    the text is known before the pass, so the term is added to the score like the states' part) and scales the
    spec's strength. Returns the resolved specs and, per (sample, variant), the first gate's multiplier (the
    direction it pushed) and its probe's score."""
    row = {i: j for j, i in enumerate(idx)}
    memo: dict[tuple[int, int], tuple[float, float]] = {}
    resolved: dict[tuple[int, str], Sequence[SteeringSpec] | None] = {}
    pushes: dict[tuple[int, str], tuple[float, float]] = {}
    for (i, name), items in specs.items():
        if not items or all(sp.gate is None for sp in items):
            resolved[(i, name)] = items
            continue
        out = []
        for sp in items:
            gate = sp.gate
            if gate is None:
                out.append(sp)
                continue
            if (id(gate), i) not in memo:
                read = {(layer, p): states[p][row[i], layers.index(layer)][None] for layer, p in gate.probe.reads}
                text = [codes[i]] if gate.probe.reads_code else None
                score = gate.probe.scores(read, code_tokens[row[i]][None].cpu(), text)
                memo[(id(gate), i)] = (float(gate.multipliers(score)[0]), float(score[0]))
            pushes.setdefault((i, name), memo[(id(gate), i)])
            out.append(sp.gated(memo[(id(gate), i)][0]))
        resolved[(i, name)] = out
    return resolved, pushes


def _resolve(variant: Variant, sample: Sample) -> Sequence[SteeringSpec] | None:
    return variant(sample) if callable(variant) else variant


def detect_variants(
    lm: LoadedModel,
    samples: Sequence[Sample],
    variants: Mapping[str, Variant],
    *,
    mode: str = "logit",
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    threshold: float = 0.5,
    share_prefix: bool = True,
    max_rows: int = 64,
    progress: bool = True,
    desc: str | None = None,
    sink: ActivationSink | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Detect on *samples* once per variant in one detector *mode*; see :func:`detect_variants_modes`."""
    return detect_variants_modes(
        lm,
        samples,
        variants,
        modes=(mode,),
        template=template,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        threshold=threshold,
        share_prefix=share_prefix,
        max_rows=max_rows,
        progress=progress,
        desc=desc,
        sink=sink,
    )[mode]


def detect_variants_modes(
    lm: LoadedModel,
    samples: Sequence[Sample],
    variants: Mapping[str, Variant],
    *,
    modes: Sequence[str] = ("logit",),
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    threshold: float = 0.5,
    share_prefix: bool = True,
    max_rows: int = 64,
    progress: bool = True,
    desc: str | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
    on_rows: Callable[[int], None] | None = None,
    buckets: bool = True,
) -> dict[str, dict[str, list[DetectionRecord]]]:
    """Detect on *samples* once per variant (baseline, steered settings, controls) and mode, batched together.

    Returns ``{mode: {variant: records}}``. Logit mode: ``P(vulnerable) = softmax(logp(" vulnerable"),
    logp(" secure"))`` at the answer position, verdict at *threshold*, ``margin`` = the log-probability
    difference. Generation mode: greedy decoding after ``Answer:``; the full text is kept and parsed into a
    verdict. Both modes read the same first forward step, so asking for both costs one pass, not two.

    Each batch of samples is expanded to one row per (sample, variant) and steered row by row
    (:func:`~vulnsteer.steering.hooks.steer_rows`), at most *max_rows* rows per pass. With *share_prefix*, when no spec
    steers ``prompt``/``all`` positions, the prompt up to its last token is run once, unsteered, and its KV cache
    reused by every variant: exact, since nothing steers those positions. Set ``share_prefix=False`` when the
    model is already inside an outer :func:`~vulnsteer.steering.hooks.steer` context.

    With a *sink*, the unsteered hidden states of its layers (poolings ``last`` and ``code_mean``) are recorded
    for every sample that has an unsteered variant, at no extra cost (probes and vectors can use them).

    A *prefix_store* (:class:`PrefixStore`) keeps the shared prefixes for later calls on the same model and
    samples (a sweep's chunks), so each is computed once. *on_rows(n)* is told of every batch's *n* scored
    (sample, variant) rows as they finish (a caller's own progress, e.g. a sweep phase's time left). Batches take
    the samples in length buckets (:func:`~vulnsteer.lm.activations.length_order`; ``buckets=False``: in the order
    given); the order is fixed by the samples alone, so later calls on the same samples find their batches'
    prefixes in the store.

    On CUDA, a batch that runs out of memory is run again with half the samples (and so half the rows per pass),
    and the size that fitted is kept for later calls (:class:`~vulnsteer.lm.batching.AutoBatch`).
    """
    for mode in modes:
        if mode not in ("logit", "generation"):
            raise ValueError(f"mode must be 'logit' or 'generation', got {mode!r}")
    tok, model, matcher = lm.tokenizer, lm, lm.layer_matcher  # lm: its backend runs every pass
    answer_tokens = list(answer_token_ids(tok, template))
    prompts = [build_prompt(tok, s.code, s.language, template) for s in samples]
    order = length_order(lm, [p.text for p in prompts], buckets)
    names = list(variants)
    results: dict[str, dict[str, list[DetectionRecord | None]]] = {
        mode: {name: [None] * len(samples) for name in names} for mode in modes
    }
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = _eos_ids(tok, lm.model)
    bar = Progress(len(samples) * len(names), desc or f"{'+'.join(modes)} detection", unit="sample", enabled=progress)
    batcher = AutoBatch.for_model(lm, f"detection:{'+'.join(modes)}:{max_rows}", batch_size)

    def run_batch(idx: list[int]) -> None:
        """Every variant and mode on one batch of samples; writes into ``results`` (a retry overwrites)."""
        batch = tokenize_prompts(tok, [prompts[i] for i in idx]).to(lm.device)
        specs = {(i, name): _resolve(variants[name], samples[i]) for i in idx for name in names}
        pushes: dict[tuple[int, str], tuple[float, float]] = {}
        gate_layers, gate_poolings = _gate_needs(specs)
        shared = share_prefix and shares_prefix(sp for v in specs.values() if v for sp in v)
        base = {i: next((n for n in names if _unsteered(specs[(i, n)])), None) for i in idx} if sink else {}
        key = PrefixStore.key([prompts[i].text for i in idx]) if prefix_store is not None or gate_layers else ""
        # code-token gates read the shared prefix pass (the code ends before the last prompt token): no own pass
        source = "prefix" if shared and set(gate_poolings) <= set(CODE_POOLINGS) else "full"
        states = None
        if gate_layers and prefix_store is not None:
            states = prefix_store.get_states(key, gate_layers, gate_poolings, source)
        from_prefix = bool(gate_layers) and states is None and source == "prefix"
        prefix_cache = None
        if shared:
            need_code = sink is not None and any(b is not None for b in base.values())
            code_layers = tuple(sink.layers) if sink is not None and need_code else None
            kept = prefix_store.get(key, code_layers) if prefix_store is not None and not from_prefix else None
            code: torch.Tensor | None = None
            if kept is not None:
                prefix_cache, code = kept
            else:
                record = sorted({*(sink.layers if sink is not None else ()), *(gate_layers if from_prefix else ())})
                with torch.no_grad(), recording(model, record, matcher) as seen:
                    _, prefix_cache = forward(model, batch.input_ids[:, :-1], batch.attention_mask[:, :-1], None)
                mask = batch.code_mask[:, :-1]
                means = {layer: masked_mean(seen[layer].float(), mask.to(seen[layer].device)).cpu() for layer in record}
                if sink is not None:
                    code = torch.stack([means[layer] for layer in sink.layers], dim=1)
                if from_prefix:
                    states = {"code_mean": torch.stack([means[layer] for layer in gate_layers], dim=1)}
                    if "code_max" in gate_poolings:
                        maxima = [masked_max(seen[layer].float(), mask.to(seen[layer].device)).cpu()
                                  for layer in gate_layers]  # fmt: skip
                        states["code_max"] = torch.stack(maxima, dim=1)
                    if prefix_store is not None:
                        prefix_store.put_states(key, gate_layers, states, source)
                if prefix_store is not None:
                    prefix_store.put(key, prefix_cache, code, tuple(sink.layers) if sink is not None else ())
            if sink is not None and code is not None:
                for j, i in enumerate(idx):
                    if base[i] is not None:
                        sink.add(samples[i].id, "code_mean", code[j])
        if gate_layers:
            if states is None:
                states = batch_states(lm, batch, gate_layers, gate_poolings)
                if prefix_store is not None:
                    prefix_store.put_states(key, gate_layers, states, source)
            specs, pushes = _resolve_gates(
                idx, specs, states, gate_layers, batch.code_mask.sum(1), {i: samples[i].code for i in idx}
            )
        # one row per (sample, variant) that runs, packed max_rows to a pass whatever the variant (a variant that
        # leaves a sample out, None, has no row; sink users keep every row)
        repeats = len(names)
        active = [
            j * repeats + v
            for j, i in enumerate(idx)
            for v, name in enumerate(names)
            if specs[(i, name)] is not None or sink is not None
        ]
        for keep in _batches(active, max(1, max_rows)):
            select = torch.tensor(keep, device=batch.input_ids.device)
            ids, mask = batch.input_ids[select // repeats], batch.attention_mask[select // repeats]
            rows = [list(specs[(idx[k // repeats], names[k % repeats])] or ()) for k in keep]
            row_of = {k: r for r, k in enumerate(keep)}
            with _maybe_recording(model, sink, matcher) as seen:
                logits, cache = _first_step(
                    model, ids, mask, rows, (prefix_cache, select // repeats) if shared else None, matcher
                )
            if sink is not None:
                _sink_first_step(sink, seen, samples, idx, names, base, batch.code_mask, shared, row_of)
            margins: list[float] = []
            texts: list[str] = []
            if "logit" in modes:
                lv, ls = _answer_scores(model, logits, cache, mask, rows, answer_tokens, matcher)
                margins = (lv - ls).cpu().tolist()
            if "generation" in modes:
                new_tokens = _greedy(model, logits, cache, mask, rows, max_new_tokens, eos, pad_id, matcher)
                texts = [template.answer_prefix + tok.decode(t, skip_special_tokens=True) for t in new_tokens]
            for k in keep:
                i, name, r = idx[k // repeats], names[k % repeats], row_of[k]
                if specs[(i, name)] is None:
                    continue
                s = samples[i]
                push, gate_score = pushes.get((i, name), (None, None))
                if margins:
                    m = float(margins[r])
                    p = 1.0 / (1.0 + math.exp(-m)) if m > -700 else 0.0
                    verdict_word = "vulnerable" if p >= threshold else "secure"
                    results["logit"][name][i] = DetectionRecord(
                        s.id,
                        s.cwe,
                        s.pair_id,
                        s.y,
                        verdict_word,
                        score=p,
                        margin=m,
                        push=push,
                        gate_score=gate_score,
                        threshold=threshold,
                    )
                if texts:
                    verdict = parse_verdict(texts[r])
                    results["generation"][name][i] = DetectionRecord(
                        s.id,
                        s.cwe,
                        s.pair_id,
                        s.y,
                        verdict.label,
                        text=texts[r],
                        named_cwe=verdict.cwe,
                        push=push,
                        gate_score=gate_score,
                    )
        bar.update(len(idx) * repeats)
        if on_rows is not None:
            on_rows(len(idx) * repeats)

    done = 0

    def rewind(rows: list[int]) -> None:
        """A batch that ran out of GPU memory is run again in smaller batches: undo its progress, drop its prefix."""
        bar.rewind(done)
        if prefix_store is not None:
            prefix_store.discard(PrefixStore.key([prompts[i].text for i in rows]))

    with bar:
        for _rows, _ in batcher.map(order, run_batch, on_retry=rewind):
            done = bar.count
    return {
        mode: {name: [r for r in recs if r is not None] for name, recs in by_name.items()}
        for mode, by_name in results.items()
    }


def detect(
    lm: LoadedModel,
    samples: Sequence[Sample],
    *,
    mode: str = "logit",
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    threshold: float = 0.5,
    progress: bool = True,
    desc: str | None = None,
) -> list[DetectionRecord]:
    """One detector *mode* on the model as it is (wrap in :func:`~vulnsteer.steering.hooks.steer` to steer it).

    >>> lm = load_model()  # doctest: +SKIP
    >>> [r.verdict for r in detect(lm, load_builtin(["CWE-89"])[:2], mode="logit")]  # doctest: +SKIP
    ['vulnerable', 'vulnerable']
    """
    return detect_variants(
        lm,
        samples,
        {"": ()},
        mode=mode,
        template=template,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        threshold=threshold,
        share_prefix=False,
        progress=progress,
        desc=desc or f"{mode} detection",
    )[""]


def score_logits(lm: LoadedModel, samples: Sequence[Sample], **options: Any) -> list[DetectionRecord]:
    """Logit mode (:func:`detect` with ``mode="logit"``): P(vulnerable) from the answer logits.

    >>> records = score_logits(load_model(), samples)  # doctest: +SKIP
    >>> records[0].score, records[0].margin  # doctest: +SKIP
    (0.99, 4.8)
    """
    return detect(lm, samples, mode="logit", **options)


def generate_verdicts(lm: LoadedModel, samples: Sequence[Sample], **options: Any) -> list[DetectionRecord]:
    """Generation mode (:func:`detect` with ``mode="generation"``): greedy decoding after ``Answer:``, the full
    text kept and parsed into a verdict.

    >>> records = generate_verdicts(load_model(), samples, max_new_tokens=20)  # doctest: +SKIP
    >>> records[0].verdict, records[0].named_cwe  # doctest: +SKIP
    ('vulnerable', 'CWE-89')
    """
    return detect(lm, samples, mode="generation", **options)
