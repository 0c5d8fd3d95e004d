"""What every dataset format reads through: a :class:`Reader` (one load's mode and report: strict, raising the
first problem as a :class:`DataError` naming the file, line and field, or collecting every problem for
:func:`~vulnsteer.data.loaders.validate`), and the :class:`LoadReport` it fills."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vulnsteer.cwe import UnknownCWEError, normalize_cwe
from vulnsteer.data.clean import canonical_language
from vulnsteer.data.sample import SECURE, VULNERABLE, Label
from vulnsteer.data.text import BinaryContentError, binary_reason, read_source

__all__ = ["DataError", "LoadReport", "Reader", "json_loads", "language_of", "parse_label"]

_LABEL_WORDS: dict[str, Label] = {
    "vulnerable": VULNERABLE,
    "vuln": VULNERABLE,
    "bad": VULNERABLE,
    "1": VULNERABLE,
    "true": VULNERABLE,
    "yes": VULNERABLE,
    "secure": SECURE,
    "safe": SECURE,
    "good": SECURE,
    "0": SECURE,
    "false": SECURE,
    "no": SECURE,
    "fixed": SECURE,
    "patched": SECURE,
    "benign": SECURE,
    "non-vulnerable": SECURE,
}
#: Lone UTF-16 surrogates (``"\ud800"`` in JSON): not encodable, replaced by U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")


class DataError(ValueError):
    """Bad input data; the message names the file (and the line and field where that applies)."""


@dataclass
class LoadReport:
    """What a load did, for the CLI's report. :func:`~vulnsteer.data.loaders.load_samples` fills it when one is
    passed in.

    Attributes:
        problems: data problems; ``validate`` collects them here, ``load_samples`` raises the first.
        notes: informational messages (skipped Juliet cases, files with replaced bytes, ...).
        dropped_identical: SVEN/SafeCoder rows whose vulnerable and fixed versions are identical.
        replaced_bytes_files: files (or code fields) that were not valid text in their encoding (undecodable
            bytes replaced by U+FFFD).
        reencoded_files: files read as UTF-16/UTF-32 (with a BOM, or NUL-interleaved text without one).
        binary_files: files or code fields with binary content (NUL bytes, mostly control bytes): skipped.
        files_read: files opened.
        rows_read: JSONL/CSV rows, JSON items or file pairs seen.
        juliet_cases / juliet_multi_file_cases / skipped_juliet_cases: Juliet test cases seen / bundled from
            several files / skipped (no bad or no good function).
        unpaired_files: paired-dir files without their partner.
        merged: samples whose CWE the merge map changed.
        filtered_out: samples dropped by the ``cwes`` filter.
        samples: samples returned.
        one_sided_cwes: CWEs whose samples are all vulnerable or all secure, with the missing label: no vector
            can be fitted and no paired evaluation made for them.
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_identical: int = 0
    replaced_bytes_files: int = 0
    reencoded_files: int = 0
    binary_files: int = 0
    files_read: int = 0
    rows_read: int = 0
    juliet_cases: int = 0
    juliet_multi_file_cases: int = 0
    skipped_juliet_cases: int = 0
    unpaired_files: int = 0
    merged: int = 0
    filtered_out: int = 0
    samples: int = 0
    formats: list[str] = field(default_factory=list)
    one_sided_cwes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        counters = {
            "formats": ",".join(self.formats) or "-",
            "files read": self.files_read,
            "rows": self.rows_read,
            "samples": self.samples,
            "dropped identical pairs": self.dropped_identical,
            "files with replaced bytes": self.replaced_bytes_files,
            "files read as UTF-16/32": self.reencoded_files,
            "binary files skipped": self.binary_files,
            "juliet cases": self.juliet_cases,
            "juliet multi-file cases (bundled)": self.juliet_multi_file_cases,
            "juliet cases skipped": self.skipped_juliet_cases,
            "unpaired files": self.unpaired_files,
            "merged CWE": self.merged,
            "filtered out by CWE": self.filtered_out,
            "CWEs with one label only": ",".join(self.one_sided_cwes) or "-",
            "problems": len(self.problems),
        }
        return "\n".join(f"{k}: {v}" for k, v in counters.items())


