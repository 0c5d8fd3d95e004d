"""Measuring a detector on labelled code exactly as ``scan`` scores it (``vulnsteer detector evaluate``).

Each sample of a labelled dataset (any format :func:`~vulnsteer.data.loaders.load_dataset` reads: whole files of
``paired-dir``, functions of JSON lines, ...) is written to a file of its own, with its language's name as the
extension, and the folder is scanned (:func:`~vulnsteer.scan.engine.scan`): decoded, split into functions, comments
stripped, read within the token budget, scored, and each file called by its functions' aggregate score
(:class:`~vulnsteer.scan.sources.FileScore`; by default less the functions it shares with exactly one other sample,
as two versions of one file do: ``--file-functions``). So a number measured here is the number a user's ``scan`` or
``detect`` gives the same code. A probe detector is measured twice from one scoring pass (the scan cache keeps the
unadapted scores): as fitted, and adapted to the functions scored when there are at least its minimum (the centre
from their unlabelled scores; no label is read). Where samples come in pairs (a vulnerable version and its fix), a
third row reads each sample by only its functions that the pair's other half does not have (:func:`changed_scores`:
what ``vulnsteer diff`` reports), so the functions a fix left alone, the same in both halves, do not shift a file's
score (with ``--file-functions differing``, the default, the rows differ only where a pair's halves also share
functions with other samples, or a function is in exactly two samples of different pairs). Beside them, the
length-only control: a sample's lines of code (longer = riskier; flagged above the median), since fixed code is usually
longer.

Every row has AUROC and balanced accuracy with pair-bootstrap 95% intervals, pair-rank accuracy (the vulnerable
version scored above its fix), TPR at 5% FPR and the share flagged beside the share vulnerable. The peer analysers
(:mod:`vulnsteer.detection.peers`) run on the same samples of their languages where installed
(:func:`measure_peers`), each beside the detector on exactly those samples.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cwe import cwe_sort_key
from ..data.sample import Sample
from ..detection.peers import run_peer
from ..stats.metrics import Metrics, Prediction, bootstrap_ci, compute_metrics
from .engine import scan
from .options import ScanOptions
from .results import FunctionResult
from .scorer import Scorer
from .sources import FileScore, file_score, file_scores

__all__ = [
    "LabelledScores",
    "Measured",
    "PeerMeasured",
    "changed_scores",
    "measure",
    "measure_by",
    "measure_peers",
    "score_labelled",
]


@dataclass(frozen=True)
class LabelledScores:
    """Every sample's file score as fitted (*plain*) and adapted (*adapted*: None where the scorer cannot adapt
    or there were too few functions, *why* says which); None for a sample of which no function was scored
    (nothing left once comments are stripped, or too large to read). *functions*: the distinct functions scored."""

    samples: tuple[Sample, ...]
    plain: tuple[FileScore | None, ...]
    adapted: tuple[FileScore | None, ...] | None
    functions: int
    why: str = ""
    #: each sample's score from only the functions that differ from its pair's other half (what ``vulnsteer diff``
    #: reads), adapted where *adapted* is; None where the sample has no such function or no one other half
    changed: tuple[FileScore | None, ...] = ()

    def where(self, keep_sample: Callable[[Sample], bool]) -> LabelledScores:
        """These scores restricted to the samples *keep_sample* keeps (the adaptation stays the one over all)."""
        keep = [k for k, s in enumerate(self.samples) if keep_sample(s)]
        adapted = None if self.adapted is None else tuple(self.adapted[k] for k in keep)
        return dataclasses.replace(
            self,
            samples=tuple(self.samples[k] for k in keep),
            plain=tuple(self.plain[k] for k in keep),
            adapted=adapted,
            changed=tuple(self.changed[k] for k in keep) if self.changed else (),
        )


@dataclass(frozen=True)
class Measured:
    """One detector's metrics on the samples it scored, with pair-bootstrap 95% intervals."""

    name: str
    label: str
    metrics: Metrics
    auroc_ci: tuple[float, float] | None
    balanced_accuracy_ci: tuple[float, float]
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        """Its name, label, skipped count, intervals and every metric, flat (``detector evaluate --json``)."""
        return {"name": self.name, "label": self.label, "skipped": self.skipped, "auroc_ci": self.auroc_ci,
                "balanced_accuracy_ci": self.balanced_accuracy_ci, **dataclasses.asdict(self.metrics)}  # fmt: skip


