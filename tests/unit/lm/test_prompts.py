"""The one prompt: code verbatim once, pre-filled answer, exact code span, left padding and an exact code mask."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import DEFAULT_TEMPLATE, Prompt, PromptTemplate, build_prompt, tokenize_prompts

CODES: list[tuple[str, str]] = [
    ("int main(int argc, char **argv) {\n    char buf[16];\n    strcpy(buf, argv[1]);\n    return 0;\n}", "c"),
    ("  cursor.execute('SELECT * FROM users WHERE id = ' + user_id)  ", "python"),
    ("def read(path):\n\treturn open(path).read()  # caf\u00e9 \u2713\n\n", "python"),
    ("const q = `SELECT * FROM t WHERE id=${id}`;\ndb.query(q);", "javascript"),
    ("func main() {}", "weirdlang"),
]


@pytest.fixture
def plain_tokenizer(tiny_tokenizer: Any) -> Any:
    """The tiny tokenizer without a chat template."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


@pytest.fixture(params=["tiny_tokenizer", "plain_tokenizer"])
def tok(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize(("code", "language"), CODES)
def test_code_appears_verbatim_exactly_once(tok: Any, code: str, language: str) -> None:
    prompt = build_prompt(tok, code, language)
    assert prompt.text.count(code) == 1
    assert prompt.text.endswith("Answer:")
    start, end = prompt.code_span
    assert prompt.text[start:end] == code
    assert prompt.text[:start].endswith(
        "```" + {"c": "c", "python": "python", "javascript": "javascript"}.get(language, "") + "\n"
    )
    assert prompt.text[end:].startswith("\n```")
    assert DEFAULT_TEMPLATE.answer_format in prompt.text
    assert DEFAULT_TEMPLATE.system in prompt.text


def test_chat_template_is_used_when_present(tiny_tokenizer: Any, plain_tokenizer: Any) -> None:
    code, language = CODES[0]
    chat = build_prompt(tiny_tokenizer, code, language).text
    plain = build_prompt(plain_tokenizer, code, language).text
    assert chat.startswith("<|im_start|>system\n")
    assert chat.endswith("<|im_start|>assistant\nAnswer:")
    assert "<|im_start|>" not in plain
    assert plain.startswith(DEFAULT_TEMPLATE.system)
    assert "Is the following C code vulnerable?" in chat and "Is the following C code vulnerable?" in plain


def test_template_wording_is_configurable(tiny_tokenizer: Any) -> None:
    template = PromptTemplate(question="Does this {language} have a bug?", answer_prefix="Verdict:")
    prompt = build_prompt(tiny_tokenizer, "x = 1", "python", template)
    assert "Does this Python have a bug?" in prompt.text
    assert prompt.text.endswith("Verdict:")
    assert prompt.text[slice(*prompt.code_span)] == "x = 1"


def test_a_template_that_rewrites_the_code_is_refused(tiny_tokenizer: Any) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="does not keep the code verbatim"):
        build_prompt(tok, "strcpy(buf, src);", "c")


def _masked_text(tok: Any, ids: torch.Tensor, mask: torch.Tensor) -> str:
    return str(tok.decode(ids[mask].tolist()))


def test_tokenize_prompts_left_pads_and_masks_exactly_the_code(tok: Any) -> None:
    prompts = [build_prompt(tok, code, language) for code, language in CODES]
    batch = tokenize_prompts(tok, prompts)
    n, width = batch.input_ids.shape
    assert n == len(prompts)
    assert batch.attention_mask.shape == batch.code_mask.shape == (n, width)
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # padding really happened
    assert int(lengths.max()) == width
    for row, (prompt, (code, _)) in enumerate(zip(prompts, CODES)):
        real = int(lengths[row])
        pad = width - real
        # left padding: zeros then ones; pads carry the pad id; the last column is the last prompt token
        assert batch.attention_mask[row, :pad].sum() == 0
        assert bool(batch.attention_mask[row, pad:].all())
        assert bool((batch.input_ids[row, :pad] == tok.pad_token_id).all())
        assert not bool(batch.code_mask[row, :pad].any())
        unpadded = tok(prompt.text, add_special_tokens=False)["input_ids"]
        assert batch.input_ids[row, pad:].tolist() == unpadded
        assert tok.decode(batch.input_ids[row, pad:].tolist()) == prompt.text
        # the code mask is one contiguous run covering the code and nothing else but boundary whitespace
        where = batch.code_mask[row].nonzero().flatten().tolist()
        assert where == list(range(where[0], where[-1] + 1))
        decoded = _masked_text(tok, batch.input_ids[row], batch.code_mask[row])
        assert code in decoded
        assert decoded.replace(code, "", 1).strip() == ""


def test_tokenize_a_single_prompt_has_no_padding(tok: Any) -> None:
    prompt = build_prompt(tok, "x = 1", "python")
    batch = tokenize_prompts(tok, [prompt])
    assert bool(batch.attention_mask.all())
    assert batch.code_mask.sum() >= 1
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and torch.equal(moved.code_mask, batch.code_mask)


def test_code_mask_with_a_hand_made_span(tiny_tokenizer: Any) -> None:
    text = "prefix CODEBODY suffix"
    prompt = Prompt(text=text, code_span=(text.index("CODEBODY"), text.index("CODEBODY") + len("CODEBODY")))
    batch = tokenize_prompts(tiny_tokenizer, [prompt])
    decoded = _masked_text(tiny_tokenizer, batch.input_ids[0], batch.code_mask[0])
    assert "CODEBODY" in decoded
    assert "prefix" not in decoded and "suffix" not in decoded


@pytest.mark.model
def test_embedded_tokenizer_masks_the_code(embedded: LoadedModel) -> None:
    tok = embedded.tokenizer
    prompts = [build_prompt(tok, code, language) for code, language in CODES]
    batch = tokenize_prompts(tok, prompts)
    for row, (prompt, (code, _)) in enumerate(zip(prompts, CODES)):
        assert prompt.text.count(code) == 1
        assert prompt.text.endswith("<|im_start|>assistant\nAnswer:")
        assert batch.attention_mask[row, -1] == 1
        decoded = _masked_text(tok, batch.input_ids[row], batch.code_mask[row])
        assert code in decoded
        assert decoded.replace(code, "", 1).strip() == ""