class Reader:
    """One load's mode and report: strict (the first problem raises) or collecting (:func:`validate`), and the
    shared readers of files, code fields, CWEs and labels that report what is wrong by file, line and field."""

    def __init__(self, report: LoadReport, strict: bool, progress: bool = True) -> None:
        self.report = report
        self.strict = strict
        self.progress = progress

    def problem(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.report.problems.append(message)

    def data_files(self, path: Path, suffix: str) -> list[Path]:
        """*path* itself if it is a file, else every file under it ending in *suffix* (``.jsonl``), in order; none
        is a problem."""
        files = [path] if path.is_file() else sorted(path.rglob(f"*{suffix}"))
        if not files:
            self.problem(f"{path}: no {suffix} files found")
        return files

    def skip_binary(self, message: str) -> None:
        """Binary content where source text belongs: skipped and counted; :func:`validate` lists it as a problem,
        :func:`load_samples` goes on without it (the count is in the report)."""
        self.report.binary_files += 1
        (self.report.notes if self.strict else self.report.problems).append(message)

    def read_text(self, path: Path, *, source: bool = True) -> str | None:
        """A file's text (:func:`~vulnsteer.data.text.read_source`: BOMs, UTF-16 without a BOM, bad bytes
        replaced); None (after reporting) for an unreadable, empty or binary file. Binary *source* files are
        skipped and counted (:meth:`skip_binary`); a binary data file (*source* False) is a problem."""
        try:
            decoded = read_source(path)
        except BinaryContentError as exc:
            self.report.files_read += 1
            if source:
                self.skip_binary(f"{exc}; skipped")
            else:
                self.problem(f"{exc}; expected a text data file")
            return None
        except OSError as exc:
            self.problem(str(exc) if str(path) in str(exc) else f"{path}: cannot read file: {exc.strerror or exc}")
            return None
        self.report.files_read += 1
        if decoded.replaced:
            self.report.replaced_bytes_files += 1
            self.report.notes.append(f"{path}: not valid {decoded.encoding}; undecodable bytes replaced")
        if decoded.encoding not in ("utf-8", "utf-8-sig"):
            self.report.reencoded_files += 1
            self.report.notes.append(f"{path}: read as {decoded.encoding}")
        if not decoded.text.strip():
            self.problem(f"{path}: empty file")
            return None
        return decoded.text

    def code_text(self, code: str, where: str) -> str | None:
        """A code string from a data row: None (skipped and counted) if it holds binary content; lone
        surrogates (from JSON escapes) replaced by U+FFFD."""
        reason = binary_reason(code.encode("utf-8", "replace"))
        if reason is not None:
            self.skip_binary(f"{where}: binary content ({reason}) in the code field, not source text; skipped")
            return None
        try:
            code.encode("utf-8")
        except UnicodeEncodeError:
            self.report.replaced_bytes_files += 1
            self.report.notes.append(f"{where}: lone surrogates in the code replaced")
            code = _SURROGATE.sub("\ufffd", code)
        return code

    def cwe(self, value: object, where: str, field_name: str) -> str | None:
        try:
            return normalize_cwe(value)
        except UnknownCWEError:
            self.problem(f"{where}: unknown CWE {value!r} in field {field_name!r}")
            return None

    def text_field(self, row: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
        value = row.get(name)
        if value is None:
            if required:
                self.problem(f"{where}: missing field {name!r}")
            return None
        if not isinstance(value, str):
            self.problem(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            return None
        return value

    def label(self, value: object, where: str, field_name: str) -> Label | None:
        label = parse_label(value)
        if label is None:
            self.problem(
                f"{where}: cannot read field {field_name!r} = {value!r} as a label "
                "(use vulnerable/secure, 1/0, true/false, vuln/safe or bad/good)"
            )
        return label

    def jsonl_rows(self, file: Path) -> Iterable[tuple[int, dict[str, Any]]]:
        """Each JSON object of a JSONL file with its line number; a malformed line or a non-object is a problem."""
        text = self.read_text(file, source=False)
        if text is None:
            return
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            self.report.rows_read += 1
            try:
                row = json_loads(line)
            except json.JSONDecodeError as exc:
                self.problem(f"{file}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                self.problem(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}")
                continue
            yield lineno, row


def parse_label(value: object) -> Label | None:
    """``"vulnerable"``/``"secure"`` for the usual spellings (vuln/safe, 1/0, true/false, bad/good), else None."""
    if isinstance(value, bool):
        return VULNERABLE if value else SECURE
    if isinstance(value, (int, float)) and value in (0, 1):
        return VULNERABLE if value == 1 else SECURE
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def json_loads(text: str) -> Any:
    """:func:`json.loads`, with absurdly deep nesting reported as malformed JSON instead of a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nesting too deep", text, 0) from None


def language_of(file_name: str) -> str:
    suffix = Path(file_name).suffix
    if suffix == ".C":
        return "cpp"
    if not suffix:
        return "unknown"
    return canonical_language(suffix)