def _stem(k: int) -> str:
    """The name (less its suffix) of sample *k*'s file: ``sNNNNNN``, which :func:`_sample_index` reads back."""
    return f"s{k:06d}"


def _sample_index(path: str) -> int:
    """The sample whose file *path* is (``sNNNNNN.<language>`` is sample NNNNNN)."""
    return int(Path(path).stem[1:])


def _write(samples: Sequence[Sample], folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, sample in enumerate(samples):
        (folder / f"{_stem(k)}.{sample.language or 'txt'}").write_text(sample.code, encoding="utf-8")


def score_labelled(
    samples: Sequence[Sample], scorer: Scorer, options: ScanOptions, *, progress: bool = True
) -> LabelledScores:
    """*samples* scored as ``scan`` scores files (see the module docstring); *options*' ``adapt`` decides the
    adapted pass (``off``: none; ``auto``: from its ``adapt_from`` functions; ``on``: always, or an error)."""
    if not samples:
        raise ValueError("no samples to measure")
    with tempfile.TemporaryDirectory(prefix="vulnsteer-labelled-") as tmp:
        folder, cache = Path(tmp) / "code", Path(tmp) / "cache"
        _write(samples, folder)
        as_fitted = scan([folder], scorer, dataclasses.replace(options.unadapted(), score_unknown=True),
                         cache_dir=cache, progress=progress)  # fmt: skip
        plain = _by_sample(file_scores(as_fitted), len(samples))
        functions = len({r.code_hash for r in as_fitted.results})
        adapted: tuple[FileScore | None, ...] | None = None
        last = as_fitted  # the changed row reads the adapted pass when there is one, as the file rows do
        why = "adaptation is off" if options.adapt == "off" else ""
        if options.adapt != "off":
            settled = options.settled(functions)
            if settled.adapt == "on":
                last = scan([folder], scorer, dataclasses.replace(settled, score_unknown=True), cache_dir=cache,
                            progress=False)  # fmt: skip
                adapted = _by_sample(file_scores(last), len(samples))
            else:
                why = f"{functions} distinct functions, fewer than the {options.adapt_from} it adapts from"
    changed = changed_scores(samples, last.results, last.options.aggregation)
    return LabelledScores(tuple(samples), plain, adapted, functions, why, changed)


def changed_scores(
    samples: Sequence[Sample], results: Sequence[FunctionResult], aggregation: str
) -> tuple[FileScore | None, ...]:
    """Each sample's score from only its functions that its pair's other half does not have (by their code, once
    comments are stripped): the functions a fix changed, as ``vulnsteer diff`` reads them. None for a sample with
    no such function, or whose pair has not exactly one other half of the other label. *results* are a scan of
    the samples' files ``sNNNNNN.<language>`` (:func:`score_labelled`).

    >>> from vulnsteer.scan.results import FunctionResult
    >>> from vulnsteer.scan.scorer import FunctionScore
    >>> from vulnsteer.data.region import Region
    >>> def r(k, name, p):
    ...     return FunctionResult(f"s{k:06d}.c", "c", name, "function", Region(1, 1, 2, 1), f"{name}-{p}", name,
    ...                           FunctionScore(p, "secure", threshold=0.5), cached=False, finding=False)
    >>> pair = [Sample("v", "", "c", "CWE-787", "vulnerable", "p"), Sample("f", "", "c", "CWE-787", "secure", "p")]
    >>> found = changed_scores(pair, [r(0, "g", 0.2), r(0, "h", 0.7), r(1, "g", 0.2), r(1, "h", 0.4)], "max")
    >>> [(f.score, f.top.name, f.functions) for f in found]
    [(0.7, 'h', 1), (0.4, 'h', 1)]
    """
    by_sample: dict[int, list[FunctionResult]] = {}
    for result in results:
        by_sample.setdefault(_sample_index(result.path), []).append(result)
    halves: dict[tuple[str, str], list[int]] = {}  # a pair is its id within its CWE, as the datasets say
    for k, sample in enumerate(samples):
        if sample.pair_id is not None:
            halves.setdefault((sample.cwe, sample.pair_id), []).append(k)
    out: list[FileScore | None] = [None] * len(samples)
    for members in halves.values():
        if len(members) != 2 or samples[members[0]].y == samples[members[1]].y:
            continue
        for k, other in (members, members[::-1]):
            theirs = {r.code_hash for r in by_sample.get(other, ())}
            own = [r for r in by_sample.get(k, ()) if r.code_hash not in theirs]
            if own:
                out[k] = file_score(_stem(k), own, aggregation)
    return tuple(out)


def _by_sample(found: Sequence[FileScore], n: int) -> tuple[FileScore | None, ...]:
    """The file scores by sample index (:func:`_sample_index`)."""
    out: list[FileScore | None] = [None] * n
    for f in found:
        out[_sample_index(f.path)] = f
    return tuple(out)


def _measured(name: str, label: str, preds: Sequence[Prediction], skipped: int, seed: int, n_boot: int) -> Measured:
    metrics = compute_metrics(preds)
    auroc_ci = None if metrics.auroc is None else bootstrap_ci(preds, "auroc", n_boot=n_boot, seed=seed)
    return Measured(name, label, metrics, auroc_ci, bootstrap_ci(preds, "balanced_accuracy", n_boot, seed), skipped)


def _file_predictions(samples: Sequence[Sample], scores: Sequence[FileScore | None]) -> list[Prediction]:
    return [
        Prediction(s.id, s.cwe, s.pair_id, s.y, int(f.verdict == "vulnerable"), f.score)
        for s, f in zip(samples, scores, strict=True)
        if f is not None
    ]


def _lines(code: str) -> int:
    return sum(1 for line in code.splitlines() if line.strip())


def measure(scored: LabelledScores, *, seed: int = 0, n_boot: int = 1000) -> list[Measured]:
    """The rows: the detector as fitted, adapted (where it adapted), by the changed functions only (where samples
    come in pairs: :func:`changed_scores`), and the length-only control, each on the samples the detector scored (a
    sample with nothing left to score is counted as skipped).

    >>> from vulnsteer.scan.sources import file_score
    >>> from vulnsteer.scan.results import FunctionResult
    >>> from vulnsteer.scan.scorer import FunctionScore
    >>> from vulnsteer.data.region import Region
    >>> def fs(p):
    ...     r = FunctionResult("a.c", "c", "f", "function", Region(1, 1, 2, 1), "h", "f",
    ...                        FunctionScore(p, "vulnerable" if p >= 0.5 else "secure", threshold=0.5), cached=False,
    ...                        finding=True)
    ...     return file_score("a.c", [r], "max")
    >>> samples = tuple(Sample(f"s{k}", "x\\n" * (k + 1), "c", "CWE-787", label, f"p{k // 2}")
    ...                 for k, label in enumerate(["vulnerable", "secure"] * 2))
    >>> rows = measure(LabelledScores(samples, (fs(0.9), fs(0.2), fs(0.6), fs(0.7)), None, 4), n_boot=10)
    >>> [(r.name, r.metrics.auroc, r.metrics.balanced_accuracy, r.metrics.pair_rank_accuracy) for r in rows]
    [('detector', 0.75, 0.75, 0.5), ('length', 0.25, 0.5, 0.0)]
    """
    samples, rows = scored.samples, []
    kept = [k for k, f in enumerate(scored.plain) if f is not None]
    skipped = len(samples) - len(kept)
    mine = [samples[k] for k in kept]
    rows.append(
        _measured(
            "detector", "as fitted", _file_predictions(mine, [scored.plain[k] for k in kept]), skipped, seed, n_boot
        )
    )
    if scored.adapted is not None:
        adapted = [scored.adapted[k] for k in kept]
        rows.append(
            _measured(
                "adapted",
                "adapted to the functions scored (no label read)",
                _file_predictions(mine, adapted),
                skipped,
                seed,
                n_boot,
            )
        )
    changed = [k for k in kept if scored.changed and scored.changed[k] is not None]
    if changed and len({samples[k].y for k in changed}) == 2:
        rows.append(
            _measured(
                "changed",
                "only the functions that differ from the pair's other half (what `vulnsteer diff` reads)"
                + (", adapted" if scored.adapted is not None else ""),
                _file_predictions([samples[k] for k in changed], [scored.changed[k] for k in changed]),
                len(samples) - len(changed),
                seed,
                n_boot,
            )
        )
    lengths = [_lines(s.code) for s in mine]
    median = statistics.median(lengths)
    length = [Prediction(s.id, s.cwe, s.pair_id, s.y, int(n > median), float(n)) for s, n in zip(mine, lengths)]
    rows.append(_measured("length", "lines of code (longer = riskier; flagged above the median)", length, skipped,
                          seed, n_boot))  # fmt: skip
    return rows


def measure_by(
    scored: LabelledScores, group: Callable[[Sample], str], *, seed: int = 0, n_boot: int = 1000
) -> dict[str, list[Measured]]:
    """:func:`measure` on each group of the samples (*group* names a sample's: its language, its CWE) that holds
    both labels, in the groups' order (CWEs by number); the adaptation stays the one over all the samples, so a
    group's flagged share is the share of it that the whole scan flags."""
    found: dict[str, list[Measured]] = {}
    for name in sorted({group(s) for s in scored.samples}, key=cwe_sort_key):
        subset = scored.where(lambda s: group(s) == name)  # noqa: B023 (called here, in this iteration)
        if len({s.y for s in subset.samples}) == 2:
            found[name] = measure(subset, seed=seed, n_boot=n_boot)
    return found


@dataclass(frozen=True)
class PeerMeasured:
    """A peer analyser on the samples of its languages (*measured*: None where it did not run, *note* says why)
    and the detector on exactly those samples (adapted where it adapted)."""

    tool: str
    measured: Measured | None
    detector: Measured | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "note": self.note or None,
            "metrics": None if self.measured is None else dataclasses.asdict(self.measured.metrics),
            "detector_on_same_samples": None if self.detector is None else dataclasses.asdict(self.detector.metrics),
        }


