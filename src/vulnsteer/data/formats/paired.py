"""``paired-dir``: vulnerable and patched files side by side (``<stem>.<ext>`` + ``p_<stem>.<ext>``), case folders
(``vuln.<ext>`` + ``patch.<ext>``) or two mirrored trees (``vulnerable/<path>`` and ``fixed/<path>``); the CWE from
``cwe_map.json`` or the nearest ``CWE``-named folder. Each sample is a whole file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from vulnsteer.cwe import UnknownCWEError, normalize_cwe
from vulnsteer.data.clean import LANGUAGE_ALIASES
from vulnsteer.data.sample import SECURE, VULNERABLE, Sample

from .reader import Reader, json_loads, language_of

__all__ = ["VULN_NAMES", "mirrored_trees", "read_paired_dir"]

VULN_NAMES = ("vuln", "vulnerable")
_PATCH_NAMES = ("patch", "patched")
_IGNORED_NAMES = {"cwe_map.json", "readme", "readme.md", "readme.txt", "license", "license.txt"}
#: The folders of the mirrored paired-dir layout: ``vulnerable/<path>`` and its fix at ``<one of these>/<path>``.
_FIXED_TREES = ("fixed", "patched", "secure")


def mirrored_trees(root: Path) -> tuple[Path, Path] | None:
    """``(root/vulnerable, root/fixed)`` when *root* holds the mirrored layout of ``paired-dir`` (a ``vulnerable``
    folder and a ``fixed``, ``patched`` or ``secure`` one whose files pair by their path inside), else None."""
    vulnerable = root / "vulnerable"
    if not vulnerable.is_dir():
        return None
    return next(((vulnerable, root / name) for name in _FIXED_TREES if (root / name).is_dir()), None)


def read_paired_dir(reader: Reader, root: Path) -> list[Sample]:
    """Every vulnerable/patched file pair under *root* (any of the three layouts) as two whole-file samples."""
    if not root.is_dir():
        reader.problem(f"{root}: paired-dir format needs a directory")
        return []
    cwe_map = _cwe_map(reader, root)
    mirrored = mirrored_trees(root)
    if mirrored is not None:
        return _mirrored(reader, root, *mirrored, cwe_map)
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_code_file(p))
    samples: list[Sample] = []
    by_dir: dict[Path, list[Path]] = {}
    for file in files:
        by_dir.setdefault(file.parent, []).append(file)
    for folder, members in sorted(by_dir.items()):
        stems = {f.stem.lower(): f for f in members}
        vuln = next((stems[n] for n in VULN_NAMES if n in stems), None)
        patch = next((stems[n] for n in _PATCH_NAMES if n in stems), None)
        if vuln is not None or patch is not None:
            # case folder: vuln.<ext> + patch.<ext>
            if vuln is None or patch is None:
                present = vuln or patch
                missing = "patch.<ext>" if vuln is not None else "vuln.<ext>"
                reader.report.unpaired_files += 1
                reader.problem(f"{present}: no partner {missing} in {folder}")
            else:
                cwe = _paired_cwe(reader, root, folder, folder.name, cwe_map, vuln)
                if cwe is not None:
                    rel = folder.relative_to(root).as_posix() or folder.name
                    samples.extend(_pair(reader, root, rel, cwe, vuln, patch))
            continue  # other files in a case folder (headers, notes) are context, not samples
        names = {f.name: f for f in members}
        for file in members:
            if file.name.startswith("p_"):
                if file.name[2:] not in names:
                    reader.report.unpaired_files += 1
                    reader.problem(f"{file}: patched file without its vulnerable partner {file.name[2:]}")
                continue
            partner = names.get("p_" + file.name)
            if partner is None:
                reader.report.unpaired_files += 1
                reader.problem(f"{file}: no patched partner p_{file.name} next to it")
                continue
            cwe = _paired_cwe(reader, root, folder, file.stem, cwe_map, file)
            if cwe is not None:
                rel = (folder.relative_to(root) / file.stem).as_posix()
                samples.extend(_pair(reader, root, rel, cwe, file, partner))
    if not samples and not reader.report.problems:
        reader.problem(f"{root}: no vulnerable/patched file pairs found")
    return samples


def _mirrored(reader: Reader, root: Path, vulnerable: Path, fixed: Path, cwe_map: Mapping[str, str]) -> list[Sample]:
    """``vulnerable/<path>`` paired with ``fixed/<path>`` (see :func:`mirrored_trees`)."""
    samples: list[Sample] = []
    for file in sorted(p for p in vulnerable.rglob("*") if p.is_file() and _is_code_file(p)):
        rel = file.relative_to(vulnerable)
        partner = fixed / rel
        if not partner.is_file():
            reader.report.unpaired_files += 1
            reader.problem(f"{file}: no fixed partner {partner}")
            continue
        cwe = cwe_map.get(rel.as_posix()) or cwe_map.get(rel.with_suffix("").as_posix())
        if cwe is None:  # a CWE-named folder above it, else a problem naming the file
            cwe = _paired_cwe(reader, vulnerable, file.parent, rel.as_posix(), cwe_map, file)
        if cwe is not None:
            samples.extend(_pair(reader, root, rel.as_posix(), cwe, file, partner))
    for file in sorted(p for p in fixed.rglob("*") if p.is_file() and _is_code_file(p)):
        if not (vulnerable / file.relative_to(fixed)).is_file():
            reader.report.unpaired_files += 1
            reader.problem(f"{file}: fixed file without its vulnerable partner in {vulnerable}")
    if not samples and not reader.report.problems:
        reader.problem(f"{vulnerable}: no source files")
    return samples


def _cwe_map(reader: Reader, root: Path) -> dict[str, str]:
    map_file = root / "cwe_map.json"
    if not map_file.is_file():
        return {}
    text = reader.read_text(map_file, source=False)
    if text is None:
        return {}
    try:
        raw = json_loads(text)
    except json.JSONDecodeError as exc:
        reader.problem(f"{map_file}:{exc.lineno}: malformed JSON ({exc.msg})")
        return {}
    if not isinstance(raw, dict):
        reader.problem(f"{map_file}: expected a JSON object {{case folder: CWE}}, got {type(raw).__name__}")
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        cwe = reader.cwe(value, str(map_file), str(key))
        if cwe is not None:
            out[str(key)] = cwe
    return out


def _paired_cwe(
    reader: Reader, root: Path, folder: Path, key: str, cwe_map: Mapping[str, str], file: Path
) -> str | None:
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
    reader.problem(f"{file}: cannot tell the CWE (no CWE-named folder above it and no entry in cwe_map.json)")
    return None


def _pair(reader: Reader, root: Path, rel: str, cwe: str, vuln: Path, patch: Path) -> list[Sample]:
    reader.report.rows_read += 1
    vuln_code, patch_code = reader.read_text(vuln), reader.read_text(patch)
    if vuln_code is None or patch_code is None:
        return []
    if vuln_code == patch_code:
        reader.report.dropped_identical += 1
        return []
    source = root.name or "paired-dir"
    pair_id = f"{source}:{rel}"
    out = []
    for label, file, code in ((VULNERABLE, vuln, vuln_code), (SECURE, patch, patch_code)):
        out.append(
            Sample(
                id=f"{pair_id}:{label}",
                code=code,
                language=language_of(file.name),
                cwe=cwe,
                label=label,
                pair_id=pair_id,
                source=source,
                meta={"file": file.relative_to(root).as_posix()},
                is_file=True,
            )
        )
    return out


def _is_code_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name in _IGNORED_NAMES or path.suffix.lower() in (".md", ".json", ".txt", ""):
        return False
    return path.suffix.lower().lstrip(".") in LANGUAGE_ALIASES
