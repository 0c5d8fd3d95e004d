"""``itc``: the Toyota ITC static-analysis benchmarks (``github.com/regehr/itc-benchmarks``, BSD licence): single C
and C++ programs, one file per defect type, each in a version with defects (``01.w_Defects``, ``03.w_Defects_Cpp``)
and a look-alike without them (``02.wo_Defects``, ``04.wo_Defects_Cpp``) whose functions carry the same names.

Each file pair is split into functions (the scan splitter: tree-sitter), and every function whose code differs
between the two versions, comments stripped, is a pair of function-level samples: the defect version vulnerable,
the other fixed. Comments are stripped because the benchmark labels its defect lines in them (``/*Tool should
detect this line as error*/``). A function the two versions share unchanged (a file's ``*_main`` driver) is
dropped. The CWE comes from the defect type, the file's stem, through :data:`ITC_CWES`; defect types that are code
quality rather than security (dead code, unused variables, redundant conditions, ...) have no entry and are
skipped, counted in the load's notes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from vulnsteer.data.changes import match_functions
from vulnsteer.data.functions import FunctionSplitter, tree_sitter_available
from vulnsteer.data.sample import SECURE, VULNERABLE, Sample
from vulnsteer.data.units import FunctionCode, cleaned_functions
from vulnsteer.progress import track

from .reader import Reader, language_of

__all__ = ["ITC_CWES", "ITC_TREES", "itc_trees", "read_itc"]

#: The benchmark's folders: (with defects, without defects), for C and for C++.
ITC_TREES: tuple[tuple[str, str], ...] = (("01.w_Defects", "02.wo_Defects"), ("03.w_Defects_Cpp", "04.wo_Defects_Cpp"))

#: The CWE of each security-relevant defect type (the file's stem; its ``Defect Sub-type`` header in brackets).
ITC_CWES: Mapping[str, str] = MappingProxyType(
    {
        "bit_shift": "CWE-1335",  # bit shift bigger than integral type or negative
        "buffer_overrun_dynamic": "CWE-122",  # dynamic buffer overrun
        "buffer_underrun_dynamic": "CWE-124",  # dynamic buffer underrun
        "data_lost": "CWE-197",  # integer conversion that loses data
        "data_overflow": "CWE-190",  # integer overflow
        "data_underflow": "CWE-191",  # integer underflow
        "double_free": "CWE-415",
        "free_nondynamic_allocated_memory": "CWE-590",
        "free_null_pointer": "CWE-476",  # free NULL pointer (a pointer that may be NULL is used)
        "function_return_value_unchecked": "CWE-252",
        "invalid_memory_access": "CWE-416",  # invalid memory access to already freed area
        "littlemem_st": "CWE-131",  # assign small buffer for structure
        "memory_allocation_failure": "CWE-690",  # unchecked allocation result dereferenced
        "memory_leak": "CWE-401",
        "null_pointer": "CWE-476",
        "overrun_st": "CWE-121",  # static (stack) buffer overrun
        "ow_memcpy": "CWE-475",  # memory copy at overlapping areas
        "ptr_subtraction": "CWE-469",
        "race_condition": "CWE-362",
        "return_local": "CWE-562",  # return of a local variable's address
        "sign_conv": "CWE-195",  # integer sign lost in conversion
        "st_overflow": "CWE-674",  # stack overflow (recursion, large frames)
        "st_underrun": "CWE-124",  # stack underrun
        "underrun_st": "CWE-124",  # static buffer underrun
        "uninit_memory_access": "CWE-908",
        "uninit_pointer": "CWE-824",
        "uninit_var": "CWE-457",
        "zero_division": "CWE-369",
    }
)


#: The benchmark's source files (its folders also hold ``Makefile.am``).
_SOURCE_SUFFIXES = (".c", ".cpp")
#: Files whose look-alike has another name in the benchmark.
_RENAMED = MappingProxyType({"free_nondynamic_allocated_memory.c": "free_nondynamically_allocated_memory.c"})


def itc_trees(root: Path) -> list[tuple[Path, Path]]:
    """The benchmark's (with defects, without defects) folder pairs present under *root*."""
    return [(root / w, root / wo) for w, wo in ITC_TREES if (root / w).is_dir() and (root / wo).is_dir()]


def read_itc(reader: Reader, root: Path) -> list[Sample]:
    """Every function that differs between a defect file and its look-alike, as a vulnerable/fixed pair."""
    trees = itc_trees(root) if root.is_dir() else []
    if not trees:
        reader.problem(f"{root}: itc format needs a folder holding {ITC_TREES[0][0]}/ and {ITC_TREES[0][1]}/")
        return []
    if not tree_sitter_available():
        reader.problem(
            f"{root}: the itc format splits files into functions with tree-sitter; pip install 'vulnsteer[scan]'"
        )
        return []
    splitter = FunctionSplitter()
    files = [
        (file, without / _RENAMED.get(file.name, file.name))
        for with_, without in trees
        for file in sorted(with_.iterdir())
        if file.suffix in _SOURCE_SUFFIXES and file.is_file()
    ]
    samples: list[Sample] = []
    skipped = 0
    for defect_file, clean_file in track(files, f"itc {root.name}", unit="file", enabled=reader.progress):
        cwe = ITC_CWES.get(defect_file.stem)
        if cwe is None:
            skipped += 1
            continue
        if not clean_file.is_file():
            reader.report.unpaired_files += 1
            reader.problem(f"{defect_file}: no look-alike without defects at {clean_file}")
            continue
        samples.extend(_file_pair(reader, splitter, defect_file, clean_file, cwe))
    if skipped:
        what = "without a security CWE (code-quality defect types, drivers)"
        reader.report.notes.append(f"{root}: {skipped} files {what} skipped")
    return samples


def _functions(reader: Reader, splitter: FunctionSplitter, file: Path) -> list[FunctionCode] | None:
    """A file's functions as the model reads them (:func:`~vulnsteer.data.units.cleaned_functions`: comments
    stripped); None when the file cannot be read."""
    text = reader.read_text(file)
    if text is None:
        return None
    language = language_of(file.name)
    units = splitter.split(text, language, file.suffix).units
    return [f for f in cleaned_functions(units, language, keep_comments=False) if f.kind != "file"]


def _file_pair(reader: Reader, splitter: FunctionSplitter, defect: Path, clean: Path, cwe: str) -> list[Sample]:
    before, after = _functions(reader, splitter, defect), _functions(reader, splitter, clean)
    if before is None or after is None:
        return []
    language = language_of(defect.name)
    changes = match_functions(before, after, lambda f: (f.name, f.code))
    reader.report.dropped_identical += sum(c.kind == "unchanged" for c in changes)
    position = {id(f): k for k, f in enumerate(before)}
    changed = [(c.before, c.after) for c in changes if c.kind == "changed" and c.before and c.after]
    samples: list[Sample] = []
    for old, new in sorted(changed, key=lambda versions: position[id(versions[0])]):  # in the defect file's order
        name = old.name
        pair = f"itc:{defect.stem}:{name}"
        for label, text, path in ((VULNERABLE, old.code, defect), (SECURE, new.code, clean)):
            samples.append(
                Sample(
                    id=f"{pair}:{label}",
                    code=text,
                    language=language,
                    cwe=cwe,
                    label=label,
                    pair_id=pair,
                    source="itc",
                    group=pair,
                    meta={"file": path.as_posix(), "func_name": name, "defect_type": defect.stem},
                )
            )
    return samples
