"""Dataset loaders: SVEN/SafeCoder JSONL, Juliet C/C++/Java, paired directories, CASTLE JSON, generic JSONL/CSV.

Every loader returns a list of :class:`~vulnsteer.data.sample.Sample` with canonical CWE ids, and reports
anything wrong with the data as a :class:`DataError` whose message names the file (and the line and field
where that applies). :func:`validate` runs the same loaders but collects every problem instead of stopping
at the first one.

Formats (``fmt``):

``sven``
    SVEN and SafeCoder JSONL (a file, or a directory searched recursively for ``*.jsonl``): one row = one pair,
    ``func_src_before`` vulnerable, ``func_src_after`` fixed, ``vul_type`` the CWE, ``file_name`` gives the
    language. Rows whose two versions are identical are dropped (``LoadReport.dropped_identical``).
    ``pair_id`` = ``<source>:<split>:<file stem>:<line number>``; ``group`` = ``commit:<commit_link>`` (the
    same commit in SVEN and SafeCoder lands in one group); ``meta`` holds ``file_name``, ``commit_link``,
    ``split`` (train/val from the path), ``func_name``, ``line_changes`` and ``changed_lines`` (the line
    numbers changed in this version: deleted lines for the vulnerable one, added lines for the fixed one).
    Source = ``safecoder`` when the path or the rows say so, else ``sven``.
``juliet``
    Juliet C/C++ and Java test cases, de-labelled; see :mod:`vulnsteer.data.juliet` for pairing, multi-file
    cases and renaming. ``pair_id`` = case, ``group`` = functional variant.
``paired-dir``
    ``<root>/<CWE folder>/<stem>.<ext>`` (vulnerable) + ``p_<stem>.<ext>`` (patched) side by side, and/or case
    folders holding ``vuln.<ext>`` + ``patch.<ext>``, or two mirrored trees: ``<root>/vulnerable/<path>`` and its
    fix at ``<root>/fixed/<path>`` (or ``patched/``, ``secure/``); the CWE comes from ``cwe_map.json`` in the root
    (``{"case-folder-or-stem": "CWE-79"}``; in mirrored trees, keyed by the path inside them, with or without its
    extension) or from the nearest enclosing folder whose name starts with ``CWE``. Each sample is a whole file
    (``Sample.is_file``).
``castle``
    A JSON list ``[{"name", "cwe", "vulnerable", "code"}]`` or ``{"tests": [...]}`` (a file or a directory of
    ``*.json``); unpaired; comments are stripped (CASTLE files carry their label in a header comment). Each sample
    is a whole program (``Sample.is_file``).
``jsonl`` / ``csv``
    Generic rows with ``code``, ``label`` (vulnerable/secure, 1/0, true/false, vuln/safe, bad/good), ``cwe``
    and optional ``pair_id``, ``language``, ``id``, ``group``, ``source``, ``whole_file`` (true/false, 1/0: the
    code is a whole source file, ``Sample.is_file``; default false: one function).

A whole file in which the function splitter finds at least two functions is scored as its functions and their
scores aggregated back to it (:mod:`vulnsteer.data.units`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vulnsteer.config.vocabulary import DATASET_FORMATS
from vulnsteer.cwe import UnknownCWEError, apply_merge, normalize_cwe
from vulnsteer.data.clean import LANGUAGE_ALIASES, canonical_language, strip_comments
from vulnsteer.data.juliet import find_juliet_files, group_cases, parse_case
from vulnsteer.data.sample import LABELS, SECURE, UPSTREAM_SPLIT_KEY, VULNERABLE, Label, Sample, count_by_cwe
from vulnsteer.data.text import BinaryContentError, binary_reason, decode_source, read_source
from vulnsteer.progress import track

__all__ = [
    "DataError",
    "LoadReport",
    "dataset_stats",
    "detect_format",
    "load_samples",
    "parse_label",
    "validate",
]


_SPLITS = ("train", "val", "valid", "validation", "test", "eval")
_SVEN_FIELDS = ("func_src_before", "func_src_after", "vul_type", "file_name")
_GENERIC_FIELDS = ("code", "label", "cwe")
_CASTLE_FIELDS = ("name", "cwe", "vulnerable", "code")
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
#: How ``whole_file`` (jsonl/csv) is spelled (JSON booleans read as ``true``/``false``).
_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_VULN_NAMES = ("vuln", "vulnerable")
_PATCH_NAMES = ("patch", "patched")
_IGNORED_NAMES = {"cwe_map.json", "readme", "readme.md", "readme.txt", "license", "license.txt"}


class DataError(ValueError):
    """Bad input data; the message names the file (and the line and field where that applies)."""


@dataclass
class LoadReport:
    """What a load did, for the CLI's report. :func:`load_samples` fills it when one is passed in.

    Attributes:
        problems: data problems; :func:`validate` collects them here, :func:`load_samples` raises the first.
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


