"""The CLI as a new user meets it: a catalogue of bad inputs and misuse, each run as its own process.

Every case must end with its exit code (2 for bad usage or input, 1 for `data validate` problems), exactly one
error line that names the file, field or option, no traceback, and no output left behind. Cases that need a model
use a tiny random one saved to a folder; a copy of that folder without weights ("bare") proves that an error came
before any weights were loaded (loading them would fail with a model error instead).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from cli_runner import ForkServer, Result, cli_env, run_cli
from vulnsteer.lm.model import model_fingerprint
from vulnsteer.steering.vectors import Provenance, SteeringVector

SOURCE = "int main(void) {\n    char b[4];\n    gets(b);\n    return 0;\n}\n"


@dataclass
class World:
    """Paths every case can name: ``{in}`` inputs, ``{tiny}`` model, ``{bare}`` model without weights, ``{out}``."""

    root: Path
    inputs: Path
    tiny: Path
    bare: Path
    out: Path
    cache: Path
    subs: dict[str, str] = field(default_factory=dict)

    def expand(self, argv: list[str]) -> list[str]:
        return [arg.format(**self.subs) for arg in argv]


def _save_vector(path: Path, tensors: dict[str, torch.Tensor], provenance: str) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "vulnsteer.SteeringVector", "provenance": provenance})


def _make_inputs(folder: Path, fingerprint: str) -> None:
    folder.mkdir()
    (folder / "ok.c").write_text(SOURCE, encoding="utf-8")
    (folder / "empty.c").write_text("  \n", encoding="utf-8")
    (folder / "bin.c").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (folder / "u16.c").write_bytes(SOURCE.encode("utf-16"))
    (folder / "u16le.c").write_bytes(SOURCE.encode("utf-16-le"))
    (folder / "x.xyz").write_text(SOURCE, encoding="utf-8")
    with open(folder / "huge.c", "wb") as handle:  # sparse: 9 MiB of NUL bytes without writing them
        handle.truncate(9 << 20)
    # datasets
    paired = folder / "paired" / "CWE-79"
    paired.mkdir(parents=True)
    for i in range(3):
        (paired / f"f{i}.py").write_text(f"def f{i}(x):\n    return '<b>' + x\n", encoding="utf-8")
        (paired / f"p_f{i}.py").write_text(f"import html\ndef f{i}(x):\n    return html.escape(x)\n", encoding="utf-8")
    shutil.copytree(folder / "paired", folder / "paired_bin")
    (folder / "paired_bin" / "CWE-79" / "g.c").write_bytes((folder / "bin.c").read_bytes())
    (folder / "paired_bin" / "CWE-79" / "p_g.c").write_text("int g;\n", encoding="utf-8")
    shutil.copytree(folder / "paired", folder / "paired_u16")
    for file in (folder / "paired_u16" / "CWE-79").iterdir():
        file.write_bytes(file.read_text(encoding="utf-8").encode("utf-16"))
    rows = [
        {"code": "q = 'SELECT ' + x", "label": "vulnerable", "cwe": "CWE-89"},
        {"code": "q = 'SELECT ' + y", "label": "vulnerable", "cwe": "CWE-89"},
        {"code": "print(html.escape(x))", "label": "secure", "cwe": "CWE-79"},
        {"code": "print(x)", "label": "vulnerable", "cwe": "CWE-79"},
    ]
    (folder / "onesided.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "malformed.jsonl").write_text(
        json.dumps(rows[0]) + "\n" + '{"code": "x", "label": "secure"\n', encoding="utf-8"
    )
    (folder / "nocode.jsonl").write_text('{"label": "secure", "cwe": "CWE-89"}\n', encoding="utf-8")
    (folder / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    (folder / "badlabel.csv").write_text("code,label,cwe\nx = 1,maybe,CWE-89\n", encoding="utf-8")
    (folder / "nocolumn.csv").write_text("code,cwe\nx = 1,CWE-89\n", encoding="utf-8")
    (folder / "empty_dir").mkdir()
    (folder / "notes.txt").write_text("hello\n", encoding="utf-8")
    # vectors
    prov = Provenance("tiny", fingerprint, 64, (1,), "last", "mean_diff", "CWE-79", 3, 3, "h", "t", {1: 5.0})
    good = SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(0))}, prov)
    good.save(folder / "good.safetensors")
    data = json.loads(prov.to_json())
    missing_layers = {k: v for k, v in data.items() if k != "layers"}
    _save_vector(folder / "noprov.safetensors", {"layer.1": torch.ones(64)}, json.dumps(missing_layers))
    _save_vector(folder / "badjson.safetensors", {"layer.1": torch.ones(64)}, "{not json")
    _save_vector(folder / "shape.safetensors", {"layer.1": torch.ones(32)}, prov.to_json())
    _save_vector(folder / "nan.safetensors", {"layer.1": torch.full((64,), float("nan"))}, prov.to_json())
    _save_vector(folder / "layer_word.safetensors", {"layer.one": torch.ones(64)}, prov.to_json())
    _save_vector(folder / "huge.safetensors", {"layer.1": torch.full((64,), 1e30)}, prov.to_json())
    far = json.loads(prov.to_json()) | {"layers": [7], "layer_norms": {"7": 5.0}}
    _save_vector(folder / "far_layer.safetensors", {"layer.7": torch.ones(64)}, json.dumps(far))
    (folder / "vecdir").mkdir()
    shutil.copy(folder / "noprov.safetensors", folder / "vecdir" / "cwe-79-mean_diff.safetensors")
    other = Provenance("big", "0" * 16, 128, (1,), "last", "mean_diff", "CWE-79", 3, 3, "h", "t", {1: 5.0})
    SteeringVector({1: torch.ones(128)}, other).save(folder / "other_model.safetensors")
    blob = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (folder / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    (folder / "liar.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    (folder / "plain.safetensors").write_bytes(b"")
    torch.save({"x": torch.ones(2)}, folder / "torch.pt")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> World:  # type: ignore[no-untyped-def]
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("misuse")
    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    tiny = root / "tiny"
    lm.model.save_pretrained(tiny)
    tiny_tokenizer.save_pretrained(tiny)
    bare = root / "bare"
    bare.mkdir()
    for file in tiny.iterdir():
        if not file.name.endswith(".safetensors"):
            shutil.copy(file, bare / file.name)
    inputs = root / "in"
    _make_inputs(inputs, model_fingerprint(lm.model))
    out = root / "out"
    out.mkdir()
    w = World(root, inputs, tiny, bare, out, root / "cache")
    w.subs = {"in": str(inputs), "tiny": str(tiny), "bare": str(bare), "out": str(out)}
    return w


@pytest.fixture(scope="module")
def cli(world: World) -> Iterator[ForkServer]:
    server = ForkServer(world.root, cli_env(world.cache), warm=(world.tiny,))
    yield server
    server.close()


@dataclass(frozen=True)
class Case:
    """A command that must fail: exit *code*, one error line containing every *needle*, *out* not created."""

    id: str
    argv: list[str]
    needles: tuple[str, ...]
    code: int = 2
    out: str | None = None


TINY = ["--model", "{tiny}", "--device", "cpu"]
BARE = ["--model", "{bare}", "--device", "cpu"]


def _vector_case(case_id: str, file: str, *needles: str, strength: str = "1", extra: tuple[str, ...] = ()) -> Case:
    """``detect`` with a vector from the inputs (the model folder has no weights: the error must come first)."""
    argv = ["detect", "{in}/ok.c", *BARE, "--vector", f"{{in}}/{file}", "--strength", strength, *extra]
    return Case(case_id, argv, (file, *needles))


def _data_case(case_id: str, data: str, *needles: str, extra: tuple[str, ...] = ()) -> Case:
    """``vectors`` on a dataset from the inputs, writing to a fresh folder that must not appear."""
    out = f"vecs-{case_id}"
    argv = ["vectors", "fit", "--data", f"{{in}}/{data}", *extra, *BARE, "--out", f"{{out}}/{out}"]
    return Case(case_id, argv, needles, out=out)


CATALOGUE = [
    # ------------------------------------------------------------ usage
    Case("no-command", [], ("required",)),
    Case("unknown-command", ["frobnicate"], ("invalid choice",)),
    Case("detect-no-files", ["detect"], ("files",)),
    Case(
        "positions-generated-in-logit-mode",
        [
            "detect",
            "{in}/ok.c",
            "--mode",
            "logit",
            "--vector",
            "{in}/good.safetensors",
            "--strength",
            "1",
            "--positions",
            "generated",
        ],
        ("--positions generated", "--mode logit generates nothing"),
    ),
    Case("strength-without-vector", ["detect", "{in}/ok.c", "--strength", "3"], ("--strength needs --vector",)),
    Case("layers-without-vector", ["detect", "{in}/ok.c", "--layers", "1"], ("--layers needs --vector",)),
    Case("unit-without-vector", ["detect", "{in}/ok.c", "--unit", "raw"], ("--unit needs --vector",)),
    Case("positions-without-vector", ["detect", "{in}/ok.c", "--positions", "all"], ("--positions needs --vector",)),
    Case(
        "mismatch-flag-without-vector",
        ["detect", "{in}/ok.c", "--allow-model-mismatch"],
        ("--allow-model-mismatch needs --vector",),
    ),
    Case("vector-without-strength", ["detect", "{in}/ok.c", "--vector", "{in}/good.safetensors"], ("--strength",)),
    Case(
        "new-tokens-in-logit-mode",
        ["detect", "{in}/ok.c", "--mode", "logit", "--max-new-tokens", "8"],
        ("--max-new-tokens", "--mode generation"),
    ),
    Case("batch-size-zero", ["vectors", "fit", "--out", "{out}/v0", "--batch-size", "0"], ("--batch-size", "least 1")),
    Case("run-batch-size-zero", ["run", "--out", "{out}/r0", "--batch-size", "0"], ("--batch-size", "at least 1")),
    Case("batch-size-negative", ["extract", "--out", "{out}/a.st", "--batch-size", "-3"], ("--batch-size",)),
    Case("batch-size-word", ["vectors", "fit", "--out", "{out}/v0", "--batch-size", "many"], ("--batch-size",)),
    Case("max-code-tokens-zero", ["detect", "{in}/ok.c", "--max-code-tokens", "0"], ("--max-code-tokens",)),
    Case(
        "max-pairs-negative",
        ["vectors", "fit", "--out", "{out}/v0", "--max-pairs-per-cwe", "-1"],
        ("--max-pairs-per-cwe", "0 (no cap)"),
    ),
    Case(
        "strength-nan", ["detect", "{in}/ok.c", "--vector", "{in}/good.safetensors", "--strength", "nan"], ("finite",)
    ),
    Case(
        "strength-inf", ["detect", "{in}/ok.c", "--vector", "{in}/good.safetensors", "--strength", "-inf"], ("finite",)
    ),
    Case("strength-word", ["detect", "{in}/ok.c", "--strength", "lots"], ("--strength",)),
    Case("dtype-unknown", ["detect", "{in}/ok.c", "--dtype", "float8"], ("--dtype", "unknown value 'float8'")),
    Case("layers-not-integers", ["vectors", "fit", "--out", "{out}/v0", "--layers", "1.5"], ("--layers", "integers")),
    Case("layers-empty", ["vectors", "fit", "--out", "{out}/v0", "--layers", ","], ("--layers",)),
    Case("record-unknown", ["extract", "--out", "{out}/a.st", "--record", "middle"], ("--record", "code_mean")),
    Case("method-unknown", ["vectors", "fit", "--out", "{out}/v0", "--method", "magic"], ("--method", "unknown value")),
    Case("language-empty", ["detect", "{in}/ok.c", "--language", " "], ("--language",)),
    Case("extract-needs-out", ["extract"], ("--out",)),
    Case("format-without-data", ["vectors", "fit", "--out", "{out}/v", "--format", "csv"], ("--format needs --data",)),
    Case("upstream-without-data", ["extract", "--out", "{out}/a", "--respect-upstream-split"], ("needs --data",)),
    Case("vectors-takes-no-unit", ["vectors", "fit", "--out", "{out}/v", "--unit", "raw"], ("unrecognized", "--unit")),
    Case("stats-model-without-tokens", ["data", "stats", "{in}/paired", "--no-tokens", "--model", "x"], ("--model",)),
    Case("data-needs-path", ["data", "validate"], ("path",)),
    # ------------------------------------------------------------ source files
    Case("detect-missing-file", ["detect", "{in}/nope.c"], ("nope.c", "no such file")),
    Case("detect-folder", ["detect", "{in}/paired"], ("paired", "is a folder")),
    Case("detect-empty-file", ["detect", "{in}/empty.c"], ("empty.c", "empty")),
    Case("detect-binary-only", ["detect", "{in}/bin.c"], ("binary",)),
    Case("detect-device-file", ["detect", "/dev/zero"], ("/dev/zero", "not a regular file")),
    Case("detect-huge-file", ["detect", "{in}/huge.c"], ("huge.c", "too large")),
    Case("detect-one-bad-among-good", ["detect", "{in}/ok.c", "{in}/nope.c"], ("nope.c",)),
    # ------------------------------------------------------------ vectors (checked before the model loads)
    Case("vector-missing", ["detect", "{in}/ok.c", *BARE, "--vector", "{in}/nope.st", "--strength", "1"], ("nope.st",)),
    _vector_case("vector-no-provenance-field", "noprov.safetensors", "'layers'"),
    _vector_case("vector-provenance-not-json", "badjson.safetensors"),
    _vector_case("vector-wrong-shape", "shape.safetensors", "shape"),
    _vector_case("vector-nan", "nan.safetensors", "non-finite"),
    _vector_case("vector-layer-not-a-number", "layer_word.safetensors"),
    _vector_case("vector-truncated", "truncated.safetensors"),
    _vector_case("vector-pickle", "pickle.safetensors"),
    _vector_case("vector-header-length-lies", "liar.safetensors"),
    _vector_case("vector-empty-file", "plain.safetensors"),
    _vector_case("vector-torch-pickle", "torch.pt"),
    _vector_case("vector-is-a-folder", "paired"),
    _vector_case("strength-absurd", "good.safetensors", "--strength", "hidden-state scale", strength="1e30"),
    _vector_case("vector-absurd-raw", "huge.safetensors", "--strength", extra=("--unit", "raw")),
    _vector_case("vector-layers-option-not-in-vector", "good.safetensors", "[2]", extra=("--layers", "2")),
    _vector_case("vector-layer-beyond-model", "far_layer.safetensors", "3 layers"),
    _vector_case("vector-for-another-hidden-size", "other_model.safetensors", "hidden size 128"),
    Case(
        "evaluate-vector-folder-bad-file",
        [
            "evaluate",
            "--vectors",
            "{in}/vecdir",
            "--strength",
            "0.3",
            "--data",
            "{in}/paired",
            *BARE,
            "--out",
            "{out}/e",
        ],
        ("vecdir/cwe-79-mean_diff.safetensors", "'layers'"),
        out="e",
    ),
    # ------------------------------------------------------------ options a command would not use
    Case(
        "evaluate-vectors-takes-one-strength",
        ["evaluate", "--vectors", "{in}/vecdir", "--strength", "0.3", "--strengths", "9", "--out", "{out}/ev-s"],
        ("--strengths does not apply to evaluate --vectors",),
        out="ev-s",
    ),
    Case(
        "evaluate-vectors-no-pooled-vector",
        ["evaluate", "--vectors", "{in}/vecdir", "--strength", "0.3", "--pooled-vector", "--out", "{out}/ev-p"],
        ("--pooled-vector does not apply to evaluate --vectors",),
        out="ev-p",
    ),
    Case(
        "evaluate-from-keeps-the-runs-choices",
        ["evaluate", "--from", "{in}/no-run", "--data", "{in}/paired", "--conditional-strengths", "2"],
        ("--conditional-strengths does not apply to evaluate --from",),
    ),
    # ------------------------------------------------------------ model and machine
    Case("device-unknown", ["detect", "{in}/ok.c", "--model", "{tiny}", "--device", "gpu7"], ("--device", "gpu7")),
    Case("device-meta", ["detect", "{in}/ok.c", "--model", "{tiny}", "--device", "meta"], ("--device",)),
    Case("model-local-path-missing", ["detect", "{in}/ok.c", "--model", "./no/such/model"], ("no/such/model",)),
    Case("model-hub-unreachable", ["detect", "{in}/ok.c", "--model", "nosuchorg/nosuchmodel"], ("nosuchorg",)),
    Case("model-invalid-id", ["detect", "{in}/ok.c", "--model", "not a model!"], ("not a model!",)),
    Case("model-is-a-plain-file", ["detect", "{in}/ok.c", "--model", "{in}/notes.txt"], ("notes.txt", ".gguf")),
    Case("model-folder-without-config", ["detect", "{in}/ok.c", "--model", "{in}/empty_dir"], ("config.json",)),
    Case("model-gguf-missing", ["detect", "{in}/ok.c", "--model", "{in}/x.gguf"], ("x.gguf",)),
    Case(
        "max-code-tokens-beyond-context",
        ["detect", "{in}/ok.c", *BARE, "--mode", "logit", "--max-code-tokens", "100000"],
        ("--max-code-tokens 100000", "2048"),
    ),
    Case(
        "scan-max-code-tokens-beyond-context",
        ["scan", "{in}/ok.c", *BARE, "--max-code-tokens", "100000"],
        ("--max-code-tokens 100000", "2048"),
    ),
    Case(
        "max-new-tokens-beyond-context",
        ["detect", "{in}/ok.c", *BARE, "--max-new-tokens", "5000"],
        ("--max-new-tokens",),
    ),
    _data_case(
        "vectors-max-code-tokens-beyond-context",
        "paired",
        "--max-code-tokens 9999",
        extra=("--max-code-tokens", "9999"),
    ),
    _data_case("vectors-layer-beyond-model", "paired", "layer 7", "3 layers", extra=("--layers", "7")),
    # ------------------------------------------------------------ outputs (checked first)
    Case("vectors-out-under-a-file", ["vectors", "fit", "--out", "{in}/ok.c/vecs"], ("--out", "ok.c", "not a folder")),
    Case("vectors-out-is-a-file", ["vectors", "fit", "--out", "{in}/ok.c"], ("--out", "not a folder")),
    Case("extract-out-is-a-folder", ["extract", "--out", "{in}/paired"], ("--out", "is a folder")),
    Case("extract-out-unwritable", ["extract", "--out", "/proc/vulnsteer/a.safetensors"], ("--out", "/proc")),
    Case("extract-out-empty", ["extract", "--out", ""], ("--out",)),
    Case("run-out-unwritable", ["run", "--out", "/proc/vulnsteer/run"], ("--out /proc/vulnsteer/run", "/proc")),
    Case(
        "evaluate-out-unwritable",
        ["evaluate", "--vectors", "{in}/vecdir", "--strength", "0.3", "--out", "/proc/vulnsteer/ev"],
        ("--out /proc/vulnsteer/ev",),
    ),
    Case("scan-output-is-its-input", ["scan", "{in}/ok.c", "-o", "{in}/ok.c"], ("-o/--output", "is one of the inputs")),
    Case(
        "export-onto-its-vector",
        ["vectors", "export", "{in}/good.safetensors", "--gguf", "{in}/good.safetensors", "--strength", "0.3"],
        ("--gguf", "is one of the inputs"),
    ),
    Case(
        "extract-onto-its-data",
        ["extract", "--data", "{in}/onesided.jsonl", "--out", "{in}/onesided.jsonl"],
        ("--out", "is one of the inputs"),
    ),
    Case("scan-output-unwritable", ["scan", "{in}/ok.c", "-o", "/proc/vulnsteer/x.sarif"], ("-o/--output", "/proc")),
    Case(
        "export-gguf-unwritable",
        ["vectors", "export", "{in}/good.safetensors", "--gguf", "/proc/vulnsteer/x.gguf", "--strength", "0.3"],
        ("--gguf", "/proc"),
    ),
    Case(
        "import-out-unwritable",
        ["vectors", "import", "{in}/nope.gguf", "--out", "/proc/vulnsteer/x.safetensors"],
        ("--out", "/proc"),
    ),
    # ------------------------------------------------------------ data (checked before the weights load)
    _data_case("vectors-data-missing", "nowhere", "nowhere"),
    _data_case("vectors-data-malformed", "malformed.jsonl", "malformed.jsonl:2", "malformed JSON"),
    _data_case("vectors-data-missing-field", "nocode.jsonl", "nocode.jsonl:1", "'code'", extra=("--format", "jsonl")),
    _data_case("vectors-data-format-unclear", "nocode.jsonl", "nocode.jsonl", "'code'", "--format"),
    _data_case("vectors-cwe-without-secure", "onesided.jsonl", "CWE-89", "no secure", extra=("--cwe", "89")),
    _data_case("vectors-cwe-unknown", "paired", "banana", extra=("--cwe", "banana")),
    _data_case("vectors-format-unknown", "paired", "parquet", "--format", extra=("--format", "parquet")),
    _data_case("vectors-format-undetectable", "notes.txt", "notes.txt", "--format"),
    _data_case("vectors-merge-map-bad", "paired", "77", extra=("--merge-cwe", "77")),
    Case(
        "extract-data-malformed",
        ["extract", "--data", "{in}/malformed.jsonl", *BARE, "--out", "{out}/acts.safetensors"],
        ("malformed.jsonl:2",),
        out="acts.safetensors",
    ),
    Case("stats-missing-path", ["data", "stats", "{in}/nowhere", "--no-tokens"], ("nowhere",)),
    Case("stats-malformed", ["data", "stats", "{in}/malformed.jsonl", "--no-tokens"], ("malformed.jsonl:2",)),
    # ------------------------------------------------------------ data validate lists problems (exit 1)
    Case("validate-binary-file", ["data", "validate", "{in}/paired_bin"], ("g.c", "binary"), code=1),
    Case("validate-one-sided-cwe", ["data", "validate", "{in}/onesided.jsonl"], ("CWE-89", "no secure"), code=1),
    Case(
        "validate-deep-json",
        ["data", "validate", "{in}/deep.jsonl", "--format", "jsonl"],
        ("deep.jsonl:1", "malformed"),
        code=1,
    ),
    Case("validate-bad-label", ["data", "validate", "{in}/badlabel.csv"], ("badlabel.csv:2", "'label'"), code=1),
    Case("validate-missing-column", ["data", "validate", "{in}/nocolumn.csv"], ("nocolumn.csv", "'label'"), code=1),
    Case("validate-empty-folder", ["data", "validate", "{in}/empty_dir"], ("empty_dir",), code=1),
    Case("validate-missing-path", ["data", "validate", "{in}/nowhere"], ("nowhere",), code=1),
    Case("validate-undetectable", ["data", "validate", "{in}/ok.c"], ("ok.c", "--format"), code=1),
]


def _check_failure(case: Case, result: Result, world: World) -> None:
    context = f"\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert result.rc == case.code, context
    assert "Traceback" not in result.err + result.out, context
    if case.code == 1:  # data validate: problems on stdout, one summary line on stderr
        text = result.out
        assert len(result.err_lines) == 1 and "problem(s)" in result.err_lines[0], context
    else:
        errors = [line for line in result.err_lines if "error:" in line]
        assert len(errors) == 1, context
        assert result.err_lines[-1] == errors[0], context  # nothing after the message (no stray progress frame)
        assert all("warning:" in line for line in result.err_lines[:-1]), context
        text = errors[0]
    for needle in case.needles:
        assert needle.format(**world.subs) in text, f"{needle!r} missing{context}"
    if case.out is not None:
        assert not (world.out / case.out).exists(), f"{case.out} was created{context}"
    leftovers = [p.name for p in world.out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.id)
def test_misuse_fails_with_one_clear_line(case: Case, world: World, cli: ForkServer) -> None:
    _check_failure(case, cli.run(["--no-progress", *world.expand(case.argv)]), world)


def test_cuda_on_a_machine_without_it(world: World, cli: ForkServer) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    case = Case("cuda", ["detect", "{in}/ok.c", "--model", "{tiny}", "--device", "cuda:0"], ("--device cuda:0", "CUDA"))
    _check_failure(case, cli.run(world.expand(case.argv)), world)


def test_unwritable_out_folder(world: World, cli: ForkServer) -> None:
    locked = world.root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("permissions do not stop this user (root)")
        case = Case("locked", ["vectors", "fit", "--out", str(locked / "vecs")], ("--out", "locked"))
        _check_failure(case, cli.run(case.argv), world)
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- inputs that work, with a word where due


def _detect_json(cli: ForkServer, world: World, *files: str, extra: tuple[str, ...] = ()) -> tuple[Result, list[dict]]:
    argv = ["--no-progress", "detect", *files, "--model", str(world.tiny), "--device", "cpu", "--mode", "logit"]
    result = cli.run([*argv, "--json", *extra])
    assert result.rc == 0, result.err
    return result, [json.loads(line) for line in result.out.splitlines()]


def test_utf16_sources_are_scored_as_the_text_they_hold(world: World, cli: ForkServer) -> None:
    files = [str(world.inputs / n) for n in ("ok.c", "u16.c", "u16le.c")]
    result, records = _detect_json(cli, world, *files)
    assert [r["file"] for r in records] == files
    scores = {r["p_vulnerable"] for r in records}
    assert len(scores) == 1, records  # the same code, whatever its encoding
    assert not result.err_lines


def test_binary_files_are_skipped_with_a_count(world: World, cli: ForkServer) -> None:
    result, records = _detect_json(cli, world, str(world.inputs / "bin.c"), str(world.inputs / "ok.c"))
    assert [r["file"] for r in records] == [str(world.inputs / "ok.c")]
    assert any("bin.c" in line and "binary" in line for line in result.err_lines)
    assert any("skipped 1 binary file" in line for line in result.err_lines)


def test_unknown_extension_is_said_and_prompted_as_plain_source(world: World, cli: ForkServer) -> None:
    result, records = _detect_json(cli, world, str(world.inputs / "x.xyz"))
    assert records[0]["language"] == "unknown"
    assert any("x.xyz" in line and "--language" in line for line in result.err_lines)
    quiet, _ = _detect_json(cli, world, str(world.inputs / "x.xyz"), extra=("--language", "c"))
    assert not quiet.err_lines
    odd, records = _detect_json(cli, world, str(world.inputs / "ok.c"), extra=("--language", "klingon"))
    assert records[0]["language"] == "klingon"
    assert any("--language 'klingon' is no language vulnsteer knows" in line for line in odd.err_lines)


def test_steered_detection_with_a_matching_vector(world: World, cli: ForkServer) -> None:
    _, plain = _detect_json(cli, world, str(world.inputs / "ok.c"))
    vector = ("--vector", str(world.inputs / "good.safetensors"), "--strength", "0.5")
    _, steered = _detect_json(cli, world, str(world.inputs / "ok.c"), extra=vector)
    assert steered[0]["p_vulnerable"] != plain[0]["p_vulnerable"]


def test_validate_reads_utf16_sources(world: World, cli: ForkServer) -> None:
    result = cli.run(["data", "validate", str(world.inputs / "paired_u16")])
    assert result.rc == 0, result.out + result.err
    assert "valid" in result.out and "6 samples" in result.out and "UTF-16" in result.out


def test_validate_counts_binary_files_in_its_summary(world: World, cli: ForkServer) -> None:
    result = cli.run(["data", "validate", str(world.inputs / "paired_bin")])
    assert result.rc == 1
    assert "1 binary file(s) skipped" in result.err


def test_vectors_writes_only_after_everything_checked(world: World, cli: ForkServer) -> None:
    out = world.root / "fresh" / "vecs"
    result = cli.run(
        ["--no-progress", "vectors", "fit", "--data", str(world.inputs / "paired"), *_tiny(world), "--out", str(out)]
    )
    assert result.rc == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["cwe-79-mean-diff-last.safetensors"]
    SteeringVector.load(out / "cwe-79-mean-diff-last.safetensors")


def _tiny(world: World) -> list[str]:
    return ["--model", str(world.tiny), "--device", "cpu"]


# ---------------------------------------------------------------- global flags, exit codes, the real entry point


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-progress", "-v", "data", "validate", "{in}/paired"],
        ["data", "validate", "{in}/paired", "--no-progress", "-v"],
        ["data", "-v", "validate", "{in}/paired", "--no-progress"],
        ["-v", "data", "validate", "--no-progress", "{in}/paired"],
    ],
    ids=["before", "after", "between", "mixed"],
)
def test_global_flags_work_before_and_after_the_subcommand(argv: list[str], world: World, cli: ForkServer) -> None:
    result = cli.run(world.expand(argv))
    assert result.rc == 0, result.err
    assert "valid" in result.out


def test_verbose_shows_the_traceback_of_an_input_error(world: World, cli: ForkServer) -> None:
    result = cli.run(["detect", str(world.inputs / "nope.c"), "-v"])
    assert result.rc == 2
    assert "Traceback" in result.err
    assert result.err_lines[-1].startswith("vulnsteer: error:") and "nope.c" in result.err_lines[-1]


_BOOM = """
import sys
import vulnsteer.cli.data as data_cmd

