"""Recording hidden states: batched, left-padded forward passes with read-only hooks on chosen layers.

Positions:
- ``last``: each row's last prompt token (the answer position: the prompt ends with ``Answer:``);
- ``code_mean``: the mean over the tokens of the code itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ..data.sample import Sample
from .batching import AutoBatch
from .model import LoadedModel, decoder_layers, hidden_of, position_ids_for, resolve_layers
from .prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt, tokenize_prompts

__all__ = ["POSITIONS", "Activations", "Position", "extract_activations", "length_order"]

Position = Literal["last", "code_mean"]
POSITIONS: tuple[Position, ...] = ("last", "code_mean")


@dataclass
class Activations:
    """Hidden states ``[n_samples, n_layers, hidden]`` per position, in the order of the input samples."""

    layers: list[int]
    sample_ids: list[str]
    by_position: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, position: str, layer: int | None = None) -> torch.Tensor:
        if position not in self.by_position:
            raise KeyError(f"position {position!r} was not recorded (have {sorted(self.by_position)})")
        acts = self.by_position[position]
        if layer is None:
            return acts
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded (have {self.layers})")
        return acts[:, self.layers.index(layer)]

    def mean_norms(self, position: str = "last") -> dict[int, float]:
        """Mean L2 norm of the hidden state per layer (the scale for relative steering strengths)."""
        acts = self.get(position)
        return {layer: float(acts[:, i].norm(dim=-1).mean()) for i, layer in enumerate(self.layers)}

    def subset(self, indices: Sequence[int]) -> Activations:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Activations(
            layers=list(self.layers),
            sample_ids=[self.sample_ids[i] for i in idx.tolist()],
            by_position={k: v.index_select(0, idx) for k, v in self.by_position.items()},
        )


class ActivationSink:
    """Collects unsteered hidden states as a side effect of detection passes (see ``detect_variants_modes``).

    ``rows[sample_id][position]`` is a ``[n_layers, hidden]`` tensor; :meth:`activations` assembles them.
    """

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, sample_id: str, position: str, value: torch.Tensor) -> None:
        self.rows.setdefault(sample_id, {})[position] = value.detach().float().cpu()

    def complete(self, sample_ids: Sequence[str], positions: Sequence[str] = POSITIONS) -> bool:
        return all(pos in self.rows.get(sid, {}) for sid in sample_ids for pos in positions)

    def activations(self, sample_ids: Sequence[str], positions: Sequence[str] = POSITIONS) -> Activations:
        missing = [sid for sid in sample_ids if any(p not in self.rows.get(sid, {}) for p in positions)]
        if missing:
            raise KeyError(f"no captured activations for {len(missing)} samples (e.g. {missing[0]})")
        by_position = {p: torch.stack([self.rows[sid][p] for sid in sample_ids]) for p in positions}
        return Activations(layers=list(self.layers), sample_ids=list(sample_ids), by_position=by_position)


@contextmanager
def recording(model: Any, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, ``out[layer]`` holds the hidden state output by each chosen layer in the last pass."""
    blocks = decoder_layers(model)
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


@torch.no_grad()
def extract_activations(
    lm: LoadedModel,
    samples: Sequence[Sample],
    layers: int | Sequence[int],
    positions: Sequence[str] = POSITIONS,
    *,
    batch_size: int = 8,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
) -> Activations:
    """Run the model over *samples* and record the chosen layers' outputs at the chosen positions.

    Each layer's output is reduced to the positions inside its hook and moved to the CPU there (on the layer's own
    device, so a model split over GPUs works); the forward pass stops after the deepest chosen layer, so no logits
    are computed. On CUDA a batch that runs out of memory is run again in smaller batches
    (:class:`~vulnsteer.lm.batching.AutoBatch`).
    """
    for pos in positions:
        if pos not in POSITIONS:
            raise ValueError(f"unknown position {pos!r}; choose from {POSITIONS}")
    blocks = decoder_layers(lm.model)
    chosen = resolve_layers(list(layers) if not isinstance(layers, int) else layers, len(blocks))
    prompts = [build_prompt(lm.tokenizer, s.code, s.language, template) for s in samples]
    order = length_order(lm, [p.text for p in prompts])
    out = {pos: torch.zeros(len(samples), len(chosen), lm.hidden_size) for pos in positions}
    deepest = max(chosen)

    def run(rows: list[int]) -> dict[str, torch.Tensor]:
        """One batch: each chosen layer's output, reduced to the positions and moved to the CPU in its hook."""
        batch = tokenize_prompts(lm.tokenizer, [prompts[i] for i in rows]).to(lm.device)
        reduced: dict[str, list[torch.Tensor | None]] = {pos: [None] * len(chosen) for pos in positions}

        def make_hook(li: int, layer: int) -> Any:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                hidden = hidden_of(output).detach()
                if "last" in reduced:
                    reduced["last"][li] = hidden[:, -1].float().cpu()
                if "code_mean" in reduced:
                    reduced["code_mean"][li] = masked_mean(hidden.float(), batch.code_mask).cpu()
                if layer == deepest:
                    raise _StopForward

            return hook

        handles = [blocks[layer].register_forward_hook(make_hook(li, layer)) for li, layer in enumerate(chosen)]
        try:
            with contextlib.suppress(_StopForward):
                lm.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=position_ids_for(batch.attention_mask),
                    use_cache=False,
                )
        finally:
            for handle in handles:
                handle.remove()
        return {pos: torch.stack([t for t in per_layer if t is not None], dim=1) for pos, per_layer in reduced.items()}

    batcher = AutoBatch.for_model(lm, "extraction", batch_size)
    with tqdm(total=len(samples), desc="activations", unit="sample", disable=not progress) as bar:
        for rows, values in batcher.map(order, run):
            index = torch.as_tensor(rows, dtype=torch.long)
            for pos, value in values.items():
                out[pos][index] = value
            bar.update(len(rows))
    return Activations(layers=chosen, sample_ids=[s.id for s in samples], by_position=dict(out))