class _Loader:
    """Shared state of one load: strict (raise) or collecting (validate) mode, and the report."""

    def __init__(self, report: LoadReport, strict: bool, progress: bool = True) -> None:
        self.report = report
        self.strict = strict
        self.progress = progress

    def problem(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.report.problems.append(message)

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

    # ---------------------------------------------------------------- sven / safecoder
    def sven(self, path: Path) -> list[Sample]:
        files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
        if not files:
            self.problem(f"{path}: no .jsonl files found")
        samples: list[Sample] = []
        for file in files:
            samples.extend(self._sven_file(file))
        return samples

    def _sven_file(self, file: Path) -> list[Sample]:
        samples: list[Sample] = []
        for lineno, row in self._jsonl_rows(file):
            where = f"{file}:{lineno}"
            before, after, vul_type, file_name = (self.text_field(row, f, where) for f in _SVEN_FIELDS)
            if before is None or after is None or vul_type is None or file_name is None:
                continue
            cwe = self.cwe(row["vul_type"], where, "vul_type")
            if cwe is None:
                continue
            if not before.strip() or not after.strip():
                self.problem(f"{where}: empty field {'func_src_before' if not before.strip() else 'func_src_after'!r}")
                continue
            if before == after:
                self.report.dropped_identical += 1
                continue
            before, after = (
                self.code_text(before, f"{where}: func_src_before"),
                self.code_text(after, f"{where}: func_src_after"),
            )
            if before is None or after is None:
                continue
            source = _sven_source(file, row)
            split = _split_of(file)
            pair_id = ":".join(p for p in (source, split, file.stem, str(lineno)) if p)
            commit = str(row.get("commit_link") or "")
            group = "commit:" + re.sub(r"^https?://", "", commit).rstrip("/") if commit else pair_id
            language = _language_of(file_name)
            base_meta: dict[str, Any] = {
                "file_name": file_name,
                "commit_link": commit,
                UPSTREAM_SPLIT_KEY: split,
                "func_name": row.get("func_name", ""),
                "upstream_file": file.as_posix(),
                "upstream_line": lineno,
            }
            for extra in ("commit_msg", "description", "parent_commit"):
                if extra in row:
                    base_meta[extra] = row[extra]
            changes = row.get("line_changes")
            for label, code, side in ((VULNERABLE, before, "deleted"), (SECURE, after, "added")):
                meta = dict(base_meta)
                if isinstance(changes, Mapping):
                    meta["line_changes"] = changes
                    lines = changes.get(side) or []
                    meta["changed_lines"] = [c["line_no"] for c in lines if isinstance(c, Mapping) and "line_no" in c]
                samples.append(
                    Sample(
                        id=f"{pair_id}:{label}",
                        code=code,
                        language=language,
                        cwe=cwe,
                        label=label,
                        pair_id=pair_id,
                        source=source,
                        group=group,
                        meta=meta,
                    )
                )
        return samples

    def _jsonl_rows(self, file: Path) -> Iterable[tuple[int, dict[str, Any]]]:
        text = self.read_text(file, source=False)
        if text is None:
            return
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            self.report.rows_read += 1
            try:
                row = _json_loads(line)
            except json.JSONDecodeError as exc:
                self.problem(f"{file}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                self.problem(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}")
                continue
            yield lineno, row

    # ---------------------------------------------------------------- juliet
    def juliet(self, path: Path) -> list[Sample]:
        files = find_juliet_files(path)
        if not files:
            self.problem(f"{path}: no Juliet test-case files (CWE<n>_<name>__<variant>_<NN>.c/.cpp/.java) found")
            return []
        root = path if path.is_dir() else path.parent
        cases = group_cases(files)
        samples: list[Sample] = []
        for case in track(cases, f"juliet {path.name}", unit="case", enabled=self.progress):
            self.report.juliet_cases += 1
            self.report.juliet_multi_file_cases += case.multi_file
            found, reason = parse_case(case, lambda p: self.read_text(p) or "", root)
            if reason is not None:
                self.report.skipped_juliet_cases += 1
                self.report.notes.append(f"{case.files[0].parent}: juliet case skipped: {reason}")
            samples.extend(found)
        self.report.rows_read += len(cases)
        return samples

    # ---------------------------------------------------------------- paired directories
    def paired_dir(self, root: Path) -> list[Sample]:
        if not root.is_dir():
            self.problem(f"{root}: paired-dir format needs a directory")
            return []
        cwe_map = self._cwe_map(root)
        mirrored = mirrored_trees(root)
        if mirrored is not None:
            return self._mirrored(root, *mirrored, cwe_map)
        files = sorted(p for p in root.rglob("*") if p.is_file() and _is_code_file(p))
        samples: list[Sample] = []
        by_dir: dict[Path, list[Path]] = {}
        for file in files:
            by_dir.setdefault(file.parent, []).append(file)
        for folder, members in sorted(by_dir.items()):
            stems = {f.stem.lower(): f for f in members}
            vuln = next((stems[n] for n in _VULN_NAMES if n in stems), None)
            patch = next((stems[n] for n in _PATCH_NAMES if n in stems), None)
            if vuln is not None or patch is not None:
                # case folder: vuln.<ext> + patch.<ext>
                if vuln is None or patch is None:
                    present = vuln or patch
                    missing = "patch.<ext>" if vuln is not None else "vuln.<ext>"
                    self.report.unpaired_files += 1
                    self.problem(f"{present}: no partner {missing} in {folder}")
                else:
                    cwe = self._paired_cwe(root, folder, folder.name, cwe_map, vuln)
                    if cwe is not None:
                        rel = folder.relative_to(root).as_posix() or folder.name
                        samples.extend(self._pair(root, rel, cwe, vuln, patch))
                continue  # other files in a case folder (headers, notes) are context, not samples
            names = {f.name: f for f in members}
            for file in members:
                if file.name.startswith("p_"):
                    if file.name[2:] not in names:
                        self.report.unpaired_files += 1
                        self.problem(f"{file}: patched file without its vulnerable partner {file.name[2:]}")
                    continue
                partner = names.get("p_" + file.name)
                if partner is None:
                    self.report.unpaired_files += 1
                    self.problem(f"{file}: no patched partner p_{file.name} next to it")
                    continue
                cwe = self._paired_cwe(root, folder, file.stem, cwe_map, file)
                if cwe is not None:
                    rel = (folder.relative_to(root) / file.stem).as_posix()
                    samples.extend(self._pair(root, rel, cwe, file, partner))
        if not samples and not self.report.problems:
            self.problem(f"{root}: no vulnerable/patched file pairs found")
        return samples

    def _mirrored(self, root: Path, vulnerable: Path, fixed: Path, cwe_map: Mapping[str, str]) -> list[Sample]:
        """``vulnerable/<path>`` paired with ``fixed/<path>`` (see :func:`mirrored_trees`)."""
        samples: list[Sample] = []
        for file in sorted(p for p in vulnerable.rglob("*") if p.is_file() and _is_code_file(p)):
            rel = file.relative_to(vulnerable)
            partner = fixed / rel
            if not partner.is_file():
                self.report.unpaired_files += 1
                self.problem(f"{file}: no fixed partner {partner}")
                continue
            cwe = cwe_map.get(rel.as_posix()) or cwe_map.get(rel.with_suffix("").as_posix())
            if cwe is None:  # a CWE-named folder above it, else a problem naming the file
                cwe = self._paired_cwe(vulnerable, file.parent, rel.as_posix(), cwe_map, file)
            if cwe is not None:
                samples.extend(self._pair(root, rel.as_posix(), cwe, file, partner))
        for file in sorted(p for p in fixed.rglob("*") if p.is_file() and _is_code_file(p)):
            if not (vulnerable / file.relative_to(fixed)).is_file():
                self.report.unpaired_files += 1
                self.problem(f"{file}: fixed file without its vulnerable partner in {vulnerable}")
        if not samples and not self.report.problems:
            self.problem(f"{vulnerable}: no source files")
        return samples

    def _cwe_map(self, root: Path) -> dict[str, str]:
        map_file = root / "cwe_map.json"
        if not map_file.is_file():
            return {}
        text = self.read_text(map_file, source=False)
        if text is None:
            return {}
        try:
            raw = _json_loads(text)
        except json.JSONDecodeError as exc:
            self.problem(f"{map_file}:{exc.lineno}: malformed JSON ({exc.msg})")
            return {}
        if not isinstance(raw, dict):
            self.problem(f"{map_file}: expected a JSON object {{case folder: CWE}}, got {type(raw).__name__}")
            return {}
        out: dict[str, str] = {}
        for key, value in raw.items():
            cwe = self.cwe(value, str(map_file), str(key))
            if cwe is not None:
                out[str(key)] = cwe
        return out

    def _paired_cwe(self, root: Path, folder: Path, key: str, cwe_map: Mapping[str, str], file: Path) -> str | None:
        rel = folder.relative_to(root).as_posix()
        for candidate in (key, rel, f"{rel}/{key}" if rel != "." else key, folder.name):
            if candidate in cwe_map:
                return cwe_map[candidate]
        current = folder
        while True:
            if current.name.lower().startswith("cwe"):
                try:
                    return normalize_cwe(current.name)
                except UnknownCWEError:
                    pass
            if current == root or current.parent == current:
                break
            current = current.parent
        self.problem(f"{file}: cannot tell the CWE (no CWE-named folder above it and no entry in cwe_map.json)")
        return None

    def _pair(self, root: Path, rel: str, cwe: str, vuln: Path, patch: Path) -> list[Sample]:
        self.report.rows_read += 1
        vuln_code, patch_code = self.read_text(vuln), self.read_text(patch)
        if vuln_code is None or patch_code is None:
            return []
        if vuln_code == patch_code:
            self.report.dropped_identical += 1
            return []
        source = root.name or "paired-dir"
        pair_id = f"{source}:{rel}"
        out = []
        for label, file, code in ((VULNERABLE, vuln, vuln_code), (SECURE, patch, patch_code)):
            out.append(
                Sample(
                    id=f"{pair_id}:{label}",
                    code=code,
                    language=_language_of(file.name),
                    cwe=cwe,
                    label=label,
                    pair_id=pair_id,
                    source=source,
                    meta={"file": file.relative_to(root).as_posix()},
                    is_file=True,
                )
            )
        return out

    # ---------------------------------------------------------------- castle
    def castle(self, path: Path) -> list[Sample]:
        files = [path] if path.is_file() else sorted(path.rglob("*.json"))
        if not files:
            self.problem(f"{path}: no .json files found")
        samples: list[Sample] = []
        for file in files:
            text = self.read_text(file, source=False)
            if text is None:
                continue
            try:
                data = _json_loads(text)
            except json.JSONDecodeError as exc:
                self.problem(f"{file}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            items = data.get("tests") if isinstance(data, dict) else data
            if not isinstance(items, list):
                self.problem(f"{file}: expected a JSON list of tests or an object with a 'tests' list")
                continue
            for index, item in enumerate(items):
                self.report.rows_read += 1
                sample = self._castle_item(file, index, item)
                if sample is not None:
                    samples.append(sample)
        return samples

    def _castle_item(self, file: Path, index: int, item: object) -> Sample | None:
        where = f"{file}: test #{index}"
        if not isinstance(item, dict):
            self.problem(f"{where}: expected a JSON object, got {type(item).__name__}")
            return None
        if isinstance(item.get("name"), str):
            where += f" ({item['name']})"
        missing = [f for f in _CASTLE_FIELDS if f not in item]
        if missing:
            self.problem(f"{where}: missing field {missing[0]!r}")
            return None
        code = self.text_field(item, "code", where)
        if code is None:
            return None
        code = self.code_text(code, where)
        if code is None:
            return None
        cwe = self.cwe(item["cwe"], where, "cwe")
        label = self.label(item["vulnerable"], where, "vulnerable")
        if cwe is None or label is None:
            return None
        name = str(item["name"])
        language = canonical_language(str(item.get("language") or Path(name).suffix or "c"))
        if language not in LANGUAGE_ALIASES.values():
            language = "c"
        try:
            cleaned = strip_comments(code, language)
        except ValueError:
            cleaned = code
        return Sample(
            id=f"castle:{name}",
            code=cleaned,
            language=language,
            cwe=cwe,
            label=label,
            pair_id=None,
            source="castle",
            group=f"castle:{name}",
            meta={k: v for k, v in item.items() if k != "code"} | {"file": file.as_posix()},
            is_file=True,
        )

    # ---------------------------------------------------------------- generic jsonl / csv
    def label(self, value: object, where: str, field_name: str) -> Label | None:
        label = parse_label(value)
        if label is None:
            self.problem(
                f"{where}: cannot read field {field_name!r} = {value!r} as a label "
                "(use vulnerable/secure, 1/0, true/false, vuln/safe or bad/good)"
            )
        return label

    def generic(self, row: Mapping[str, Any], where: str, file: Path, default_id: str) -> Sample | None:
        for name in _GENERIC_FIELDS:
            value = row.get(name)
            if value is None or (isinstance(value, str) and not value.strip() and name != "code"):
                self.problem(f"{where}: missing field {name!r}")
                return None
        code = row["code"]
        if not isinstance(code, str):
            self.problem(f"{where}: field 'code' must be a string, got {type(code).__name__}")
            return None
        if not code.strip():
            self.problem(f"{where}: empty field 'code'")
            return None
        code = self.code_text(code, where)
        if code is None:
            return None
        label = self.label(row["label"], where, "label")
        cwe = self.cwe(row["cwe"], where, "cwe")
        if label is None or cwe is None:
            return None
        pair_id = row.get("pair_id")
        pair = str(pair_id) if pair_id not in (None, "") else None
        language = str(row.get("language") or "")
        if not language and isinstance(row.get("file_name"), str):
            language = _language_of(row["file_name"])
        sample_id = str(row.get("id") or "") or default_id
        whole = row.get("whole_file")
        is_file = _FLAGS.get(str(whole).strip().lower()) if whole not in (None, "") else False
        if is_file is None:
            self.problem(f"{where}: cannot read field 'whole_file' = {whole!r} as true or false (or 1/0, yes/no)")
            return None
        meta = {
            k: v for k, v in row.items() if k not in ("code", "label", "cwe", "pair_id", "language", "id", "whole_file")
        }
        meta["upstream_file"] = file.as_posix()
        return Sample(
            id=sample_id,
            code=code,
            language=canonical_language(language) if language else "unknown",
            cwe=cwe,
            label=label,
            pair_id=pair,
            source=str(row.get("source") or file.stem),
            group=str(row.get("group") or ""),
            meta=meta,
            is_file=is_file,
        )

    def jsonl(self, path: Path) -> list[Sample]:
        files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
        if not files:
            self.problem(f"{path}: no .jsonl files found")
        samples: list[Sample] = []
        for file in files:
            for lineno, row in self._jsonl_rows(file):
                sample = self.generic(row, f"{file}:{lineno}", file, f"{file.stem}:{lineno}")
                if sample is not None:
                    samples.append(sample)
        return samples

    def csv(self, path: Path) -> list[Sample]:
        files = [path] if path.is_file() else sorted(path.rglob("*.csv"))
        if not files:
            self.problem(f"{path}: no .csv files found")
        samples: list[Sample] = []
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
        for file in files:
            text = self.read_text(file, source=False)
            if text is None:
                continue
            reader = csv.DictReader(io.StringIO(text, newline=""))
            header = reader.fieldnames or []
            missing = [f for f in _GENERIC_FIELDS if f not in header]
            if missing:
                self.problem(f"{file}:1: missing column {missing[0]!r} in the header (found {', '.join(header)})")
                continue
            start = reader.line_num + 1
            try:
                for row in reader:
                    self.report.rows_read += 1
                    where = f"{file}:{start}"
                    clean = {k: v for k, v in row.items() if k is not None}
                    sample = self.generic(clean, where, file, f"{file.stem}:{start}")
                    if sample is not None:
                        samples.append(sample)
                    start = reader.line_num + 1
            except csv.Error as exc:
                self.problem(f"{file}:{reader.line_num}: malformed CSV ({exc})")
        return samples


def parse_label(value: object) -> Label | None:
    """``"vulnerable"``/``"secure"`` for the usual spellings (vuln/safe, 1/0, true/false, bad/good), else None."""
    if isinstance(value, bool):
        return VULNERABLE if value else SECURE
    if isinstance(value, (int, float)) and value in (0, 1):
        return VULNERABLE if value == 1 else SECURE
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def _json_loads(text: str) -> Any:
    """:func:`json.loads`, with absurdly deep nesting reported as malformed JSON instead of a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nesting too deep", text, 0) from None


def _sven_source(file: Path, row: Mapping[str, Any]) -> str:
    parts = [p.lower() for p in file.resolve().parts]
    if any("safecoder" in p for p in parts) or file.stem == "sec-new-desc":
        return "safecoder"
    if any("sven" in p for p in parts):
        return "sven"
    return "safecoder" if "commit_msg" in row else "sven"


def _split_of(file: Path) -> str:
    for part in reversed(file.parent.parts):
        if part.lower() in _SPLITS:
            return part.lower()
    return ""


def _language_of(file_name: str) -> str:
    suffix = Path(file_name).suffix
    if suffix == ".C":
        return "cpp"
    if not suffix:
        return "unknown"
    return canonical_language(suffix)


def _is_code_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name in _IGNORED_NAMES or path.suffix.lower() in (".md", ".json", ".txt", ""):
        return False
    return path.suffix.lower().lstrip(".") in LANGUAGE_ALIASES


#: Lone UTF-16 surrogates (``"\ud800"`` in JSON): not encodable, replaced by U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Bytes of a JSONL file read to tell its kind.
_PEEK_BYTES = 1 << 20


def _first_jsonl_record(file: Path, max_lines: int = 20) -> Any:
    """The first parseable record among the first *max_lines* non-empty lines (None if there is none); the
    bytes are decoded as source text is (BOMs, UTF-16)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(_PEEK_BYTES)
        text = decode_source(head, str(file)).text
    except BinaryContentError as exc:
        raise DataError(f"{exc}; expected a JSONL text file") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read file: {exc.strerror or exc}") from None
    seen = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            return _json_loads(line)
        except json.JSONDecodeError:
            seen += 1
            if seen >= max_lines:
                break
    return None


def _jsonl_kind(files: Sequence[Path]) -> str | None:
    for file in files[:5]:
        record = _first_jsonl_record(file)
        if isinstance(record, dict):
            if "func_src_before" in record or "func_src_after" in record:
                return "sven"
            if "code" in record:
                return "jsonl"
    return None


#: The folders of the mirrored paired-dir layout: ``vulnerable/<path>`` and its fix at ``<one of these>/<path>``.
_FIXED_TREES = ("fixed", "patched", "secure")


def mirrored_trees(root: Path) -> tuple[Path, Path] | None:
    """``(root/vulnerable, root/fixed)`` when *root* holds the mirrored layout of ``paired-dir`` (a ``vulnerable``
    folder and a ``fixed``, ``patched`` or ``secure`` one whose files pair by their path inside), else None."""
    vulnerable = root / "vulnerable"
    if not vulnerable.is_dir():
        return None
    return next(((vulnerable, root / name) for name in _FIXED_TREES if (root / name).is_dir()), None)


def detect_format(path: Path) -> str:
    """Guess the format of *path* (a file or a directory) from names and a peek at the content.

    Raises:
        DataError: *path* does not exist or its format cannot be told (the message names the path).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            if path.stat().st_size == 0:
                raise DataError(f"{path}: empty file")
            kind = _jsonl_kind([path])
            if kind is None:
                raise DataError(
                    f"{path}: cannot tell the format: the first record has neither 'func_src_before' (sven) "
                    "nor 'code' (jsonl); pass --format to read it anyway"
                )
            return kind
        if suffix == ".json":
            return "castle"
        if suffix == ".csv":
            return "csv"
        if find_juliet_files(path):
            return "juliet"
        raise DataError(
            f"{path}: cannot tell the dataset format from the file name; pass --format (one of "
            f"{', '.join(DATASET_FORMATS)})"
        )
    if (path / "cwe_map.json").is_file() or mirrored_trees(path) is not None:
        return "paired-dir"
    jsonl = sorted(path.rglob("*.jsonl"))
    if jsonl:
        kind = _jsonl_kind(jsonl)
        if kind is not None:
            return kind
    if any(True for _ in _juliet_probe(path)):
        return "juliet"
    files = [p for p in path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    if any(n.startswith("p_") and n[2:] in names for n in names) or any(p.stem.lower() in _VULN_NAMES for p in files):
        return "paired-dir"
    if any(p.suffix.lower() == ".json" for p in files):
        return "castle"
    if any(p.suffix.lower() == ".csv" for p in files):
        return "csv"
    raise DataError(f"{path}: cannot tell the dataset format; pass --format (one of {', '.join(DATASET_FORMATS)})")


def _juliet_probe(path: Path) -> Iterable[Path]:
    from vulnsteer.data.juliet import parse_juliet_name

    for candidate in path.rglob("CWE*"):
        if candidate.is_file() and parse_juliet_name(candidate) is not None:
            yield candidate
            return


def _run(
    path: str | Path,
    fmt: str | None,
    merge: Mapping[str, str] | None,
    cwes: Collection[str] | None,
    report: LoadReport,
    strict: bool,
    progress: bool = True,
) -> list[Sample]:
    root = Path(path)
    loader = _Loader(report, strict, progress)
    if fmt is None:
        fmt = detect_format(root)
    elif fmt not in DATASET_FORMATS:
        raise DataError(f"{root}: unknown format {fmt!r} (--format); expected one of {', '.join(DATASET_FORMATS)}")
    elif not root.exists():
        raise DataError(f"{root}: no such file or directory")
    report.formats.append(fmt)
    read: dict[str, Callable[[Path], list[Sample]]] = {
        "sven": loader.sven,
        "juliet": loader.juliet,
        "paired-dir": loader.paired_dir,
        "castle": loader.castle,
        "jsonl": loader.jsonl,
        "csv": loader.csv,
    }
    samples = read[fmt](root)

    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            loader.problem(f"{root}: duplicate sample id {sample.id!r}")
        seen.add(sample.id)

    if merge:
        try:
            merge_map = {normalize_cwe(k): normalize_cwe(v) for k, v in merge.items()}
        except UnknownCWEError as exc:
            raise DataError(f"merge map: {exc}") from None
        merged: list[Sample] = []
        for sample in samples:
            target = apply_merge(sample.cwe, merge_map)
            if target != sample.cwe:
                report.merged += 1
                sample = replace(sample, cwe=target, meta={**sample.meta, "original_cwe": sample.cwe})
            merged.append(sample)
        samples = merged

    if cwes:
        wanted: list[str] = []
        for value in cwes:
            try:
                wanted.append(normalize_cwe(value))
            except UnknownCWEError:
                raise DataError(f"unknown CWE {value!r} in the requested CWE list") from None
        kept = [s for s in samples if s.cwe in set(wanted)]
        report.filtered_out += len(samples) - len(kept)
        samples = kept
        counts = count_by_cwe(samples)
        for cwe in dict.fromkeys(wanted):
            row = counts.get(cwe, {})
            empty = [label for label in LABELS if not row.get(label)]
            if len(empty) == 2:
                loader.problem(f"{root}: requested {cwe} has no samples at all (neither vulnerable nor secure)")
            elif empty:
                missing = empty[0]
                present = SECURE if missing == VULNERABLE else VULNERABLE
                loader.problem(f"{root}: requested {cwe} has no {missing} samples (only {row[present]} {present})")
    else:
        _one_sided(samples, root, loader)
    report.samples = len(samples)
    return samples


def _one_sided(samples: Sequence[Sample], root: Path, loader: _Loader) -> None:
    """CWEs with only vulnerable or only secure samples: recorded in the report; :func:`validate` lists them as
    problems (no vector can be fitted for them), :func:`load_samples` notes them."""
    for cwe, row in sorted(count_by_cwe(samples).items(), key=lambda item: _cwe_sort_key(item[0])):
        empty = [label for label in LABELS if not row.get(label)]
        if len(empty) != 1:
            continue
        missing = empty[0]
        present = SECURE if missing == VULNERABLE else VULNERABLE
        loader.report.one_sided_cwes[cwe] = missing
        message = (
            f"{root}: {cwe} has no {missing} samples (only {row[present]} {present}): it cannot be used for "
            f"steering vectors or evaluation; leave it out (--cwe) or add {missing} samples"
        )
        (loader.report.notes if loader.strict else loader.report.problems).append(message)


def load_samples(
    path: str | Path,
    fmt: str | None = None,
    *,
    merge: Mapping[str, str] | None = None,
    cwes: Collection[str] | None = None,
    report: LoadReport | None = None,
    progress: bool = True,
) -> list[Sample]:
    """Load a dataset as samples.

    Args:
        path: a file or a directory (directories are searched recursively).
        fmt: one of :data:`~vulnsteer.config.vocabulary.DATASET_FORMATS`; detected with :func:`detect_format` when None.
        merge: CWE merge map (``{"CWE-77": "CWE-78"}``), applied before the ``cwes`` filter.
        cwes: keep only these CWEs (after the merge); each must end up with vulnerable and secure samples.
            None or empty: keep every CWE.
        report: filled with counters (dropped identical pairs, files with replaced bytes, binary files skipped,
            skipped cases, CWEs with one label only ...).
        progress: progress over Juliet cases (:mod:`vulnsteer.progress`).

    Raises:
        DataError: the first data problem (the message names the file, and line/field where applicable).

    >>> samples = load_samples("../shared/data/sven", "sven", cwes=["CWE-89"])  # doctest: +SKIP
    >>> samples[0].label, samples[0].pair_id is not None  # doctest: +SKIP
    ('vulnerable', True)
    """
    return _run(path, fmt, merge, cwes, report if report is not None else LoadReport(), True, progress)


def validate(
    path: str | Path,
    fmt: str | None = None,
    *,
    merge: Mapping[str, str] | None = None,
    cwes: Collection[str] | None = None,
    report: LoadReport | None = None,
    progress: bool = True,
) -> list[str]:
    """Every problem found in the dataset at *path* (an empty list means it loads cleanly): malformed rows,
    missing fields, binary files, CWEs with only vulnerable or only secure samples ... Never raises for data
    problems; *report* (if given) is filled as :func:`load_samples` fills it."""
    report = report if report is not None else LoadReport()
    try:
        _run(path, fmt, merge, cwes, report, False, progress)
    except DataError as exc:
        report.problems.append(str(exc))
    return report.problems


def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def pct(q: float) -> float:
        pos = (len(ordered) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))

    return {"p50": pct(0.5), "p90": pct(0.9), "max": float(ordered[-1]), "mean": sum(ordered) / len(ordered)}


def dataset_stats(samples: Sequence[Sample], tokenizer: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Counts and lengths: per-CWE vulnerable/secure/pairs, languages, sources, and length percentiles.

    Args:
        samples: the samples.
        tokenizer: optional callable returning the token count of a code string; adds ``"tokens"`` entries.

    Returns:
        ``{"samples", "vulnerable", "secure", "pairs", "by_cwe": {cwe: {"vulnerable", "secure", "pairs",
        "languages"}}, "languages", "sources", "chars": {"p50", "p90", "max", "mean"}, "tokens": {...}}``.
    """
    by_cwe = count_by_cwe(samples)
    languages_by_cwe: dict[str, Counter[str]] = {}
    for sample in samples:
        languages_by_cwe.setdefault(sample.cwe, Counter())[sample.language] += 1
    stats: dict[str, Any] = {
        "samples": len(samples),
        "vulnerable": sum(1 for s in samples if s.label == VULNERABLE),
        "secure": sum(1 for s in samples if s.label == SECURE),
        "pairs": sum(row["pairs"] for row in by_cwe.values()),
        "by_cwe": {
            cwe: {**by_cwe[cwe], "languages": dict(languages_by_cwe[cwe].most_common())}
            for cwe in sorted(by_cwe, key=_cwe_sort_key)
        },
        "languages": dict(Counter(s.language for s in samples).most_common()),
        "sources": dict(Counter(s.source for s in samples).most_common()),
        "chars": _percentiles([len(s.code) for s in samples]),
    }
    if tokenizer is not None:
        stats["tokens"] = _percentiles([int(tokenizer(s.code)) for s in samples])
    return stats


def _cwe_sort_key(cwe: str) -> tuple[int, str]:
    match = re.match(r"CWE-(\d+)$", cwe)
    return (int(match.group(1)), cwe) if match else (1 << 30, cwe)
