"""ModelScorer on a tiny random model: scores, explanations, steering, digests, and rescans that never load it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from toys import save_detector, toy_vector
from vulnsteer.config.sections import ModelSection
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.data.sample import Sample
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import DEFAULT_TEMPLATE
from vulnsteer.scan import ModelScorer, ScorerSpec, VectorSteering, scan
from vulnsteer.scan import identity as identity_module
from vulnsteer.scan import model_scorer as model_scorer_module
from vulnsteer.scan.spec import AUTO_DTYPE, DtypeChoice, choose_dtype

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")

UNITS = [
    Sample("a", "def read(path):\n    return open(path).read()", "python", "unknown", "vulnerable"),
    Sample("b", "int main(void) { char buf[16]; strcpy(buf, argv[1]); return 0; }", "c", "unknown", "vulnerable"),
]


def _scorer(lm: LoadedModel, template: Any = None, **spec: Any) -> ModelScorer:
    """A scorer on the loaded *lm* with the :class:`ScorerSpec` fields *spec*."""
    return ModelScorer(ScorerSpec(**spec), lm=lm, template=template)


def _steering(vector: Path, strength: float, **setting: Any) -> VectorSteering:
    """The vector at *strength* in raw units at every position (the test vectors record no layer norms)."""
    return VectorSteering(vector, strength, **{"positions": "all", "unit": "raw", **setting})


def test_scores_are_probabilities_with_a_threshold_verdict(tiny_lm: LoadedModel) -> None:
    scorer = _scorer(tiny_lm, max_code_tokens=64, threshold=0.5)
    scores = scorer.score(UNITS, progress=False)
    assert len(scores) == 2
    for s in scores:
        assert 0.0 <= s.score <= 1.0
        assert s.verdict == ("vulnerable" if s.score >= 0.5 else "secure")
        assert s.explanation is None and s.cwe is None
    again = scorer.score(list(reversed(UNITS)), progress=False)
    assert [s.score for s in again] == pytest.approx([s.score for s in reversed(scores)], abs=1e-5)


def test_long_functions_are_truncated_to_the_budget(tiny_lm: LoadedModel) -> None:
    long = dataclasses.replace(UNITS[0], code="\n".join(f"x{i} = read(p{i})" for i in range(200)))
    short, cut = _scorer(tiny_lm, max_code_tokens=32, long_functions="head").score([UNITS[0], long], progress=False)
    assert cut.truncated and not short.truncated and cut.windows == 1


@pytest.mark.parametrize("how", ["max", "mean"])
def test_long_functions_are_read_in_windows_and_aggregated(tiny_lm: LoadedModel, how: str) -> None:
    from vulnsteer.data.truncate import windows

    long = dataclasses.replace(UNITS[0], code="\n".join(f"x{i} = read(p{i})" for i in range(24)))
    scorer = _scorer(tiny_lm, max_code_tokens=64, aggregation=how)
    short, read = scorer.score([UNITS[0], long], progress=False)
    tokenizer = tiny_lm.tokenizer
    parts = windows(long.code, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]), 64)
    assert short.windows == 1 and not short.truncated
    assert read.windows == len(parts) > 1 and not read.truncated  # every line read, in windows
    alone = scorer.score([dataclasses.replace(long, code=text) for text, _ in parts], progress=False)
    values = [s.score for s in alone]
    expected = max(values) if how == "max" else sum(values) / len(values)
    assert read.score == pytest.approx(expected, abs=1e-5)
    # the verdict follows the aggregated score (with max: the top window's verdict)
    assert read.threshold == 0.5 and read.verdict == ("vulnerable" if read.score >= 0.5 else "secure")
    if how == "max":
        assert read.verdict == alone[values.index(max(values))].verdict


def test_explain_adds_the_generated_answer(tiny_lm: LoadedModel) -> None:
    plain = _scorer(tiny_lm, max_code_tokens=64).score(UNITS[:1], progress=False)[0]
    explained = _scorer(tiny_lm, explain=True, max_new_tokens=6, max_code_tokens=64).score(UNITS[:1], progress=False)[0]
    assert explained.explanation is not None and explained.explanation.startswith(DEFAULT_TEMPLATE.answer_prefix)
    assert explained.verdict in ("vulnerable", "secure", "uncertain")
    assert explained.score == pytest.approx(plain.score, abs=1e-5)  # the score is the logit score either way


def test_steering_moves_the_score_and_names_the_vector_cwe(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    vector = toy_vector(tiny_lm, tmp_path / "v.safetensors", scale=20.0)
    plain = _scorer(tiny_lm, max_code_tokens=64).score(UNITS, progress=False)
    steered = _scorer(tiny_lm, vector=_steering(vector, 3.0), max_code_tokens=64).score(UNITS, progress=False)
    assert [s.score for s in steered] != pytest.approx([s.score for s in plain], abs=1e-4)
    assert {s.cwe for s in steered} == {"CWE-89"}
    zero = _scorer(tiny_lm, vector=_steering(vector, 0.0), max_code_tokens=64).score(UNITS, progress=False)
    assert [s.score for s in zero] == pytest.approx([s.score for s in plain], abs=1e-5)


def test_digest_covers_everything_that_changes_a_score(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    vector = toy_vector(tiny_lm, tmp_path / "v.safetensors")
    other_vector = toy_vector(tiny_lm, tmp_path / "w.safetensors", scale=2.0)

    def digest(**kwargs: Any) -> str:
        return _scorer(tiny_lm, **kwargs).digest

    base = digest()
    assert base == digest()
    variants = [
        digest(vector=_steering(vector, 1.0)),
        digest(vector=_steering(vector, 2.0)),
        digest(vector=_steering(other_vector, 1.0)),
        digest(vector=_steering(vector, 1.0, positions="last")),
        digest(template=dataclasses.replace(DEFAULT_TEMPLATE, question="Is this {language} code safe?")),
        digest(max_code_tokens=256),
        digest(explain=True),
        digest(threshold=0.7),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert digest(batch_size=2) == base  # batching does not change what a score means


def test_a_missing_vector_file_is_named(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--vector: file not found: .*nope\.safetensors"):
        _scorer(tiny_lm, vector=_steering(tmp_path / "nope.safetensors", 1.0))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    from conftest import make_tiny

    folder = tmp_path_factory.mktemp("scan-model") / "tiny"
    lm = make_tiny(tiny_tokenizer, "llama", layers=2)
    lm.model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


class _Loads:
    """Counts load_model calls (and can forbid them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, forbid: bool = False) -> None:
        from vulnsteer.lm import model as model_module

        self.count = 0
        real = model_module.load_model

        def load(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if forbid:
                raise AssertionError("the model was loaded")
            return real(*args, **kwargs)

        monkeypatch.setattr(model_module, "load_model", load)


def _two_functions(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.py").write_text("def f(x):\n    return eval(x)\n\n\ndef g(y):\n    return y\n", encoding="utf-8")
    return folder


@needs_grammars
def test_a_cached_rescan_never_loads_the_model(
    saved_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _two_functions(tmp_path / "src")
    cache = tmp_path / "cache"
    spec = ScorerSpec(ModelSection(str(saved_tiny), device="cpu"), max_code_tokens=64)
    loads = _Loads(monkeypatch)
    with ModelScorer(spec, identity_store=cache / "models") as first:
        report = scan([root], first, cache_dir=cache, progress=False)
    assert loads.count == 1 and report.stats.scored == 2

    _Loads(monkeypatch, forbid=True)
    with ModelScorer(spec, identity_store=cache / "models") as second:
        again = scan([root], second, cache_dir=cache, progress=False)
        assert second.digest == first.digest
    assert again.stats.cached == 2 and again.stats.scored == 0
    assert [r.score for r in again.results] == [r.score for r in report.results]


@needs_grammars
def test_a_stale_recorded_identity_is_corrected_and_rescored(saved_tiny: Path, tmp_path: Path) -> None:
    root = _two_functions(tmp_path / "src")
    store = tmp_path / "cache" / "models"
    spec = ScorerSpec(ModelSection(str(saved_tiny), device="cpu"), max_code_tokens=64)
    with ModelScorer(spec, identity_store=store) as real:
        true_digest = real.digest
    record = next(store.glob("*.json"))
    data = json.loads(record.read_text())
    data["identity"]["weights_digest"] = "0" * 16  # as if the weights changed without their size or time changing
    record.write_text(json.dumps(data))
    stale = ModelScorer(spec, identity_store=store)
    assert stale.digest != true_digest
    report = scan([root], stale, cache_dir=tmp_path / "cache", progress=False)
    assert stale.digest == true_digest and report.digest == true_digest
    assert report.stats.scored == 2
    assert json.loads(record.read_text())["identity"]["weights_digest"] != "0" * 16
    stale.close()


def test_identity_keys_follow_the_files_and_the_requested_dtype(saved_tiny: Path, tmp_path: Path) -> None:
    key = identity_module.location_key(saved_tiny, "cpu", None)
    assert key == identity_module.location_key(saved_tiny, "cpu", None)
    assert key != identity_module.location_key(saved_tiny, "cpu", "bfloat16")
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in saved_tiny.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert identity_module.location_key(copy, "cpu", None) != key
    assert model_scorer_module.SCORE_FORMAT >= 1


def test_module_doctests() -> None:
    import doctest

    from vulnsteer.lm import paths as paths_module

    for module in (identity_module, model_scorer_module, paths_module):
        assert doctest.testmod(module).failed == 0


def test_a_saved_detector_scores_with_its_probe_gate(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    folder = save_detector(tiny_lm, tmp_path / "detector")
    scorer = _scorer(tiny_lm, detector=folder, max_code_tokens=64)
    scores = scorer.score(UNITS, progress=False)
    assert all(s.probe is not None and s.push in (-1.0, 1.0) and 0.0 <= s.score <= 1.0 for s in scores)
    assert scorer.provenance["scorer"] == "detector"
    plain = _scorer(tiny_lm, max_code_tokens=64)
    assert scorer.digest != plain.digest
    other = save_detector(tiny_lm, tmp_path / "other", threshold=1.0)  # another threshold: another detector
    assert _scorer(tiny_lm, detector=other, max_code_tokens=64).digest != scorer.digest
    with pytest.raises(ValueError, match="exclude each other"):
        _scorer(tiny_lm, detector=folder, vector=_steering(folder / "vector.safetensors", 1))
    with pytest.raises(ValueError, match=r"no detector\.json"):
        _scorer(tiny_lm, detector=tmp_path)


# ------------------------------------------------------------------------------------------ the model's dtype


def _detector_json(folder: Path, dtype: str, fmt: str = "vulnsteer.ProbeDetector") -> Path:
    """A detector folder with only what :func:`choose_dtype` reads: its format and the dtype it was fitted in."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "detector.json").write_text(json.dumps({"format": fmt, "model": {"id": "m", "dtype": dtype}}))
    return folder


def test_a_probe_detector_fitted_in_bf16_loads_in_bf16_where_the_cpu_runs_it(tmp_path: Path) -> None:
    bf16 = _detector_json(tmp_path / "bf16", "bfloat16")

    def choose(native: bool = True, detector: Path | None = bf16, explain: bool = False, **model: Any) -> Any:
        section = ModelSection(**{"device": "cpu", **model})
        return choose_dtype(ScorerSpec(model=section, detector=detector, explain=explain), native_bf16=native)

    chosen = choose()
    assert (chosen.dtype, chosen.why) == ("bfloat16", "the detector's dtype; this CPU has native bf16")
    assert choose(dtype="auto").dtype == "bfloat16"
    emulated = choose(native=False)  # bf16 without native instructions is slower than float32
    assert emulated.dtype is None and emulated.why.startswith(AUTO_DTYPE) and "no native bf16" in emulated.why
    assert choose(dtype="float32") == choose(native=False, dtype="float32")  # an explicit --dtype wins
    assert (choose(dtype="float32").dtype, choose(dtype="float32").why) == ("float32", "--dtype")
    assert choose(native=False, dtype="bf16").dtype == "bf16"
    # the bare model's answer (--answer), a steering detector, a probe fitted in float32: auto, as before
    assert choose(detector=None) == DtypeChoice(None, AUTO_DTYPE)
    assert choose(detector=_detector_json(tmp_path / "steer", "bfloat16", "vulnsteer.SavedDetector")).dtype is None
    assert choose(detector=_detector_json(tmp_path / "fp32", "float32")).dtype is None
    # --explain generates with the model; --quantize int8 needs float32 weights; a GPU is auto's (bf16 there)
    assert choose(explain=True).dtype is None and "--explain" in choose(explain=True).why
    int8 = choose(quantize="int8")
    assert int8.dtype is None and "--quantize int8" in int8.why
    assert choose(device="cuda:0").dtype is None and choose(device_map="auto").dtype is None


def test_a_scorer_loads_the_chosen_dtype_and_keys_its_identity_by_it(tmp_path: Path, saved_tiny: Path) -> None:
    from vulnsteer.lm.cpu import cpu_runs_bf16
    from vulnsteer.lm.model import _check_quantize

    bf16 = _detector_json(tmp_path / "bf16", "bfloat16")
    store = tmp_path / "models"
    section = ModelSection(name=str(saved_tiny), device="cpu")
    scorer = ModelScorer(ScorerSpec(model=section, detector=bf16), identity_store=store)
    expected = "bfloat16" if cpu_runs_bf16() else None  # (this machine's CPU decides)
    assert scorer.spec.model.dtype == expected and scorer.spec.detector == bf16
    assert scorer._key == identity_module.location_key(saved_tiny, "cpu", expected)
    assert scorer._key != identity_module.location_key(saved_tiny, "cpu", "float32")
    explicit = ModelScorer(ScorerSpec(model=dataclasses.replace(section, dtype="float32"), detector=bf16))
    assert explicit.spec.model.dtype == "float32" and explicit.dtype_choice.why == "--dtype"
    quantized = ModelScorer(ScorerSpec(model=dataclasses.replace(section, quantize="int8"), detector=bf16))
    assert quantized.spec.model.dtype is None
    _check_quantize("int8", "cpu", quantized.spec.model.dtype, None, False)  # (loading it is not refused)


@needs_grammars
def test_a_steering_detector_adapts_its_threshold_to_the_functions_scanned(
    tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    """Label-free adaptation of a steering detector: the steered scores stay as they are, and the verdict threshold
    flags the highest share of the distinct functions scanned (its gate probe's calibration share, or a stated
    prevalence); findings start there. A detector whose probe stores no share adapts only to a stated prevalence,
    and ``auto`` leaves it as fitted."""
    from vulnsteer.cli.options import detector_adapts
    from vulnsteer.scan import ScanOptions
    from vulnsteer.steering.probe import AdaptationError

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(24):
        body = f"return db.execute('SELECT * FROM t WHERE id = ' + x + '{i}')" if i % 2 else f"return x + {i}"
        (tree / f"m{i}.py").write_text(f"def f{i}(db, x):\n    {body}\n", encoding="utf-8")
    folder = save_detector(tiny_lm, tmp_path / "detector", share=0.5)
    spec = ScorerSpec(detector=folder, max_code_tokens=64)
    assert detector_adapts(spec, None)
    scorer = ModelScorer(spec, lm=tiny_lm)
    plain = scan([tree], scorer, ScanOptions(min_score=0.0), cache_dir=tmp_path / "cache", progress=False)
    auto = ScanOptions(min_score=0.0, adapt="auto", findings_at_threshold=True)
    adapted = scan([tree], scorer, auto, cache_dir=tmp_path / "cache", progress=False)
    assert adapted.options.adapt == "on" and adapted.provenance["adapted_to"] == 24
    before = {r.code_hash: r.score.score for r in plain.results}
    assert {r.code_hash: r.score.score for r in adapted.results} == before  # the steered scores stay
    threshold = adapted.results[0].score.threshold
    assert threshold is not None and all(r.score.threshold == threshold for r in adapted.results)
    assert all((r.score.verdict == "vulnerable") == (r.score.score > threshold) for r in adapted.results)

    def flags(report: Any, n: int) -> bool:  # the highest n (scores tied at the line are not flagged)
        scores = [r.score.score for r in report.results]
        line = report.results[0].score.threshold
        return sum(x > line for x in scores) <= n <= sum(x >= line for x in scores)

    assert len({r.score.score for r in adapted.results}) >= 20 and flags(adapted, 12)  # half: the calibration share
    flagged = sum(r.score.verdict == "vulnerable" for r in adapted.results)
    assert adapted.file_share == flagged / 24 and sum(r.finding for r in adapted.results) >= flagged
    told = scan([tree], scorer, dataclasses.replace(auto, prevalence=0.25), cache_dir=tmp_path / "cache",
                progress=False)  # fmt: skip
    assert flags(told, 6)
    old = save_detector(tiny_lm, tmp_path / "old-detector")  # no share stored: only a stated prevalence adapts it
    old_spec = ScorerSpec(detector=old, max_code_tokens=64)
    assert not detector_adapts(old_spec, None)
    old_scorer = ModelScorer(old_spec, lm=tiny_lm)
    with pytest.raises(AdaptationError, match="state --prevalence"):
        scan([tree], old_scorer, ScanOptions(adapt="on"), cache_dir=tmp_path / "cache", progress=False)
    stated = scan([tree], old_scorer, ScanOptions(adapt="on", prevalence=0.25), cache_dir=tmp_path / "cache",
                  progress=False)  # fmt: skip
    assert flags(stated, 6)
