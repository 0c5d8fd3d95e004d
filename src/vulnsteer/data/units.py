"""The pieces a sample is scored as, and the way back from their scores to the sample's.

A sample is scored as one piece, exactly as it is, unless

* it is a **whole file** (:attr:`~vulnsteer.data.sample.Sample.is_file`) in which the function splitter
  (:mod:`vulnsteer.data.functions`, the scan splitter) finds at least two functions: then each function is a
  piece, its code cleaned as ``vulnsteer scan`` cleans it (:func:`function_code`: dedented, comments stripped);
* a piece is longer than the token budget on **held-out data** (val, test, another dataset) and
  ``data.long_functions`` is ``windows``: then each of its windows (:func:`~vulnsteer.data.truncate.windows`) is a
  piece; with ``head`` it is cut to the budget from its head.

The pieces' scores add up to the sample's score by an aggregation (:mod:`vulnsteer.stats.aggregate`): the windows
of a function to the function's score, the functions of a file to the file's (:meth:`Units.aggregate`), less the
functions it shares with exactly one other held-out sample where ``data.file_functions`` is ``differing`` (as a
scan reads files: :func:`~vulnsteer.stats.aggregate.read_members`; :attr:`Piece.shared`). Held-out
code is read as unseen code is, without knowing where a fix is: the diff-centred truncation of SVEN-style data
(:func:`~vulnsteer.data.truncate.truncate_sample`) is kept for **training** data only.

Training data is not aggregated: a training piece is a sample of its own (:func:`training_pieces`). A whole file of
a vulnerable/fixed pair trains on the functions that differ between its two versions (changed, added or removed;
an unchanged function is in both files, so it says nothing about the label); a file without a partner trains on
every function, each with the file's label.

>>> from vulnsteer.data.sample import Sample
>>> a, b = Sample("a", "x", "c", "CWE-787", "vulnerable"), Sample("b", "y", "c", "CWE-787", "secure")
>>> units = Units((a, b), (a, b, b), (Piece(0, 0, ""), Piece(1, 0, "f"), Piece(1, 1, "g")))
>>> units.aggregate([0.3, 0.2, 0.6], "max")
[(0.3, 0), (0.6, 2)]
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..stats.aggregate import aggregate, read_members, top_index
from .changes import match_functions
from .clean import strip_comments
from .functions import CodeUnit, FunctionSplitter
from .region import Region
from .sample import Sample
from .truncate import Truncation, truncate_code, windows

__all__ = [
    "FunctionCode",
    "Piece",
    "Units",
    "cleaned_functions",
    "file_functions",
    "function_code",
    "head_fitter",
    "held_out_units",
    "training_pieces",
    "window_fitter",
]

#: Reads code within the token budget: one piece (its head) or several (windows), each with its truncation record.
Fitter = Callable[[str], list[tuple[str, Truncation]]]


def function_code(unit: CodeUnit, language: str, keep_comments: bool) -> tuple[str, bool]:
    """A function's code as the model sees it (dedented, LF line ends, comments stripped unless kept), and whether
    stripping failed (no lexer for the language: the code is kept as it is).

    >>> from vulnsteer.data.region import Region
    >>> function_code(CodeUnit("f", "method", Region(2, 5, 3, 14), "def f():  # hi\\n        return 1", "    "),
    ...               "python", False)
    ('def f():\\n    return 1', False)
    """
    code = textwrap.dedent(unit.indent + unit.text) if unit.indent else unit.text
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    if keep_comments:
        return code, False
    try:
        return strip_comments(code, language), False
    except ValueError:
        return code, True


@dataclass(frozen=True)
class FunctionCode:
    """One function of a whole file: its qualified name, kind, region in the file and cleaned code."""

    name: str
    kind: str
    region: Region
    code: str


def file_functions(sample: Sample, splitter: FunctionSplitter, keep_comments: bool) -> tuple[FunctionCode, ...] | None:
    """The functions of a whole-file sample (:attr:`~vulnsteer.data.sample.Sample.is_file`) when the splitter finds
    at least two with code left once cleaned, else None (the sample is scored as it is)."""
    if not sample.is_file:
        return None
    found = splitter.split(sample.code, sample.language)
    if found.whole_file is not None:
        return None
    out = cleaned_functions(found.units, sample.language, keep_comments)
    return tuple(out) if len(out) >= 2 else None


def cleaned_functions(units: Sequence[CodeUnit], language: str, keep_comments: bool) -> list[FunctionCode]:
    """The split *units* as the model reads them (:func:`function_code`), those with code left once cleaned."""
    out = []
    for unit in units:
        code, _ = function_code(unit, language, keep_comments)
        if code.strip():
            out.append(FunctionCode(unit.name, unit.kind, unit.region, code))
    return out


@dataclass(frozen=True)
class Piece:
    """Where one scored piece comes from: its sample (an index into :attr:`Units.samples`), the function within it
    (0 for a sample scored as a whole), the function's qualified name (empty for a sample scored as a whole) and
    the window within the function (0 when it is read whole or from its head); *shared*: its function is left out
    of its sample's score (exactly one other sample has it: see the module docstring)."""

    sample: int
    function: int
    name: str
    window: int = 0
    shared: bool = False


