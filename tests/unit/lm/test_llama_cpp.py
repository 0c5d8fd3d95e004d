"""End to end: an exported control vector in llama.cpp steers like vulnsteer's own ``positions="all"`` steering.

Optional: skipped unless llama-cpp-python is installed (it builds llama.cpp from source; see the README). The
embedded SmolLM2 GGUF runs in llama.cpp; the same file, dequantised to float32, runs in vulnsteer. Both get the
same token ids, and the vulnerable-vs-secure answer margin ``logit(" vulnerable") - logit(" secure")`` at the answer
position is compared, plain and steered.

Tolerance. The runtimes disagree before any steering: llama.cpp multiplies the 4-bit weights with activations
quantised to 8 bits, vulnsteer uses the same weights dequantised, in float32. That disagreement ``d0`` is measured
here on the same prompts (about 0.1-0.2 logits). The steering shift ``s`` then passes through those same
quantised layers, so its error grows with it; a few percent of ``s`` was observed. Each steered margin must agree
within ``d0 + 0.1 * |s|``. The check has power: the shifts are ~4-5 logits, so a sign error (off by ``2|s|``) or
a vector llama.cpp ignores (off by ``|s|``) fails it many times over. (A vector one layer off is not always caught
at this tolerance with this direction; the layer mapping is pinned by ``test_gguf.py`` and llama.cpp's source.)
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vulnsteer.data.builtin import load_builtin
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import answer_token_ids, build_prompt, tokenize_prompts
from vulnsteer.lm.source import embedded_gguf_path
from vulnsteer.steering.gguf import control_vector_data, export_gguf
from vulnsteer.steering.hooks import steer
from vulnsteer.steering.vectors import unembedding_vector

pytestmark = [pytest.mark.model, pytest.mark.slow]
llama_cpp = pytest.importorskip("llama_cpp")  # optional: built from source, never installed by `make test`

LAYER = 20
STRENGTHS = (40.0, -40.0)  # raw, along the unit answer axis: shifts of ~4-5 logits on SmolLM2-135M


def _set_control_vector(llm: Any, data: np.ndarray | None, n_embd: int, n_layers: int) -> None:
    names = ("llama_set_adapter_cvec", "llama_apply_adapter_cvec", "llama_control_vector_apply")  # newest first
    apply = next(getattr(llama_cpp, name) for name in names if hasattr(llama_cpp, name))
    if data is None:
        rc = apply(llm.ctx, None, 0, n_embd, 0, 0)
    else:
        rc = apply(llm.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, n_embd, 1, n_layers)
    assert rc == 0


def test_exported_vector_in_llama_cpp_matches_vulnsteer_steering(embedded: LoadedModel, tmp_path: Path) -> None:
    lm = embedded
    samples = sorted(load_builtin(), key=lambda s: len(s.code))[:4]
    ids = [tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, s.code, s.language)]).input_ids for s in samples]
    (vulnerable,), (secure,) = answer_token_ids(lm.tokenizer)
    vector = unembedding_vector(lm, [LAYER])  # records the model type, so the export needs no --model-hint

    def ours(strength: float) -> np.ndarray:
        out = []
        for row in ids:
            with torch.no_grad(), steer(lm.model, vector, strength, positions="all", unit="raw"):
                logits = lm.model(input_ids=row).logits[0, -1]
            out.append(float(logits[vulnerable] - logits[secure]))
        return np.array(out)

    llm = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=1024, n_threads=2, n_batch=512, verbose=False)
    layer_count = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
    n_layers = int(layer_count(llm.model))
    n_vocab = int(llm.n_vocab())
    assert n_layers == lm.num_layers

    def theirs(files: list[tuple[Path, float]]) -> np.ndarray:
        data, n_embd = control_vector_data(files, n_layers) if files else (None, lm.hidden_size)
        _set_control_vector(llm, data, n_embd, n_layers)
        out = []
        for row in ids:
            llm.reset()
            llm.eval(row[0].tolist())
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            out.append(float(logits[vulnerable] - logits[secure]))
        return np.array(out)

    try:
        plain_ours, plain_theirs = ours(0.0), theirs([])
        d0 = float(np.abs(plain_ours - plain_theirs).max())
        print(f"\nplain margins: vulnsteer {plain_ours.round(3)}, llama.cpp {plain_theirs.round(3)}, d0 {d0:.3f}")
        for strength in STRENGTHS:
            path = tmp_path / f"cv{strength:+g}.gguf"
            export_gguf(vector, path, strength=strength)
            steered_ours, steered_theirs = ours(strength), theirs([(path, 1.0)])
            shift = steered_ours - plain_ours
            error = np.abs(steered_ours - steered_theirs)
            tolerance = d0 + 0.1 * np.abs(shift)
            print(
                f"strength {strength:+g}: vulnsteer {steered_ours.round(3)}, llama.cpp {steered_theirs.round(3)}, "
                f"shift {shift.round(2)}, error {error.round(3)} (tolerance {tolerance.round(3)})"
            )
            assert np.all(np.sign(shift) == np.sign(strength))  # positive strength: toward "vulnerable"
            assert np.abs(shift).min() >= 3 * tolerance.max()  # the check has power: the shift dwarfs the tolerance
            assert np.all(error <= tolerance)
    finally:
        llm.close()