def boom(args):
    raise {error}

data_cmd.cmd_data_validate = boom
from vulnsteer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("error", "code", "needle"),
    [
        ("RuntimeError('kaboom')", 3, "internal error: RuntimeError: kaboom (rerun with -v for the traceback)"),
        ("AttributeError('x')", 3, "internal error: AttributeError"),
        ("KeyboardInterrupt()", 130, "interrupted"),
    ],
)
def test_unexpected_exceptions_and_interrupts(error: str, code: int, needle: str, world: World) -> None:
    import subprocess
    import sys

    script = world.root / "boom.py"
    script.write_text(_BOOM.format(error=error), encoding="utf-8")
    for verbose in (False, True):
        argv = [sys.executable, str(script), "data", "validate", str(world.inputs / "paired")]
        proc = subprocess.run(
            [*argv, *(["-v"] if verbose else [])], capture_output=True, text=True, env=cli_env(world.cache)
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == code, proc.stderr
        assert needle in lines[-1]
        assert ("Traceback" in proc.stderr) is verbose
        if not verbose:
            assert len(lines) == 1, proc.stderr


_TERM = """
import os, signal, sys, tempfile, time
from pathlib import Path
import vulnsteer.cli.data as data_cmd

def work(args):
    with tempfile.TemporaryDirectory(prefix="vulnsteer-term-") as tmp:
        Path(sys.argv[1]).write_text(tmp)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a job's timeout would
        time.sleep(30)
    return 0

data_cmd.cmd_data_validate = work
from vulnsteer.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_cleans_up_as_ctrl_c_does_and_exits_143(world: World) -> None:
    """``kill`` (SIGTERM) ends a command as Ctrl-C does: its temporary folder is removed on the way out (the default
    action would leave it), one line says so, exit 143; the handler is only the command's."""
    import signal
    import subprocess
    import sys

    script, marker = world.root / "term.py", world.root / "term-tmp.txt"
    script.write_text(_TERM, encoding="utf-8")
    argv = [sys.executable, str(script), str(marker), "data", "validate", str(world.inputs / "paired")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli_env(world.cache), timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("vulnsteer: terminated; finished work is kept")
    assert marker.read_text() and not Path(marker.read_text()).exists()
    # in-process, main() puts back the handler it found
    from vulnsteer.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "validate", str(world.inputs / "paired")]) in (0, 1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_real_entry_point_fails_fast_without_importing_torch(world: World) -> None:
    """``python -m vulnsteer.cli``: errors in options and files come before torch is even imported."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['vulnsteer', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('vulnsteer.cli', run_name='__main__')\n"
        "finally:\n"
        "    print('torch' in sys.modules, file=sys.stderr)\n"
    )
    script = world.root / "probe.py"
    script.write_text(probe, encoding="utf-8")
    import subprocess
    import sys

    for argv in (
        ["detect", str(world.inputs / "ok.c"), "--strength", "2"],
        ["detect", str(world.inputs / "paired")],
        ["data", "validate", str(world.inputs / "onesided.jsonl")],
        ["vectors", "fit", "--out", str(world.inputs / "ok.c"), "--batch-size", "2"],
    ):
        proc = subprocess.run(
            [sys.executable, str(script), *argv], capture_output=True, text=True, env=cli_env(world.cache)
        )
        lines = proc.stderr.splitlines()
        assert proc.returncode in (1, 2), proc.stderr
        assert lines[-1] == "False", proc.stderr  # torch was never imported


def test_help_lists_exit_codes_and_global_flags(world: World) -> None:
    result = run_cli(["--help"], cwd=world.root, env=cli_env(world.cache))
    assert result.rc == 0
    for text in ("exit codes:", "130", "internal error", "--no-progress", "-v, --verbose"):
        assert text in result.out


def test_validate_refuses_data_with_no_usable_sample_and_counts_dropped_pairs(
    world: World, cli: ForkServer, tmp_path: Path
) -> None:
    """A SVEN row whose two versions are identical is dropped: a file of only such rows has nothing to use."""
    same = tmp_path / "same.jsonl"
    code = "int f() { return 0; }"
    row = {"func_src_before": code, "func_src_after": code, "vul_type": "cwe-089", "file_name": "f.c"}
    same.write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = cli.run(["data", "validate", str(same), "--format", "sven"])
    assert result.rc == 1, result.out + result.err
    assert "no usable samples" in result.out and "1 pair(s) dropped: vulnerable and fixed code identical" in result.err