def measure_peers(
    scored: LabelledScores, tools: Sequence[str], *, seed: int = 0, n_boot: int = 1000
) -> list[PeerMeasured]:
    """Each of *tools* on the samples it reads (flagged: any finding; score: its findings' severities), beside the
    detector's file scores on the same samples."""
    best = scored.adapted if scored.adapted is not None else scored.plain
    out = []
    for tool in tools:
        found = run_peer(tool, scored.samples)
        keep = [k for k, s in enumerate(scored.samples) if s.id in found.scores and best[k] is not None]
        mine = [scored.samples[k] for k in keep]
        if len({s.y for s in mine}) < 2:
            out.append(PeerMeasured(tool, None, None, found.note or "too few samples of its languages"))
            continue
        preds = [Prediction(s.id, s.cwe, s.pair_id, s.y, int(found.scores[s.id] > 0), found.scores[s.id]) for s in mine]
        languages = ", ".join(sorted({s.language for s in mine}))
        out.append(
            PeerMeasured(
                tool,
                _measured(tool, f"{tool} ({languages}; flagged = any finding)", preds, 0, seed, n_boot),
                _measured(
                    "detector",
                    "the detector on the same samples",
                    _file_predictions(mine, [best[k] for k in keep]),
                    0,
                    seed,
                    n_boot,
                ),
            )
        )
    return out
