"""Preparing data for an experiment: load (no model needed), clean, truncate token-aware, and split by group.

Loading comes first and needs no model, so a data error is reported before a model is loaded; truncation needs
the model's tokenizer; the split keeps the two halves of a pair (and, by default, every copy of the same code)
in one split.

Whole files are split into functions and held-out code over the token budget is read in windows
(:mod:`vulnsteer.data.units`): :meth:`PreparedData.units` gives the pieces of a split that are scored and read,
and the way back to its samples. The training split holds its pieces as samples (a file pair's changed
functions), truncated around the changed lines where a dataset records them; held-out splits are read as unseen
code is.

>>> from vulnsteer.config import DataSection
>>> raw = load_dataset(DataSection(cwes=("CWE-89",)))
>>> data = prepare_data(DataSection(cwes=("CWE-89",)), samples=raw, progress=False)
>>> data.cwes, sum(len(v) for v in data.by_cwe("train").values()) > 0
(['CWE-89'], True)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..config import DataSection
from ..cwe import PRIORITY_CWES, parse_merge_map
from ..data.builtin import BUILTIN_NAME, load_builtin
from ..data.clean import strip_comments
from ..data.functions import FunctionSplitter
from ..data.sample import UPSTREAM_SPLIT_KEY, Sample
from ..data.splits import Splits, dedupe_across_splits, split_samples
from ..data.truncate import Truncation, truncate_sample
from ..data.units import (
    Fitter,
    FunctionCode,
    Units,
    file_functions,
    head_fitter,
    held_out_units,
    training_pieces,
    window_fitter,
)
from ..progress import track

__all__ = ["LoadedData", "PreparedData", "cap_pairs", "cwe_order", "load_dataset", "prepare_data"]


@dataclass(frozen=True)
class LoadedData:
    """Raw samples of a dataset and what loading them found."""

    samples: list[Sample]
    source: str
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedData:
    """Cleaned, truncated and split samples, with what was done to them; :meth:`units` gives the pieces a split is
    scored as (whole files as their functions, long held-out code as windows).

    Attributes:
        functions: the functions of each whole file that was split (by sample id).
        full: the cleaned, untruncated code of each held-out sample that was truncated (by sample id).
        fit: how held-out code is read within the token budget (its head, or windows); None: as it is.
        file_functions: which of a whole file's functions its score reads (``data.file_functions``).
    """

    splits: Splits
    cwes: list[str]
    source: str
    notes: dict[str, Any] = field(default_factory=dict)
    functions: Mapping[str, tuple[FunctionCode, ...]] = field(default_factory=dict)
    full: Mapping[str, str] = field(default_factory=dict)
    fit: Fitter | None = None
    file_functions: str = "all"
    _units: dict[str, Units] = field(default_factory=dict, repr=False)

    def by_cwe(self, split: str) -> dict[str, list[Sample]]:
        """The samples of *split* (``all``: every split) by CWE, in :attr:`cwes` order."""
        names = ("train", "val", "test") if split == "all" else (split,)
        out: dict[str, list[Sample]] = defaultdict(list)
        for name in names:
            for s in self.splits.get(name):
                out[s.cwe].append(s)
        return {cwe: out[cwe] for cwe in self.cwes if out.get(cwe)}

    def samples(self, split: str) -> list[Sample]:
        return [s for group in self.by_cwe(split).values() for s in group]

    def units(self, split: str) -> Units:
        """The pieces *split*'s samples (in :meth:`samples` order) are scored and read as: the training split's
        samples are its pieces already; a held-out split's whole files are their functions and its code over the
        budget is read by :attr:`fit`."""
        if split not in self._units:
            samples = self.samples(split)
            self._units[split] = Units.whole(samples) if split == "train" else self.held_out(samples)
        return self._units[split]

    def held_out(self, samples: Sequence[Sample]) -> Units:
        """The pieces held-out *samples* (of this data) are scored and read as, in order: whole files as their
        functions, code over the budget read by :attr:`fit` (every sample as itself when there is neither)."""
        if not self.functions and (self.fit is None or not self.full):
            return Units.whole(samples)
        return held_out_units(samples, self.functions, self.full, self.fit or _as_is, self.file_functions)

    def pieces(self, split: str) -> list[Sample]:
        """The pieces of *split* (what its activations and records are of), in order."""
        return list(self.units(split).pieces)


def _as_is(code: str) -> list[tuple[str, Truncation]]:
    return [(code, Truncation(False, 0, 0, None))]


def cap_pairs(samples: Sequence[Sample], max_pairs: int | None, seed: int) -> list[Sample]:
    """Keep at most *max_pairs* pair ids per CWE (chosen by a seeded hash, so the choice is stable)."""
    if not max_pairs:
        return list(samples)
    by_cwe: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_cwe[s.cwe][s.pair_id or s.id].append(s)
    kept: list[Sample] = []
    for groups in by_cwe.values():
        ranked = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
        for key in ranked[:max_pairs]:
            kept.extend(groups[key])
    return kept


def load_dataset(config: DataSection) -> LoadedData:
    """Raw samples of the configured dataset (the bundled corpus when no path is given), or of several datasets
    (``paths``): each sample's split group is prefixed with its dataset, so groups never mix across datasets.
    No model needed."""
    if config.paths:
        formats = config.formats or (None,) * len(config.paths)
        parts = [_load_one(config, path, fmt) for path, fmt in zip(config.paths, formats)]
        samples: list[Sample] = []
        for k, part in enumerate(parts):
            for s in part.samples:
                group = f"{k}:{s.group or s.pair_id or s.id}"
                samples.append(
                    dataclasses.replace(
                        s,
                        id=f"{k}:{s.id}",
                        pair_id=None if s.pair_id is None else f"{k}:{s.pair_id}",
                        group=group,
                        meta={**s.meta, "dataset": part.source},
                    )
                )
        loaded = LoadedData(samples, " + ".join(p.source for p in parts), {p.source: p.notes for p in parts})
    else:
        loaded = _load_one(config, config.path, config.format)
    if not loaded.samples:
        raise ValueError(f"no samples loaded from {loaded.source}")
    return loaded


def _load_one(config: DataSection, path: str | None, fmt: str | None) -> LoadedData:
    merge = parse_merge_map(list(config.merge))
    if path in (None, BUILTIN_NAME):
        samples = load_builtin(config.cwes or None)
        if merge:
            samples = [dataclasses.replace(s, cwe=merge.get(s.cwe, s.cwe)) for s in samples]
        return LoadedData(samples, BUILTIN_NAME)
    from ..data.loaders import LoadReport, load_samples

    assert path is not None
    report = LoadReport()
    samples = load_samples(path, fmt, merge=merge, cwes=config.cwes or None, report=report)
    return LoadedData(samples, str(path), dataclasses.asdict(report))


def prepare_data(
    config: DataSection,
    tokenizer: Any | None = None,
    *,
    samples: LoadedData | None = None,
    progress: bool = True,
    require: Sequence[str] = (),
    train: bool = True,
) -> PreparedData:
    """Clean (comments stripped unless ``keep_comments``), truncate to the token budget (with a *tokenizer*), split,
    and find the functions of whole files. *samples* is :func:`load_dataset`'s result (loaded here when absent).

    *require* names splits that must not come out empty (``("train", "val", "test")`` for experiments that fit on
    train, choose on val and report on test): an empty one is a ``ValueError`` that says how the split was made.
    *train*: the training split is fitted on, so its whole files become their pieces (:mod:`vulnsteer.data.units`);
    False where every sample is held out (``evaluate``)."""
    loaded = samples or load_dataset(config)
    raw = loaded.samples
    if config.respect_upstream:  # the dataset's own held-out split is kept whole; the cap thins what train/val use
        held = [s for s in raw if s.meta.get(UPSTREAM_SPLIT_KEY) == "val"]
        rest = [s for s in raw if s.meta.get(UPSTREAM_SPLIT_KEY) != "val"]
        raw = cap_pairs(rest, config.max_pairs_per_cwe, config.seed) + held
    else:
        raw = cap_pairs(raw, config.max_pairs_per_cwe, config.seed)
    notes: dict[str, Any] = {"load": loaded.notes, "comments_stripped": not config.keep_comments}
    cleaned: list[Sample] = []
    failed_clean = changed_clean = 0
    splitter = FunctionSplitter()
    functions: dict[str, tuple[FunctionCode, ...]] = {}
    full: dict[str, str] = {}

    def count(text: str) -> int:
        assert tokenizer is not None
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for s in track(raw, "cleaning", unit="sample", enabled=progress):
        found = file_functions(s, splitter, config.keep_comments)  # (split from the file as written, as scan does)
        if found is not None:
            functions[s.id] = found
        if not config.keep_comments:
            try:
                code = strip_comments(s.code, s.language)
            except ValueError:
                failed_clean += 1
                code = s.code
            if code != s.code:
                changed_clean += 1
                s = dataclasses.replace(s, code=code)
        if tokenizer is not None and found is None:  # (a split file is read as its functions)
            before = s.code
            s = truncate_sample(s, count, config.max_code_tokens)
            if s.code != before:
                full[s.id] = before
        cleaned.append(s)
    notes["comments_removed_from"] = changed_clean
    notes["comment_strip_unsupported_language"] = failed_clean
    notes["truncated"] = sum(1 for s in cleaned if s.meta.get("truncation", {}).get("truncated"))
    notes["max_code_tokens"] = config.max_code_tokens
    notes["files_split"] = len(functions)
    notes["functions_of_files"] = sum(len(f) for f in functions.values())
    notes["long_functions"] = config.long_functions
    notes["file_functions"] = config.file_functions
    try:
        splits = split_samples(
            cleaned,
            config.fractions,
            seed=config.seed,
            respect_upstream=config.respect_upstream,
            merge_duplicates=config.duplicates == "merge",
        )
    except ValueError as exc:  # name the dataset: the splitter only sees samples
        raise ValueError(f"{loaded.source}: {exc}") from None
    if config.duplicates == "drop":
        found_duplicates = splits.duplicates.as_dict()
        splits = dedupe_across_splits(splits)
        before_dedupe = {k: found_duplicates[k] for k in ("exact", "normalised", "affected")}
        splits = dataclasses.replace(splits, notes={**splits.notes, "duplicates_before_dedupe": before_dedupe})
    if train and functions:
        fit_train = partial(truncate_sample, count_tokens=count, budget=config.max_code_tokens)
        pieces = training_pieces(splits.train, functions, fit_train if tokenizer is not None else _same)
        notes["train_pieces"] = {"samples": len(splits.train), "pieces": len(pieces)}
        splits = dataclasses.replace(splits, train=pieces)
    for name in require:
        if not getattr(splits, name):
            how = (
                "the dataset's upstream val split"
                if name == "test" and config.respect_upstream
                else f"fractions {list(config.fractions)}"
            )
            raise ValueError(
                f"{loaded.source}: the {name} split is empty ({len(cleaned)} samples, {how}, "
                f"max_pairs_per_cwe {config.max_pairs_per_cwe}); vectors are fitted on train, "
                "settings chosen on val and reported on test, so each needs samples"
            )
    present = sorted({s.cwe for s in cleaned}, key=cwe_order)
    cwes = [c for c in (config.cwes or present) if c in present]
    fit: Fitter | None = None
    if tokenizer is not None:
        reader = window_fitter if config.long_functions == "windows" else head_fitter
        fit = reader(count, config.max_code_tokens)
    return PreparedData(splits, cwes, loaded.source, notes, functions, full, fit, config.file_functions)


def _same(sample: Sample) -> Sample:
    return sample


def cwe_order(cwe: str) -> tuple[int, int]:
    """Sort key: the priority CWEs first (in their order), then by number."""
    return (PRIORITY_CWES.index(cwe) if cwe in PRIORITY_CWES else len(PRIORITY_CWES), int(cwe.split("-")[1]))