@dataclass(frozen=True)
class Units:
    """Samples and the pieces they are scored as (see the module docstring).

    Attributes:
        samples: the samples, in order.
        pieces: what is scored and read (each a :class:`~vulnsteer.data.sample.Sample` with its sample's CWE,
            label, pair and group, and the piece's code); a sample scored as one piece keeps its id, other pieces
            get ``<sample id>#<n>``.
        where: for each piece, where it comes from.
    """

    samples: tuple[Sample, ...]
    pieces: tuple[Sample, ...]
    where: tuple[Piece, ...]

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.where):
            raise ValueError(f"{len(self.pieces)} pieces but {len(self.where)} origins")
        owners = {p.sample for p in self.where}
        if owners != set(range(len(self.samples))):
            raise ValueError("every sample needs at least one piece, and every piece a sample")

    @classmethod
    def whole(cls, samples: Sequence[Sample]) -> Units:
        """Every sample as one piece, itself.

        >>> from vulnsteer.data.sample import Sample
        >>> Units.whole([Sample("a", "x", "c", "CWE-787", "vulnerable")]).split
        0
        """
        return cls(tuple(samples), tuple(samples), tuple(Piece(i, 0, "") for i in range(len(samples))))

    @property
    def split(self) -> int:
        """How many samples are scored as several pieces (functions or windows)."""
        counts: dict[int, int] = defaultdict(int)
        for piece in self.where:
            counts[piece.sample] += 1
        return sum(1 for n in counts.values() if n > 1)

    def by_cwe(self) -> dict[str, list[Sample]]:
        """The pieces by CWE, in order."""
        out: dict[str, list[Sample]] = defaultdict(list)
        for piece in self.pieces:
            out[piece.cwe].append(piece)
        return dict(out)

    def aggregate(self, values: Sequence[float], how: str) -> list[tuple[float, int]]:
        """Per sample: the aggregate of its pieces' *values* (one per piece, in order) by *how*, the windows of a
        function first, then the functions it reads (not :attr:`Piece.shared`); and the index of its top piece (the
        top window of its top function)."""
        if len(values) != len(self.pieces):
            raise ValueError(f"{len(values)} values for {len(self.pieces)} pieces")
        functions: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, piece in enumerate(self.where):
            if not piece.shared:
                functions[(piece.sample, piece.function)].append(index)
        by_sample: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for (sample, _), members in functions.items():
            scores = [values[i] for i in members]
            by_sample[sample].append((aggregate(scores, how), members[top_index(scores)]))
        out = []
        for sample in range(len(self.samples)):
            found = by_sample[sample]
            scores = [score for score, _ in found]
            out.append((aggregate(scores, how), found[top_index(scores)][1]))
        return out


#: ``Sample.meta`` keys that locate the changed lines in a sample's own code (wrong in a piece of it).
_LINE_KEYS = ("line_changes", "changed_lines", "focus_lines")


def _piece_meta(sample: Sample, name: str) -> dict[str, Any]:
    meta = {k: v for k, v in sample.meta.items() if k not in _LINE_KEYS}
    return {**meta, "function": name} if name else meta


def _piece(sample: Sample, index: int, code: str, truncation: Truncation, single: bool, name: str) -> Sample:
    meta = {**_piece_meta(sample, name), "truncation": dataclasses.asdict(truncation)}
    piece_id = sample.id if single else f"{sample.id}#{index}"
    return dataclasses.replace(sample, id=piece_id, code=code, meta=meta, is_file=False)


