"""The nnsight backend equals the hook backend: activations, per-row steered margins, generated tokens, the sign
convention, gated specs, nested contexts and nnsight's remote path (simulated here: no network)."""

from __future__ import annotations

import copy
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import make_tiny, random_vector, toy_samples
from vulnsteer.config.design import ProbeDesign
from vulnsteer.config.vocabulary import POOLINGS
from vulnsteer.data.sample import Sample
from vulnsteer.detection.engine import detect_variants_modes, score_logits
from vulnsteer.lm import nnsight_backend
from vulnsteer.lm.activations import ANSWER_POOLINGS, SINK_POOLINGS, ActivationSink, extract_activations, recording
from vulnsteer.lm.forward import forward
from vulnsteer.lm.model import LoadedModel, load_model
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.gate import Gate
from vulnsteer.steering.hooks import SteeringSpec, steer, steer_rows
from vulnsteer.steering.probe import Probe
from vulnsteer.steering.vectors import SteeringVector, unembedding_vector

needs_nnsight = pytest.mark.skipif(importlib.util.find_spec("nnsight") is None, reason="nnsight not installed")

#: Both backends run the same float32 operations on the same CPU; allow for nothing more than rounding.
ATOL = 1e-5


def _pair(tokenizer: Any, arch: str = "llama", remote: bool | str = False) -> tuple[LoadedModel, LoadedModel]:
    """The same tiny model twice: as it is (hooks) and a copy wrapped by nnsight (which instruments its modules)."""
    hooks = make_tiny(tokenizer, arch)
    wrapped = copy.deepcopy(hooks.model)
    nn = LoadedModel(
        model=wrapped,
        tokenizer=tokenizer,
        model_id=hooks.model_id,
        fingerprint=hooks.fingerprint,
        source="test",
        backend=nnsight_backend.NNSightBackend.wrap(wrapped, tokenizer, remote),
    )
    return hooks, nn


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request: Any, tiny_tokenizer: Any) -> tuple[LoadedModel, LoadedModel]:
    if importlib.util.find_spec("nnsight") is None:
        pytest.skip("nnsight not installed")
    return _pair(tiny_tokenizer, request.param)


def _samples() -> list[Sample]:
    """Prompts of different token lengths, so the batches are left-padded."""
    out = toy_samples(3)
    out.append(Sample("long", "def f(a):\n    return open(a).read()\n" * 3, "python", "CWE-22", "vulnerable", "pl"))
    return out


def _both(
    pair: tuple[LoadedModel, LoadedModel], run: Callable[[LoadedModel], dict[str, dict[str, list[Any]]]]
) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
    hooks, nn = pair
    return run(hooks), run(nn)


@needs_nnsight
def test_extracted_activations_are_equal(pair: tuple[LoadedModel, LoadedModel]) -> None:
    hooks, nn = pair
    samples = _samples()
    every = [*POOLINGS, *ANSWER_POOLINGS]
    a = extract_activations(hooks, samples, [0, 2, -1], poolings=every, batch_size=3, progress=False)
    b = extract_activations(nn, samples, [0, 2, -1], poolings=every, batch_size=3, progress=False)
    assert a.layers == b.layers == [0, 2, 3]
    for pooling in every:
        assert a.get(pooling).abs().sum() > 0
        torch.testing.assert_close(b.get(pooling), a.get(pooling), atol=ATOL, rtol=0)


def _margins(result: dict[str, dict[str, list[Any]]]) -> dict[str, list[float]]:
    return {name: [r.margin for r in recs] for name, recs in result["logit"].items()}


@needs_nnsight
@pytest.mark.parametrize("share_prefix", [True, False])
def test_per_row_steered_margins_are_equal(pair: tuple[LoadedModel, LoadedModel], share_prefix: bool) -> None:
    """Several variants in one batch (per-row steering), positions last/prompt/all, both signs, left padding."""
    vec, other = random_vector((1, 2), seed=5), random_vector((2,), seed=9)
    variants = {
        "base": [],
        "last+": [SteeringSpec(vec, 2.0, positions="last", unit="raw")],
        "last-": [SteeringSpec(vec, -0.3, unit="relative", positions="last")],
        "prompt": [SteeringSpec(vec, 1.5, unit="sigma", positions="prompt")],
        "all": [
            SteeringSpec(other, 1.0, positions="all", unit="raw"),
            SteeringSpec(vec, 0.5, layers=(1,), positions="last", unit="raw"),
        ],
    }
    samples = _samples()

    def run(lm: LoadedModel) -> dict[str, dict[str, list[Any]]]:
        return detect_variants_modes(
            lm, samples, variants, modes=("logit",), batch_size=3, share_prefix=share_prefix, progress=False
        )

    a, b = _both(pair, run)
    ma, mb = _margins(a), _margins(b)
    for name in variants:
        torch.testing.assert_close(torch.tensor(mb[name]), torch.tensor(ma[name]), atol=ATOL, rtol=0)
        if name != "base":
            assert ma[name] != ma["base"], f"{name} should move the margins"


