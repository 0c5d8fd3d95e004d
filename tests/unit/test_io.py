"""Atomic writes never leave a half-written file; the append-only JSONL log survives a killed writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vulnsteer.io import append_jsonl, atomic_open, read_jsonl, write_json, write_text


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n", encoding="utf-8")
    with atomic_open(path) as handle:
        handle.write("new\n")
        assert path.read_text(encoding="utf-8") == "old\n"  # not visible before the block ends
    assert path.read_text(encoding="utf-8") == "new\n"
    assert _listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_keeps_the_old_file_on_an_exception(tmp_path: Path, error: type[BaseException]) -> None:
    path = tmp_path / "report.md"
    path.write_text("old report\n", encoding="utf-8")
    with pytest.raises(error), atomic_open(path) as handle:
        handle.write("half of the new rep")
        raise error()
    assert path.read_text(encoding="utf-8") == "old report\n"
    assert _listing(tmp_path) == ["report.md"]


def test_atomic_write_of_a_new_file_leaves_nothing_on_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "new.json"
    with pytest.raises(ValueError, match="boom"), atomic_open(path) as handle:
        handle.write("{")
        raise ValueError("boom")
    assert not path.exists()
    assert _listing(path.parent) == []


def test_write_json_failing_mid_serialisation_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(path, {"a": list(range(1000)), "b": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": 1}
    assert _listing(tmp_path) == ["results.json"]


def test_write_json_converts_numpy_sets_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_json(
        path, {"arr": np.arange(3), "x": np.float32(0.5), "n": np.int64(7), "s": {"b", "a"}, "p": Path("runs/x")}
    )
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert json.loads(text) == {"arr": [0, 1, 2], "x": 0.5, "n": 7, "s": ["a", "b"], "p": "runs/x"}


def test_write_text_and_binary_mode(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "caf\u00e9\n")
    assert (tmp_path / "a.txt").read_bytes() == "caf\u00e9\n".encode()
    with atomic_open(tmp_path / "b.bin", "wb") as handle:
        handle.write(b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert _listing(tmp_path) == ["a.txt", "b.bin"]


# ---------------------------------------------------------------- JSONL log


def test_jsonl_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "records.jsonl"
    assert read_jsonl(path) == []
    records = [{"i": i, "v": np.float64(i / 2), "tags": {"x"}} for i in range(3)]
    for rec in records:
        append_jsonl(path, rec)
    assert read_jsonl(path) == [{"i": i, "v": i / 2, "tags": ["x"]} for i in range(3)]
    assert path.read_text(encoding="utf-8").count("\n") == 3


def test_torn_last_line_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"b": 2})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"c": [1, 2, ')  # a writer killed mid-line
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_malformed_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"b": oops}\n{"c": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="malformed JSON line") as info:
        read_jsonl(path)
    assert f"{path}:2:" in str(info.value)


def test_appending_after_a_torn_line_keeps_the_log_readable(tmp_path: Path) -> None:
    """A rerun resumes after a kill: its appends must not glue onto the torn line and corrupt the log."""
    path = tmp_path / "records.jsonl"
    append_jsonl(path, {"a": 1})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"b": "torn')
    assert read_jsonl(path) == [{"a": 1}]
    append_jsonl(path, {"c": 3})
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}]
    append_jsonl(path, {"d": 4})
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}, {"d": 4}]


def test_appending_after_a_torn_first_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"b": "to', encoding="utf-8")
    append_jsonl(path, {"c": 3})
    assert read_jsonl(path) == [{"c": 3}]


def test_appending_after_a_complete_line_without_newline_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}', encoding="utf-8")
    append_jsonl(path, {"c": 3})
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_appending_after_a_long_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_jsonl(path, {"a": 1})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"text": "' + "x" * 200_000)  # longer than one read-back chunk
    append_jsonl(path, {"c": 3})
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}]
    assert path.stat().st_size < 100


def test_a_target_that_is_no_regular_file_is_written_in_place(tmp_path: Path) -> None:
    """``-o /dev/null`` or a named pipe: written directly, never replaced by a renamed file (as root a rename would
    turn /dev/null into a regular file)."""
    import stat
    import threading

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    with atomic_open(pipe) as handle:
        handle.write("findings\n")
    reader.join(timeout=10)
    assert got == ["findings\n"]
    assert stat.S_ISFIFO(pipe.stat().st_mode), "the pipe is still a pipe"
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"], "no temporary file left"