def held_out_units(
    samples: Sequence[Sample],
    functions: Mapping[str, Sequence[FunctionCode]],
    full: Mapping[str, str],
    fit: Fitter,
    file_functions: str = "all",
) -> Units:
    """The pieces of held-out *samples*: each sample's functions (*functions*, by sample id, for the whole files
    that were split) or its own untruncated code (*full*, by sample id; the sample's code when absent), each read
    by *fit* (its head, or its windows); with *file_functions* ``differing``, a function exactly one other sample
    has too is :attr:`Piece.shared` where its sample has others (:func:`~vulnsteer.stats.aggregate.read_members`).

    >>> a = Sample("a", "", "c", "CWE-787", "vulnerable", "p", is_file=True)
    >>> b = dataclasses.replace(a, id="b", label="secure")
    >>> def f(name, code):
    ...     return FunctionCode(name, "function", Region(1, 1, 1, 1), code)
    >>> found = {"a": [f("main", "int main();"), f("copy", "void copy();")],
    ...          "b": [f("main", "int main();"), f("copy", "void copy(int n);")]}
    >>> units = held_out_units([a, b], found, {}, lambda code: [(code, Truncation(False, 0, 0, None))], "differing")
    >>> [(p.sample, p.name, p.shared) for p in units.where]
    [(0, 'main', True), (0, 'copy', False), (1, 'main', True), (1, 'copy', False)]
    >>> units.aggregate([0.1, 0.9, 0.1, 0.3], "mean")
    [(0.9, 1), (0.3, 3)]
    """
    parts_of = [
        [(f.name, f.code) for f in functions.get(sample.id, ())] or [("", full.get(sample.id, sample.code))]
        for sample in samples
    ]
    keys = [[(sample.language, code) for _, code in parts] for sample, parts in zip(samples, parts_of, strict=True)]
    reads = [set(read) for read in read_members(keys, file_functions)]
    pieces: list[Sample] = []
    where: list[Piece] = []
    for index, (sample, parts) in enumerate(zip(samples, parts_of, strict=True)):
        read = [(k, name, fit(code)) for k, (name, code) in enumerate(parts)]
        single = len(read) == 1 and len(read[0][2]) == 1
        n = 0
        for k, name, found in read:
            for w, (code, truncation) in enumerate(found):
                pieces.append(_piece(sample, n, code, truncation, single, name))
                where.append(Piece(index, k, name, w, shared=k not in reads[index]))
                n += 1
    return Units(tuple(samples), tuple(pieces), tuple(where))


def head_fitter(count_tokens: Callable[[str], int], budget: int) -> Fitter:
    """Reads code from its head (:func:`~vulnsteer.data.truncate.truncate_code` without focus lines)."""
    return lambda code: [truncate_code(code, count_tokens, budget)]


def window_fitter(count_tokens: Callable[[str], int], budget: int) -> Fitter:
    """Reads code in windows (:func:`~vulnsteer.data.truncate.windows`)."""
    return lambda code: windows(code, count_tokens, budget)


def training_pieces(
    samples: Sequence[Sample], functions: Mapping[str, Sequence[FunctionCode]], fit: Callable[[Sample], Sample]
) -> list[Sample]:
    """The training split as pieces (see the module docstring): a whole file of a pair becomes the functions that
    differ between its two versions (each read by *fit*, with the file's label), an unpaired file every function;
    any other sample stays as it is (already read by *fit*). A pair whose files differ only outside functions trains
    on its two files."""
    partners: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.pair_id is not None and sample.id in functions:
            partners[sample.pair_id].append(sample)
    kept: dict[str, list[tuple[str, str]]] = {}
    for members in partners.values():
        vulnerable = [s for s in members if s.is_vulnerable]
        secure = [s for s in members if not s.is_vulnerable]
        if len(vulnerable) != 1 or len(secure) != 1:
            continue
        old, new = functions[vulnerable[0].id], functions[secure[0].id]
        changes = [c for c in match_functions(old, new, lambda f: (f.name, f.code)) if c.kind in _DIFFERING]
        if changes:  # (else the pair differs outside its functions: it trains on its two files)
            kept[vulnerable[0].id] = [(c.before.name, c.before.code) for c in changes if c.before is not None]
            kept[secure[0].id] = [(c.after.name, c.after.code) for c in changes if c.after is not None]
        else:
            kept[vulnerable[0].id] = kept[secure[0].id] = []
    out: list[Sample] = []
    for sample in samples:
        parts = kept.get(sample.id, [(f.name, f.code) for f in functions.get(sample.id, ())])
        if not parts:
            out.append(sample)
            continue
        for k, (name, code) in enumerate(parts):
            piece = dataclasses.replace(sample, id=f"{sample.id}#{k}", code=code, is_file=False,
                                        meta=_piece_meta(sample, name))  # fmt: skip
            out.append(fit(piece))
    return out


_DIFFERING = ("changed", "added", "removed")
