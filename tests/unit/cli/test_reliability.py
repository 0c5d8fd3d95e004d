"""The pieces behind the CLI's reliability: output checks, progress, token budgets, devices, model sources,
steering scale, non-finite logits, decoding in the loaders, vector errors, and the CLI's options and defaults."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import toy_samples
from vulnsteer.cli import build_parser
from vulnsteer.cli.options import config_from_args, scorer_spec
from vulnsteer.config.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CODE_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_STEER_POSITIONS,
    DEFAULT_UNIT,
)
from vulnsteer.data.loaders import LoadReport, load_samples, validate
from vulnsteer.data.truncate import truncate_sample
from vulnsteer.detection.engine import NonFiniteLogitsError, generate_verdicts, score_logits
from vulnsteer.io import OutputError, check_writable, read_jsonl
from vulnsteer.lm import model as model_module
from vulnsteer.lm import source as source_module
from vulnsteer.lm.budget import TokenBudgetError, check_token_budget, fit_code_tokens, prompt_overhead
from vulnsteer.lm.model import LoadedModel, decoder_layers, resolve_device
from vulnsteer.lm.prompts import build_prompt
from vulnsteer.lm.source import ModelLoadError, context_length
from vulnsteer.progress import Progress, track
from vulnsteer.steering.hooks import MAX_SHIFT_RATIO, SteeringSpec
from vulnsteer.steering.vectors import Provenance, SteeringVector, VectorMismatchError

# ---------------------------------------------------------------- check_writable


def test_check_writable_accepts_new_paths_and_creates_nothing(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b" / "out.json") == tmp_path / "a" / "b" / "out.json"
    assert check_writable(tmp_path / "vecs", folder=True) == tmp_path / "vecs"
    (tmp_path / "existing").mkdir()
    check_writable(tmp_path / "existing", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert not list((tmp_path / "existing").iterdir())  # the write probe cleaned up after itself


@pytest.mark.parametrize(
    ("make", "folder", "needle"),
    [
        (lambda t: t / "file.txt" / "out.json", False, "is a file, not a folder"),
        (lambda t: t / "file.txt" / "deeper" / "vecs", True, "is a file, not a folder"),
        (lambda t: t / "file.txt", True, "not a folder"),
        (lambda t: t / "dir", False, "is a folder"),
    ],
)
def test_check_writable_refuses_by_option_and_path(tmp_path: Path, make: Any, folder: bool, needle: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    target = make(tmp_path)
    with pytest.raises(OutputError) as info:
        check_writable(target, "--report-out", folder=folder)
    message = str(info.value)
    assert message.startswith(f"--report-out {target}") and needle in message


def test_check_writable_refuses_a_folder_that_takes_no_files(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").write_text("x")
        except OSError:
            with pytest.raises(OutputError, match="cannot create files in"):
                check_writable(locked / "out.json")
        else:
            (locked / "probe").unlink()
            if not Path("/proc/self").is_dir():
                pytest.skip("permissions do not stop this user and there is no /proc to try")
            with pytest.raises(OutputError, match=r"--out /proc/.*cannot create files in /proc"):
                check_writable("/proc/vulnsteer-test/out.json")
    finally:
        locked.chmod(0o700)


def test_read_jsonl_names_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"a": 1}\n\xff\xfe\x00garbage\n')
    with pytest.raises(ValueError, match=r"records\.jsonl: not UTF-8"):
        read_jsonl(path)


# ---------------------------------------------------------------- progress


@pytest.fixture
def progress_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process ``main(["--no-progress", ...])`` earlier in the session leaves TQDM_DISABLE set."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


@contextmanager
def _stderr_as(stream: io.StringIO) -> Iterator[None]:
    saved = sys.stderr
    sys.stderr = stream
    try:
        yield
    finally:
        sys.stderr = saved


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("progress_on")
def test_progress_in_a_log_is_one_line_per_phase() -> None:
    log = io.StringIO()
    ticks = iter([0.0, 2.5])
    with Progress(4, "activations", unit="sample", stream=log, clock=lambda: next(ticks)) as bar:
        for _ in range(4):
            bar.update()
    assert log.getvalue() == "activations: 4 samples\nactivations: 4/4 samples in 2.5s\n"  # its size, then its end


@pytest.mark.usefixtures("progress_on")
def test_progress_in_a_log_says_where_it_stopped() -> None:
    log = io.StringIO()
    ticks = iter([0.0, 1.0])
    with (
        pytest.raises(KeyboardInterrupt),
        Progress(10, "detection", unit="sample", stream=log, clock=lambda: next(ticks)) as bar,
    ):
        bar.update(3)
        raise KeyboardInterrupt
    assert log.getvalue() == "detection: 10 samples\ndetection: stopped at 3/10 samples after 1.0s\n"


def test_progress_disabled_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for stream in (io.StringIO(), _Terminal()):
        with Progress(2, "x", stream=stream, enabled=False) as bar:
            bar.update(2)
        assert stream.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    log = io.StringIO()
    assert list(track(range(3), "y", stream=log)) == [0, 1, 2]
    assert log.getvalue() == ""


@pytest.mark.usefixtures("progress_on")
def test_progress_on_a_terminal_draws_a_bar_and_erases_it_on_error() -> None:
    done = _Terminal()
    with Progress(3, "cases", unit="case", stream=done) as bar:
        bar.update(3)
    assert "cases" in done.getvalue() and "3/3" in done.getvalue()

    failed = _Terminal()
    with pytest.raises(RuntimeError), Progress(3, "cases", unit="case", stream=failed) as bar:
        bar.update(1)
        raise RuntimeError("boom")
    assert "cases:" in failed.getvalue()  # it was drawn ...
    assert failed.getvalue().rsplit("\r", 1)[-1].strip() == ""  # ... and the line is blank again: no stray frame


@pytest.mark.usefixtures("progress_on")
def test_track_counts_what_was_iterated() -> None:
    log = io.StringIO()
    assert list(track(["a", "b"], "files", unit="file", stream=log)) == ["a", "b"]
    assert log.getvalue().startswith("files: 2 files\nfiles: 2/2 files in ")
    log = io.StringIO()
    assert list(track(iter("abc"), "letters", unit="letter", stream=log)) == ["a", "b", "c"]
    assert log.getvalue().startswith("letters: started\nletters: 3 letters in ")


@pytest.mark.usefixtures("progress_on")
def test_progress_in_a_log_says_how_long_the_rest_takes_while_a_slow_item_runs() -> None:
    """Issue 19: a log silent for minutes inside one phase (one slow chunk of conditions) gets a line every
    interval, with the time left at the pace so far."""
    log = io.StringIO()
    now = [0.0]
    with Progress(4, "conditions (test logit)", unit="condition", stream=log, clock=lambda: now[0], interval=0.01):
        now[0] = 5.0
        waited = 0
        while "no estimate yet" not in log.getvalue() and waited < 1000:  # the first item is still running
            time.sleep(0.01)
            waited += 1
    first = [line for line in log.getvalue().splitlines() if "no estimate yet" in line]
    assert first and first[0] == "conditions (test logit): 0/4 conditions, 5.0s, no estimate yet"
    log = io.StringIO()
    with Progress(4, "activations (val)", unit="sample", stream=log, clock=lambda: now[0], interval=0.01) as bar:
        bar.update(1)
        now[0] = 15.0  # 10 s for the first sample: 30 s left for the other three
        waited = 0
        while "left" not in log.getvalue() and waited < 1000:
            time.sleep(0.01)
            waited += 1
        bar.update(3)
    lines = log.getvalue().splitlines()
    assert lines[0] == "activations (val): 4 samples"
    assert "activations (val): 1/4 samples, 10.0s, about 30.0s left" in lines
    assert lines[-1] == "activations (val): 4/4 samples in 10.0s"


@pytest.mark.usefixtures("progress_on")
def test_no_two_progress_phases_of_a_run_share_a_name(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """Issue 19: the demo's log printed two phases with the same name (activations of train and val, the test
    scoring of constant and conditional steering)."""
    from conftest import write_toy_jsonl
    from runs import write_config
    from vulnsteer.config.experiment import load_config
    from vulnsteer.experiment.protocol import run_protocol

    config = write_config(tmp_path / "c.toml", write_toy_jsonl(tmp_path / "toy.jsonl"), cache_dir=tmp_path / "cache")
    log = io.StringIO()
    with _stderr_as(log):
        run_protocol(load_config(config), tmp_path / "run", lm=tiny_lm, progress=True)
    starts = [line for line in log.getvalue().splitlines() if line.endswith(("samples", "conditions"))]
    names = [line.rsplit(": ", 1)[0] for line in starts]
    assert "activations (train)" in names and any(n.startswith("conditions (test") for n in names)
    assert len(names) == len(set(names)), names


# ---------------------------------------------------------------- context length and token budgets


def test_context_length_reads_the_usual_config_fields() -> None:
    assert context_length(SimpleNamespace(max_position_embeddings=32768)) == 32768
    assert context_length(SimpleNamespace(n_positions=1024)) == 1024  # GPT-2
    assert context_length(SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=4096))) == 4096
    assert context_length(SimpleNamespace(max_position_embeddings=None, seq_length=2048)) == 2048
    assert context_length(SimpleNamespace(max_position_embeddings=True)) is None
    assert context_length(SimpleNamespace()) is None


def test_loaded_model_knows_its_context(tiny_lm: LoadedModel) -> None:
    assert tiny_lm.context_length == 2048


def test_the_largest_budget_that_check_accepts_really_fits(tiny_lm: LoadedModel) -> None:
    tok = tiny_lm.tokenizer
    context = 400
    with pytest.raises(TokenBudgetError) as info:
        check_token_budget(context, tok, 10_000, max_new_tokens=24, model="tiny")
    message = str(info.value)
    assert "--max-code-tokens 10000" in message and "--max-new-tokens" in message and "tiny" in message
    room = int(message.rsplit("use --max-code-tokens ", 1)[1].split()[0])
    assert check_token_budget(context, tok, room, max_new_tokens=24) == room
    with pytest.raises(TokenBudgetError):
        check_token_budget(context, tok, room + 1, max_new_tokens=24)
    # a long function truncated to that budget, in the longest prompt, plus the new tokens, fits the context
    long_code = "\n".join(f"int v{i} = strcpy(buf{i}, argv[{i}]);" for i in range(400))
    sample = truncate_sample(
        toy_samples(1)[0].__class__("x", long_code, "c", "CWE-787", "vulnerable"), _counter(tok), room
    )
    for language in ("c", "javascript", ""):
        prompt = build_prompt(tok, sample.code, language)
        assert len(tok(prompt.text, add_special_tokens=False)["input_ids"]) + 24 <= context


def _counter(tok: Any) -> Any:
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def test_budget_defaults_and_impossible_settings(tiny_lm: LoadedModel) -> None:
    tok = tiny_lm.tokenizer
    overhead = prompt_overhead(tok)
    assert check_token_budget(None, tok, 10**9) is None
    assert fit_code_tokens(None, tok) == DEFAULT_MAX_CODE_TOKENS
    assert fit_code_tokens(100_000, tok) == DEFAULT_MAX_CODE_TOKENS
    assert fit_code_tokens(overhead + 100, tok, max_new_tokens=20) == 80
    with pytest.raises(TokenBudgetError, match="--max-new-tokens 500 leaves no room"):
        fit_code_tokens(overhead + 100, tok, max_new_tokens=500)
    with pytest.raises(TokenBudgetError, match="--max-code-tokens must be a positive integer"):
        check_token_budget(4096, tok, 0)


# ---------------------------------------------------------------- devices and model sources


def test_resolve_device_names_the_option() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) in ("cpu", "cuda")
    for bad in ("gpu7", "cuda:x", "", "meta"):
        if bad == "":
            continue
        with pytest.raises(ValueError, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda: CUDA is not available.*--device cpu"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_missing_local_paths_fail_without_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_a: Any, **_k: Any) -> bool:
        raise AssertionError("the hub must not be consulted for a local path")

    monkeypatch.setattr(source_module, "_hub_reachable", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen-coder").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match=r"model path not found: models/qwen-codr \(did you mean .*qwen-coder"):
        source_module.load_tokenizer("models/qwen-codr")
    with pytest.raises(ModelLoadError, match=r"model path not found: \./nowhere"):
        source_module.load_model_config("./nowhere")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf model"):
        source_module.load_model_config("notes.txt")
    with pytest.raises(ModelLoadError, match="neither a local path nor a Hugging Face hub id"):
        source_module.load_model_config("two words")


def test_an_unreachable_hub_fails_at_once_unless_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(source_module, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(
        ModelLoadError, match=r"'someorg/somemodel'.*not in the local Hugging Face cache.*cannot be reached"
    ):
        model_module.load_model("someorg/somemodel", device="cpu")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/config.json")
    assert source_module._hub_options("someorg/somemodel") == {"local_files_only": True}
    monkeypatch.setattr(source_module, "_hub_reachable", lambda timeout=3.0: True)
    assert source_module._hub_options("someorg/somemodel") == {}


def test_hub_reachability_respects_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert source_module._hub_reachable() is False


# ---------------------------------------------------------------- steering scale and non-finite logits


def _vector(norms: dict[int, float] | None = None, scale: float = 1.0) -> SteeringVector:
    d = torch.zeros(64)
    d[0] = scale
    prov = Provenance("tiny", "f", 64, (1,), "last", "mean_diff", "CWE-89", 1, 1, "h", "t", norms or {})
    return SteeringVector({1: d}, prov)


def test_relative_strengths_far_beyond_the_hidden_scale_are_refused() -> None:
    vec = _vector({1: 10.0})
    SteeringSpec(vec, MAX_SHIFT_RATIO, unit="relative", positions="all")
    SteeringSpec(vec, -MAX_SHIFT_RATIO, unit="relative", positions="all")
    with pytest.raises(ValueError, match=r"far beyond the hidden-state scale.*lower --strength"):
        SteeringSpec(vec, MAX_SHIFT_RATIO * 1.01, unit="relative", positions="all")
    with pytest.raises(ValueError, match="strength 1e\\+30"):
        SteeringSpec(vec, 1e30, unit="relative", positions="all")


def test_raw_shifts_are_measured_against_the_layer_norm_when_known() -> None:
    # |shift| = strength x |d| = 2000 x 1 = 2000 = 200 x the layer norm of 10
    with pytest.raises(ValueError, match="200 x the layer's mean hidden-state norm"):
        SteeringSpec(_vector({1: 10.0}), 2000.0, unit="raw", positions="all")
    SteeringSpec(_vector({1: 10.0}), 999.0, unit="raw", positions="all")
    SteeringSpec(_vector(), 1e5, unit="raw", positions="all")  # no norm recorded: only the absolute limit applies
    with pytest.raises(ValueError, match="no layer norm to compare with"):
        SteeringSpec(_vector(), 1e7, unit="raw", positions="all")
    with pytest.raises(ValueError, match="not finite"):
        SteeringSpec(_vector(scale=1e30), 1e300, unit="raw", positions="all")


@contextmanager
def _nan_after_layer(lm: LoadedModel, layer: int) -> Iterator[None]:
    """A hook that turns one layer's output into NaN (removed on exit)."""

    def hook(_m: Any, _a: Any, output: Any) -> Any:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        bad = torch.full_like(hidden, float("nan"))
        return bad if isinstance(output, torch.Tensor) else (bad, *output[1:])

    handle = decoder_layers(lm.model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("detector", [score_logits, generate_verdicts])
def test_no_verdict_from_non_finite_logits(tiny_lm: LoadedModel, detector: Any) -> None:
    samples = toy_samples(1)
    with _nan_after_layer(tiny_lm, 1), pytest.raises(NonFiniteLogitsError, match=r"non-finite logits.*--strength"):
        detector(tiny_lm, samples, progress=False)
    records = detector(tiny_lm, samples, progress=False)  # and the hook is gone
    assert len(records) == 2
    assert all(r.score is None or math.isfinite(r.score) for r in records)


# ---------------------------------------------------------------- vectors: damaged files name the file


def test_provenance_lacking_a_field_is_named(tmp_path: Path) -> None:
    prov = json.loads(_vector({1: 3.0}).provenance.to_json())
    for field in ("layers", "hidden_size", "model_fingerprint"):
        partial = {k: v for k, v in prov.items() if k != field}
        with pytest.raises(KeyError, match=field):
            Provenance.from_json(json.dumps(partial))
    with pytest.raises(ValueError, match="layer_norms"):
        Provenance.from_json(json.dumps(prov | {"layer_norms": {"1": -3.0}}))
    with pytest.raises(TypeError, match="JSON object"):
        Provenance.from_json("[1, 2]")


def test_vector_errors_name_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    prov = _vector({1: 3.0}).provenance.to_json()
    cases = {
        "nan.safetensors": ({"layer.1": torch.full((64,), float("nan"))}, prov),
        "short.safetensors": ({"layer.1": torch.ones(8)}, prov),
        "words.safetensors": ({"layer.x": torch.ones(64)}, prov),
        "list.safetensors": ({"layer.1": torch.ones(64)}, "[]"),
        "norms.safetensors": ({"layer.1": torch.ones(64)}, json.dumps(json.loads(prov) | {"layer_norms": 3})),
    }
    for name, (tensors, provenance) in cases.items():
        path = tmp_path / name
        save_file(tensors, str(path), metadata={"format": "vulnsteer.SteeringVector", "provenance": provenance})
        with pytest.raises(VectorMismatchError) as info:
            SteeringVector.load(path)
        assert str(info.value).startswith(f"{path}: "), name


# ---------------------------------------------------------------- loaders: encodings, binary content, one-sided CWEs


def _paired(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "data" / "CWE-79"
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return root / "data"


def test_paired_dir_reads_utf16_and_skips_binary_with_a_count(tmp_path: Path) -> None:
    vuln, fixed = "def f(x):\n    return x\n", "import html\ndef f(x):\n    return html.escape(x)\n"
    root = _paired(
        tmp_path,
        {
            "a.py": vuln.encode("utf-16"),
            "p_a.py": fixed.encode("utf-16-le"),
            "b.py": b"\x00\x01\x02binary\x00" * 50,
            "p_b.py": fixed.encode(),
        },
    )
    report = LoadReport()
    samples = load_samples(root, report=report)
    assert [s.code for s in samples] == [vuln, fixed]
    assert report.binary_files == 1 and report.reencoded_files == 2 and not report.problems
    assert any("b.py" in note and "binary" in note for note in report.notes)
    problems = validate(root)
    assert len(problems) == 1 and "b.py" in problems[0] and "binary content" in problems[0]


def test_jsonl_code_fields_with_binary_or_broken_text(tmp_path: Path) -> None:
    rows = [
        {"code": "x = 1", "label": "secure", "cwe": "CWE-89"},
        {"code": "\x00\x01\x02\x03" * 20, "label": "vulnerable", "cwe": "CWE-89"},
        {"code": "y = '\ud800'", "label": "vulnerable", "cwe": "CWE-89"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = LoadReport()
    samples = load_samples(path, report=report)
    assert [s.code for s in samples] == ["x = 1", "y = '\ufffd'"]
    assert report.binary_files == 1 and report.replaced_bytes_files == 1
    samples[1].code.encode("utf-8")  # encodable now
    assert any("rows.jsonl:2" in p for p in validate(path))


def test_a_utf16_jsonl_file_is_detected_and_read(tmp_path: Path) -> None:
    rows = [{"code": "x = 1", "label": "secure", "cwe": "CWE-89"}, {"code": "x = f()", "label": "bad", "cwe": "89"}]
    path = tmp_path / "rows.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode("utf-16"))
    assert [s.label for s in load_samples(path)] == ["secure", "vulnerable"]


def test_one_sided_cwes_are_problems_for_validate_and_notes_for_load(tmp_path: Path) -> None:
    rows = [
        {"code": "a", "label": "vulnerable", "cwe": "CWE-89"},
        {"code": "b", "label": "secure", "cwe": "CWE-79"},
        {"code": "c", "label": "vulnerable", "cwe": "CWE-79"},
        {"code": "d", "label": "secure", "cwe": "CWE-22"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = LoadReport()
    assert len(load_samples(path, report=report)) == 4
    assert report.one_sided_cwes == {"CWE-22": "vulnerable", "CWE-89": "secure"}
    problems = validate(path)
    assert len(problems) == 2
    assert "CWE-22 has no vulnerable samples" in problems[0] and "CWE-89 has no secure samples" in problems[1]


def test_deeply_nested_json_is_malformed_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    problems = validate(path, "castle")
    assert len(problems) == 1 and "deep.json" in problems[0] and "nesting too deep" in problems[0]


# ---------------------------------------------------------------- the CLI's options: help, defaults, one value each


def _commands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix} {name}".strip()] = sub
                    walk(sub, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


#: Commands this module checks fully (run, sweep and evaluate are the experiment commands' own business).
CHECKED = ("detect", "extract", "vectors fit", "data stats", "data validate", "run", "sweep", "evaluate")


@pytest.mark.parametrize("command", CHECKED)
def test_every_option_has_help_that_shows_its_default(command: str) -> None:
    parser = _commands()[command]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help"
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction))
        if action.option_strings and not flag and not action.required:
            formatter = parser._get_formatter()
            rendered = formatter._expand_help(action)
            assert "default" in rendered.lower(), f"{command} {action.option_strings}: {rendered!r}"
    assert "-v, --verbose" in text and "--no-progress" in text and "exit codes: see `vulnsteer --help`" in text
    assert "internal error" not in text  # the global exit-code table is in the top-level help only


def test_shared_option_defaults_come_from_one_place() -> None:
    commands = _commands()
    detect = commands["detect"].parse_args(["x.c"])
    spec = scorer_spec(detect, explain=True)
    assert config_from_args(detect).data.max_code_tokens == DEFAULT_MAX_CODE_TOKENS
    assert spec.max_code_tokens is None  # not given: the default, lowered to what fits the model's context
    assert scorer_spec(commands["detect"].parse_args(["x.c", "--max-code-tokens", "512"]), True).max_code_tokens == 512
    assert (spec.max_new_tokens, spec.batch_size) == (DEFAULT_MAX_NEW_TOKENS, DEFAULT_BATCH_SIZE)
    assert scorer_spec(commands["scan"].parse_args(["x.c"]), explain=True) == spec  # scan reads the same flags
    vectors = commands["vectors fit"].parse_args(["--out", "v"])
    assert config_from_args(vectors).data.max_code_tokens == DEFAULT_MAX_CODE_TOKENS
    assert not any("unit" in name or "positions" in name for name in vars(vectors))  # vectors steers nothing

    run = config_from_args(commands["run"].parse_args([]))
    assert run.steering.positions == (DEFAULT_STEER_POSITIONS,)
    assert {unit for unit, _ in run.steering.strengths} == {DEFAULT_UNIT}
    assert (
        run.detection.max_new_tokens == DEFAULT_MAX_NEW_TOKENS and run.data.max_code_tokens == DEFAULT_MAX_CODE_TOKENS
    )
    # detect shows the same defaults for the options it only uses with --vector / --mode generation
    help_text = " ".join(commands["detect"].format_help().split())
    assert f"(default: {DEFAULT_STEER_POSITIONS})" in help_text and f"(default: {DEFAULT_UNIT})" in help_text
    assert f"default: {DEFAULT_MAX_NEW_TOKENS}" in help_text


def test_library_defaults_are_the_configuration_defaults() -> None:
    """What ``detect(...)``, ``steer(...)``, a steering spec, a scorer spec and ``fit_vector(...)`` do by default is
    what the configuration does by default (one declaration each)."""
    import dataclasses
    import inspect

    from vulnsteer.config import ExperimentConfig
    from vulnsteer.detection.engine import detect, detect_variants, detect_variants_modes
    from vulnsteer.scan.spec import ScorerSpec, VectorSteering
    from vulnsteer.steering.hooks import steer
    from vulnsteer.steering.vectors import fit_vector

    config = ExperimentConfig()
    for function in (detect, detect_variants, detect_variants_modes):
        params = inspect.signature(function).parameters
        assert params["max_new_tokens"].default == config.detection.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
        assert params["batch_size"].default == config.detection.batch_size
    steering = (config.steering.positions[0], config.steering.strengths[0][0])
    params = inspect.signature(steer).parameters
    assert (params["positions"].default, params["unit"].default) == steering == ("last", "relative")
    spec_fields = {f.name: f.default for f in dataclasses.fields(SteeringSpec)}
    assert (spec_fields["positions"], spec_fields["unit"]) == steering
    setting = VectorSteering(Path("v.safetensors"), 1.0)
    assert (setting.positions, setting.unit) == steering
    scorer = ScorerSpec()
    assert (scorer.max_new_tokens, scorer.batch_size) == (config.detection.max_new_tokens, config.detection.batch_size)
    params = inspect.signature(fit_vector).parameters
    assert (params["pooling"].default, params["method"].default) == (
        config.vectors.pooling[0],
        config.vectors.methods[0],
    )


#: Known differences in the experiment commands (owned elsewhere); delete an entry once its command follows
#: vulnsteer.config.defaults. ``--split``: extract records every sample by default, evaluate reports on test.
KNOWN_DIFFERENCES = {"--split"}


def test_an_option_shared_by_commands_has_one_default() -> None:
    defaults: dict[str, dict[str, Any]] = {}
    for name, parser in _commands().items():
        for action in parser._actions:
            for option in action.option_strings:
                if (
                    option.startswith("--")
                    and action.default is not argparse.SUPPRESS
                    and action.help != argparse.SUPPRESS
                ):
                    shown = action.default
                    defaults.setdefault(option, {})[name] = shown
    mixed = {
        option: by_command
        for option, by_command in defaults.items()
        if len({json.dumps(v, default=str) for v in by_command.values()}) > 1 and option not in KNOWN_DIFFERENCES
    }
    # a None default shown as "(default: X)" in help counts as X: detect's --positions/--unit/--max-new-tokens
    assert not mixed, mixed


def test_global_flags_parse_anywhere() -> None:
    parser = build_parser()
    for argv in (
        ["-v", "--no-progress", "data", "validate", "p"],
        ["data", "validate", "p", "-v", "--no-progress"],
        ["data", "-v", "validate", "--no-progress", "p"],
    ):
        args = parser.parse_args(argv)
        assert args.verbose is True and args.no_progress is True
    args = parser.parse_args(["data", "validate", "p"])
    assert args.verbose is False and args.no_progress is False


def test_numbers_that_start_with_a_minus_are_values() -> None:
    parser = build_parser()
    assert config_from_args(
        parser.parse_args(["vectors", "fit", "--out", "v", "--layers", "-8,15"])
    ).steering.layers == ((-8, 15),)
    assert parser.parse_args(["detect", "x", "--vector", "v", "--strength", "-1e-1"]).strength == -0.1
    assert parser.parse_args(["run", "--strengths", "-1,-.3,0.3"]).cfg__steering__strengths == [-1.0, -0.3, 0.3]


def test_cli_module_imports_no_torch() -> None:
    import subprocess

    code = "import sys, vulnsteer.cli; vulnsteer.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