@needs_nnsight
def test_last_position_prefix_path_and_sink_are_equal(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """Only ``last`` steering: the prompt prefix is run once (recorded by the sink) and its KV cache continued."""
    vec = random_vector((1, 3), seed=5)
    variants = {
        "base": [],
        "up": [SteeringSpec(vec, 1.0, positions="last", unit="raw")],
        "down": [SteeringSpec(vec, -1.0, positions="all", unit="raw")],
    }
    samples = _samples()
    sinks = []

    def run(lm: LoadedModel) -> dict[str, dict[str, list[Any]]]:
        sink = ActivationSink([0, 2])
        sinks.append(sink)
        out = detect_variants_modes(lm, samples, variants, modes=("logit",), batch_size=2, sink=sink, progress=False)
        return out

    a, b = _both(pair, run)
    for name in variants:
        torch.testing.assert_close(torch.tensor(_margins(b)[name]), torch.tensor(_margins(a)[name]), atol=ATOL, rtol=0)
    ids = [s.id for s in samples]
    for pooling in SINK_POOLINGS:  # (what a sink records)
        torch.testing.assert_close(
            sinks[1].activations(ids).get(pooling), sinks[0].activations(ids).get(pooling), atol=ATOL, rtol=0
        )


@needs_nnsight
def test_generated_tokens_are_equal(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """Generation mode: greedy decoding on the KV cache, steering the generated tokens (and all positions)."""
    vec = random_vector((1, 2), seed=5)
    variants = {
        "base": [],
        "generated": [SteeringSpec(vec, 3.0, positions="generated", unit="raw")],
        "all": [SteeringSpec(vec, -2.0, positions="all", unit="raw")],
        "mixed": [
            SteeringSpec(vec, 2.0, positions="last", unit="raw"),
            SteeringSpec(vec, 1.0, layers=(2,), positions="generated", unit="raw"),
        ],
    }
    samples = _samples()

    def run(lm: LoadedModel) -> dict[str, dict[str, list[Any]]]:
        return detect_variants_modes(
            lm, samples, variants, modes=("logit", "generation"), batch_size=2, max_new_tokens=6, progress=False
        )

    a, b = _both(pair, run)
    texts = {name: [r.text for r in recs] for name, recs in a["generation"].items()}
    assert texts == {name: [r.text for r in recs] for name, recs in b["generation"].items()}
    assert texts["generated"] != texts["base"] or texts["all"] != texts["base"], "steering should change some text"
    for name in variants:
        torch.testing.assert_close(torch.tensor(_margins(b)[name]), torch.tensor(_margins(a)[name]), atol=ATOL, rtol=0)


@needs_nnsight
def test_sign_convention(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """A positive strength along the model's own answer axis (secure - vulnerable) raises the margin toward
    "vulnerable", equally on both backends; a negative one lowers it."""
    hooks, nn = pair
    last = hooks.num_layers - 1
    vector = unembedding_vector(hooks, [last], layer_norms={last: 10.0})
    samples = _samples()
    margins = {}
    for strength in (-1.0, 0.0, 1.0):
        spec = SteeringSpec(vector, strength, positions="last", unit="relative")
        per = []
        for lm in (hooks, nn):
            with steer(lm, spec):
                per.append(torch.tensor([r.margin for r in score_logits(lm, samples, progress=False)]))
        torch.testing.assert_close(per[1], per[0], atol=ATOL, rtol=0)
        margins[strength] = per[0]
    assert bool((margins[1.0] > margins[0.0]).all()) and bool((margins[-1.0] < margins[0.0]).all())


@needs_nnsight
def test_gated_specs_are_equal(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """Gates are resolved from the prompt's unsteered states (read by the backend), then steered row by row."""
    hooks, _ = pair
    samples = _samples()
    weight = torch.randn(64, generator=torch.Generator().manual_seed(11))
    scores = extract_activations(hooks, samples, [1], poolings=["code_mean"], progress=False).get("code_mean", 1)
    scores = scores @ weight
    probe = Probe(ProbeDesign((1,), ("code_mean",)), weight, 0.0, float(scores.median()), float(scores.std()))
    vec = random_vector((1, 2), seed=5)
    variants = {
        "base": [],
        "sign": [SteeringSpec(vec, 2.0, positions="all", gate=Gate("sign", probe), unit="raw")],
        "linear": [SteeringSpec(vec, 0.5, unit="relative", positions="last", gate=Gate("linear", probe))],
    }

    def run(lm: LoadedModel) -> dict[str, dict[str, list[Any]]]:
        return detect_variants_modes(lm, samples, variants, modes=("logit",), batch_size=3, progress=False)

    a, b = _both(pair, run)
    assert {r.push for r in a["logit"]["sign"]} == {1.0, -1.0}, "the probe should send both ways"
    assert [r.push for r in a["logit"]["linear"]] == [r.push for r in b["logit"]["linear"]]
    for name in variants:
        torch.testing.assert_close(torch.tensor(_margins(b)[name]), torch.tensor(_margins(a)[name]), atol=ATOL, rtol=0)


def _one_pass(lm: LoadedModel, vec: SteeringVector) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nested contexts on one forward pass: an outer steer, a recording, per-row steering inside it."""
    tok = lm.tokenizer
    batch = tokenize_prompts(tok, [build_prompt(tok, c, "python") for c in ("x = 1", "y = open(p).read()\n" * 2)])
    rows = [[], [SteeringSpec(vec, -1.0, positions="prompt", unit="raw")]]
    with steer(lm, vec, 0.5, positions="all", unit="raw"), recording(lm, [1, 2]) as seen, steer_rows(lm, rows):
        logits, _ = forward(lm, batch.input_ids, batch.attention_mask, None, all_logits=True)
    return logits, seen[1], seen[2]


@needs_nnsight
def test_nested_contexts_apply_in_order(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """A recording sees the shifts of the contexts entered before it and not those entered after, on both."""
    vec = random_vector((1, 2), seed=5)
    for got, want in zip(_one_pass(pair[1], vec), _one_pass(pair[0], vec)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@needs_nnsight
def test_errors_inside_a_trace_keep_their_type_and_leave_no_context(pair: tuple[LoadedModel, LoadedModel]) -> None:
    """A bad pass raises the same error on both backends (so out-of-memory back-off works alike), and the
    contexts are gone afterwards."""
    hooks, nn = pair
    tok = hooks.tokenizer
    batch = tokenize_prompts(tok, [build_prompt(tok, "x = 1", "python")] * 2)
    rows = [[SteeringSpec(random_vector((1,), seed=5), 1.0, positions="all", unit="raw")]] * 3
    for lm in (hooks, nn):
        with (
            pytest.raises(ValueError, match="per-row steering has 3 rows but the batch has 2"),
            steer_rows(lm, rows),
            recording(lm, [2]),
        ):
            forward(lm, batch.input_ids, batch.attention_mask, None)
    assert isinstance(nn.backend, nnsight_backend.NNSightBackend) and nn.backend._active == []


class _NoVulnsteer(importlib.abc.MetaPathFinder):
    """An import of vulnsteer fails, as on a server that lacks it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "vulnsteer":
            raise ModuleNotFoundError(f"No module named {name!r} (as on the server)")
        return None


@needs_nnsight
def test_remote_path_simulated(tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnsight's ``remote="local"`` serialises each pass as a remote request and runs it here; vulnsteer cannot be
    imported while the request is read back (as on a server), so the steering helpers must travel by value. The
    numbers are unchanged."""
    from nnsight.schema.request import RequestModel

    read_back = RequestModel.deserialize

    def deserialize(*args: Any, **kwargs: Any) -> Any:
        blocker = _NoVulnsteer()
        sys.meta_path.insert(0, blocker)
        try:
            return read_back(*args, **kwargs)
        finally:
            sys.meta_path.remove(blocker)

    monkeypatch.setattr(RequestModel, "deserialize", staticmethod(deserialize))
    hooks, remote = _pair(tiny_tokenizer, remote="local")
    vec = random_vector((1, 2), seed=5)
    for got, want in zip(_one_pass(remote, vec), _one_pass(hooks, vec)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    samples = _samples()[:2]
    a = extract_activations(hooks, samples, [1, 3], poolings=POOLINGS, progress=False)
    b = extract_activations(remote, samples, [1, 3], poolings=POOLINGS, progress=False)
    for pooling in POOLINGS:
        torch.testing.assert_close(b.get(pooling), a.get(pooling), atol=ATOL, rtol=0)


def test_missing_nnsight_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnsight" else real(name, *a))
    with pytest.raises(nnsight_backend.NNSightMissingError, match=r"pip install 'vulnsteer\[nnsight\]'"):
        load_model("no-such-model-dir/", backend="nnsight")


def test_bad_backend_and_remote_without_nnsight_backend_are_refused() -> None:
    with pytest.raises(ValueError, match="--backend must be one of hooks, nnsight"):
        load_model(backend="jax")
    with pytest.raises(ValueError, match="--remote needs --backend nnsight"):
        load_model(remote=True)
    with pytest.raises(ValueError, match="--remote must be"):
        nnsight_backend.NNSightBackend(SimpleNamespace(modules=list), "ftp://x")


def test_config_keys_and_flags() -> None:
    """``[model] backend``/``remote`` parse, round-trip and reach ``load_model``; the backend is not part of a
    run's identity (same numbers), the remote host is (another machine)."""
    from vulnsteer.config.experiment import ConfigError, ExperimentConfig, identity_of, parse_config
    from vulnsteer.config.resolved import dump_config
    from vulnsteer.lm import model as model_module

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    config = parse_config({"model": {"backend": "nnsight", "remote": "local"}})
    assert (config.model.backend, config.model.remote) == ("nnsight", "local")
    assert parse_config(tomllib.loads(dump_config(config))) == config
    plain = ExperimentConfig()
    assert identity_of(plain) == identity_of(plain.replace(model__backend="nnsight"))
    hosted = plain.replace(model__backend="nnsight")
    assert identity_of(hosted) != identity_of(hosted.replace(model__remote=True))
    with pytest.raises(ConfigError, match=r"model\.remote needs backend nnsight"):
        plain.replace(model__remote=True)  # (a remote host is nnsight's: accepted with hooks, it would be ignored)
    with pytest.raises(ConfigError, match=r"model\.backend.*jax"):
        parse_config({"model": {"backend": "jax"}})
    with pytest.raises(ConfigError, match=r"model\.remote"):
        parse_config({"model": {"remote": "ftp://host"}})
    seen: dict[str, Any] = {}
    remote = parse_config({"model": {"name": "org/m", "backend": "nnsight", "remote": "https://ndif.example"}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nnsight_backend, "require_nnsight", lambda: None)
        patch.setattr(model_module, "_load_remote", lambda spec, **k: seen.update(k, spec=spec))
        model_module.load_model(remote.model)  # the section's keys reach the loading
    assert (seen["spec"], seen["remote"]) == ("org/m", "https://ndif.example")


def test_cli_flags_parse() -> None:
    from vulnsteer.cli import build_parser
    from vulnsteer.cli.options import config_from_args

    parser = build_parser()
    for command in ("detect", "scan"):  # the same [model] keys as run's
        model = config_from_args(parser.parse_args([command, "x.py", "--backend", "nnsight", "--remote", "on"])).model
        assert (model.backend, model.remote) == ("nnsight", True)
        assert config_from_args(parser.parse_args([command, "x.py"])).model.remote is False
    args = parser.parse_args(["run", "--backend", "nnsight", "--remote", "https://ndif.example"])
    assert (config_from_args(args).model.backend, config_from_args(args).model.remote) == (
        "nnsight",
        "https://ndif.example",
    )


def test_cli_without_nnsight_says_how_to_install(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vulnsteer.cli import EXIT_USAGE, main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnsight" else real(name, *a))
    source = tmp_path / "a.py"
    source.write_text("import os\nos.system('ls ' + d)\n")
    assert main(["detect", str(source), "--backend", "nnsight", "--mode", "logit", "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'vulnsteer[nnsight]'" in err[0]


@needs_nnsight
def test_cli_detect_with_nnsight_equals_hooks(
    tiny_tokenizer: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vulnsteer detect --backend nnsight`` on a saved tiny model prints what the hook backend prints."""
    from vulnsteer.cli import main

    lm = make_tiny(tiny_tokenizer, "llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    source = tmp_path / "a.py"
    source.write_text("import os\nos.system('ls ' + d)\n")
    outputs = []
    for backend in ("hooks", "nnsight"):
        argv = ["detect", str(source), "--model", str(tmp_path / "tiny"), "--backend", backend, "--device", "cpu"]
        assert main([*argv, "--mode", "generation", "--max-new-tokens", "5", "--json", "--no-progress"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


@needs_nnsight
def test_remote_needs_a_hub_id(tmp_path: Any) -> None:
    """A remote model is the server's: a local folder is refused before anything loads."""
    from vulnsteer.lm.source import ModelLoadError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="pass its hub id"):
        load_model(str(tmp_path), backend="nnsight", remote=True)
