"""Memory: peak-memory reporting, and no full-sequence logits where only the answer position is needed."""

from __future__ import annotations

from typing import Any

import torch

from conftest import toy_samples
from vulnsteer.detection.engine import detect_variants_modes
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.memory import peak_memory, reset_peak_memory, weights_bytes
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import answer_token_ids, build_prompt


def test_peak_memory_on_the_cpu_is_the_peak_rss() -> None:
    before = peak_memory("cpu")
    assert before["kind"] == "cpu_peak_rss" and before["per_device"] == {}
    size = 64 * 1024 * 1024
    block = torch.ones(size // 4)  # 64 MiB resident (ones: the pages are written)
    after = peak_memory()
    del block
    assert after["bytes"] >= max(before["bytes"], size) > 0
    assert after["gib"] == round(after["bytes"] / 1024**3, 3)
    reset_peak_memory("cpu")  # a no-op on the CPU, not an error
    assert peak_memory()["bytes"] >= after["bytes"]  # a peak never goes down


def test_weights_bytes_counts_shared_parameters_once_and_follows_the_dtype() -> None:
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied, as in many causal LMs
    model = torch.nn.Sequential(embed, torch.nn.LayerNorm(4), head)
    model.register_buffer("scale", torch.ones(3))
    assert weights_bytes(model) == (40 + 4 + 4 + 3) * 4
    assert weights_bytes(model.to(torch.bfloat16)) == (40 + 4 + 4 + 3) * 2


class _HeadInputs:
    """Records the sequence length of every call of the output head (the logits it will produce)."""

    def __init__(self, model: Any) -> None:
        self.lengths: list[int] = []
        self.handle = model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, _m: Any, args: Any, _out: Any) -> None:
        self.lengths.append(int(args[0].shape[1]))


def test_detection_computes_logits_at_the_answer_position_only(tiny_lm: LoadedModel) -> None:
    samples = toy_samples(2)
    prompts = [build_prompt(tiny_lm.tokenizer, s.code, s.language).text for s in samples]
    prompt_len = min(len(tiny_lm.tokenizer(p)["input_ids"]) for p in prompts)
    longest_answer = max(len(a) for a in answer_token_ids(tiny_lm.tokenizer))
    head = _HeadInputs(tiny_lm.model)
    try:
        detect_variants_modes(
            tiny_lm, samples, {"": ()}, modes=("logit", "generation"), max_new_tokens=4, progress=False
        )
    finally:
        head.handle.remove()
    assert head.lengths and prompt_len > 8
    # prompt passes and generation steps: one position; teacher-forced answers: their own tokens only
    assert max(head.lengths) <= max(1, longest_answer - 1)


def test_extraction_never_reaches_the_output_head(tiny_lm: LoadedModel) -> None:
    head = _HeadInputs(tiny_lm.model)
    try:
        acts = extract_activations(tiny_lm, toy_samples(2), [1, 3], progress=False)  # 3 = the last layer
    finally:
        head.handle.remove()
    assert head.lengths == [] and acts.get("last").shape[:2] == (4, 2)
