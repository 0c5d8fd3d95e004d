"""Property-based tests: random bytes, random JSON and truncated files into every loader, random text into the
verdict parser. Whatever comes in, the result is data or a clean ``ValueError`` (``DataError``,
``VectorMismatchError`` ...) that names the file, never another exception."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from conftest import FIXTURES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vulnsteer.cwe import UnknownCWEError, normalize_cwe  # noqa: E402
from vulnsteer.data.clean import strip_comments  # noqa: E402
from vulnsteer.data.loaders import DataError, LoadReport, load_samples, validate  # noqa: E402
from vulnsteer.data.text import BinaryContentError, decode_source  # noqa: E402
from vulnsteer.detection.verdict import parse_verdict  # noqa: E402
from vulnsteer.io import read_jsonl  # noqa: E402
from vulnsteer.steering.vectors import Provenance, SteeringVector, VectorMismatchError  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURE = FIXTURES / "paired_dir"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELD = st.sampled_from(["code", "label", "cwe", "pair_id", "language", "id", "func_src_before", "func_src_after"])
ROW = st.dictionaries(FIELD | st.text(max_size=6), JSON, max_size=6)


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def _load_everything(path: Path, fmt: str | None) -> None:
    """Strict load raises at most a DataError naming the file; validate never raises and names it too."""
    try:
        samples = load_samples(path, fmt, report=LoadReport(), progress=False)
    except DataError as exc:
        assert path.name in str(exc), str(exc)
    else:
        for sample in samples:
            assert isinstance(sample.code, str) and sample.code.strip()
            sample.code.encode("utf-8")  # no lone surrogates get through
    for problem in validate(path, fmt, progress=False):
        assert path.name in problem or str(path) in problem, problem


@FAST
@given(st.binary(max_size=2048))
def test_decode_source_returns_text_or_refuses_binary(raw: bytes) -> None:
    try:
        decoded = decode_source(raw, "f.c")
    except BinaryContentError as exc:
        assert str(exc).startswith("f.c: binary content")
    else:
        assert isinstance(decoded.text, str)


@FAST
@given(raw=st.binary(max_size=1024), fmt=st.sampled_from([None, "jsonl", "sven", "csv", "castle"]))
def test_random_bytes_into_the_file_loaders(raw: bytes, fmt: str | None) -> None:
    suffix = {"csv": ".csv", "castle": ".json"}.get(fmt or "", ".jsonl")
    with _folder() as folder:
        path = folder / f"data{suffix}"
        path.write_bytes(raw)
        _load_everything(path, fmt)


@FAST
@given(rows=st.lists(ROW | JSON, max_size=5), fmt=st.sampled_from([None, "jsonl", "sven"]))
def test_random_json_rows_into_jsonl_loaders(rows: list[object], fmt: str | None) -> None:
    with _folder() as folder:
        path = folder / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        _load_everything(path, fmt)


@FAST
@given(doc=JSON | st.lists(ROW, max_size=4) | st.fixed_dictionaries({"tests": st.lists(ROW, max_size=4)}))
def test_random_json_into_the_castle_loader(doc: object) -> None:
    with _folder() as folder:
        path = folder / "castle.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        _load_everything(path, "castle")


@FAST
@given(
    files=st.dictionaries(
        st.sampled_from(["a.c", "p_a.c", "b.py", "p_b.py", "vuln.go", "patch.go", "cwe_map.json"]),
        st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
        min_size=1,
        max_size=5,
    )
)
def test_random_files_into_a_paired_dir(files: dict[str, bytes]) -> None:
    with _folder() as folder:
        root = folder / "paired"
        (root / "CWE-79").mkdir(parents=True)
        for name, raw in files.items():
            (root / ("cwe_map.json" if name == "cwe_map.json" else f"CWE-79/{name}")).write_bytes(raw)
        _load_everything(root, "paired-dir")


@FAST
@given(raw=st.binary(max_size=600), name=st.sampled_from(["CWE121_Buf__a_01.c", "CWE89_SQL__b_01.java"]))
def test_random_bytes_into_the_juliet_loader(raw: bytes, name: str) -> None:
    with _folder() as folder:
        root = folder / "juliet"
        root.mkdir()
        (root / name).write_bytes(raw)
        _load_everything(root, "juliet")


def _fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURE.rglob("*") if p.is_file())


@FAST
@given(data=st.data())
def test_truncated_files_into_the_loaders(data: st.DataObject) -> None:
    rows = [{"code": "x = 1", "label": "secure", "cwe": "CWE-89"}, {"code": "y()", "label": "bad", "cwe": "89"}]
    texts = {
        "rows.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        "rows.csv": 'code,label,cwe\n"x = 1",secure,CWE-89\n"y(\n)",bad,89\n',
        "castle.json": json.dumps({"tests": [dict(rows[0], name="a.c", vulnerable=False)]}),
    }
    name = data.draw(st.sampled_from(sorted(texts)))
    raw = texts[name].encode("utf-8")
    cut = data.draw(st.integers(0, len(raw)))
    with _folder() as folder:
        path = folder / name
        path.write_bytes(raw[:cut])
        _load_everything(path, {"rows.jsonl": "jsonl", "rows.csv": "csv", "castle.json": "castle"}[name])
        # the paired-dir fixture with one file truncated
        import shutil

        root = folder / "paired"
        shutil.copytree(FIXTURE, root)
        victim = data.draw(st.sampled_from(_fixture_files())).relative_to(FIXTURE)
        content = (root / victim).read_bytes()
        (root / victim).write_bytes(content[: data.draw(st.integers(0, len(content)))])
        _load_everything(root, "paired-dir")


@FAST
@given(raw=st.binary(max_size=512))
def test_random_bytes_as_a_steering_vector(raw: bytes) -> None:
    with _folder() as folder:
        path = folder / "v.safetensors"
        path.write_bytes(raw)
        with pytest.raises(VectorMismatchError) as info:
            SteeringVector.load(path)
        assert str(path) in str(info.value)


@FAST
@given(data=st.data())
def test_truncated_or_edited_steering_vectors(data: st.DataObject) -> None:
    import torch
    from safetensors.torch import save_file

    prov = json.loads(Provenance("m", "f", 8, (0,), "last", "mean_diff", "CWE-89", 1, 1, "h", "t", {0: 2.0}).to_json())
    if data.draw(st.booleans()):  # an edited header: a field dropped or replaced by random JSON
        key = data.draw(st.sampled_from(sorted(prov)))
        if data.draw(st.booleans()):
            del prov[key]
        else:
            prov[key] = data.draw(JSON)
    with _folder() as folder:
        path = folder / "v.safetensors"
        save_file(
            {"layer.0": torch.ones(8)},
            str(path),
            metadata={"format": "vulnsteer.SteeringVector", "provenance": json.dumps(prov)},
        )
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
        try:
            vector = SteeringVector.load(path)
        except VectorMismatchError as exc:
            assert str(exc).startswith(f"{path}: ")
        else:
            assert vector.layers == (0,)


@FAST
@given(st.text(max_size=300))
def test_random_provenance_text(text: str) -> None:
    with suppress(ValueError, TypeError, KeyError):
        Provenance.from_json(text)


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_as_a_records_file(raw: bytes) -> None:
    with _folder() as folder:
        path = folder / "records.jsonl"
        path.write_bytes(raw)
        try:
            records = read_jsonl(path)
        except ValueError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(records, list)


VERDICT_WORDS = st.sampled_from(
    ["Answer:", "vulnerable", "secure", "not", "Weakness:", "CWE-89", "CWE-", "none", "```", "\n", "SQL injection", " "]
)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200) | st.lists(VERDICT_WORDS | st.text(max_size=5), max_size=30).map("".join))
def test_random_text_into_the_verdict_parser(text: str) -> None:
    verdict = parse_verdict(text)
    assert verdict.label in ("vulnerable", "secure", "uncertain")
    assert verdict.cwe is None or normalize_cwe(verdict.cwe) == verdict.cwe


@FAST
@given(value=JSON)
def test_random_values_as_cwe_ids(value: object) -> None:
    try:
        cwe = normalize_cwe(value)
    except UnknownCWEError:
        return
    assert cwe.startswith("CWE-") and cwe[4:].isdigit()


@FAST
@given(text=st.text(max_size=300), language=st.sampled_from(["c", "cpp", "python", "java", "javascript", "go", "nope"]))
def test_random_text_into_comment_stripping(text: str, language: str) -> None:
    try:
        out = strip_comments(text, language)
    except ValueError:
        return
    assert isinstance(out, str)
