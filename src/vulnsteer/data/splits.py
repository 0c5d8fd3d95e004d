"""Leak-free train/val/test splits and cross-split duplicate checks.

Splitting is done **by group**, never by sample: every sample of a :attr:`Sample.group` (a commit, a Juliet
functional variant, ...) lands in the same split, and the two halves of a pair always stay together (a pair id
that spans two groups merges them). Groups are assigned per CWE (stratified) with a seeded shuffle whose result
does not depend on the order of the input.

Splitting by group is not enough on its own: the same function can appear in two commits (cherry-picks,
vendored copies, Juliet helper functions). :func:`find_cross_split_duplicates` reports code that occurs in two
splits, exactly or after stripping comments and collapsing whitespace, and :func:`dedupe_across_splits` can drop
such samples from the evaluation splits.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from vulnsteer.data.sample import UPSTREAM_SPLIT_KEY, Sample, count_by_cwe

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
UPSTREAM_KEY = UPSTREAM_SPLIT_KEY
"""``Sample.meta`` key holding the split a dataset ships a sample in (``"train"``/``"val"``; SVEN, SafeCoder)."""

DuplicateKind = Literal["exact", "normalised"]
DedupePolicy = Literal["drop-from-eval"]

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class DuplicateReport:
    """Code occurring in two different splits.

    Counts are over unordered pairs of samples in different splits (two halves of one pair are never counted).

    Attributes:
        exact: pairs with byte-identical code.
        normalised: pairs whose code differs but is identical after stripping comments and collapsing whitespace
            (not included in ``exact``).
        by_split_pair: ``{"train/test": {"exact": n, "normalised": n}, ...}`` for every pair of splits.
        affected: ``{split: n}``: samples of that split that have an (exact or normalised) duplicate in another
            split.
        examples: up to ``max_examples`` ``(kind, split_a, id_a, split_b, id_b)`` tuples, in a stable order.
        truncated_examples: True if more duplicate pairs exist than ``examples`` lists.
    """

    exact: int = 0
    normalised: int = 0
    by_split_pair: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    affected: Mapping[str, int] = field(default_factory=dict)
    examples: tuple[tuple[str, str, str, str, str], ...] = ()
    truncated_examples: bool = False

    @property
    def total(self) -> int:
        return self.exact + self.normalised

    def as_dict(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "normalised": self.normalised,
            "total": self.total,
            "by_split_pair": {k: dict(v) for k, v in self.by_split_pair.items()},
            "affected": dict(self.affected),
            "examples": [list(e) for e in self.examples],
            "truncated_examples": self.truncated_examples,
        }


@dataclass(frozen=True)
class Splits:
    """A train/val/test split plus its cross-split duplicate report.

    ``notes`` records how the split was made (seed, fractions, group counts, and, in upstream-respecting mode,
    the groups that straddled the upstream train/val boundary and were moved to ``test``).
    """

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    duplicates: DuplicateReport = field(default_factory=DuplicateReport)
    notes: Mapping[str, Any] = field(default_factory=dict)

    def items(self) -> list[tuple[str, list[Sample]]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]

    def get(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        out: list[Sample] = getattr(self, name)
        return out

    def summary(self) -> dict[str, Any]:
        """Per-split sizes and per-CWE counts (see :func:`count_by_cwe`), the duplicate report and the notes."""
        out: dict[str, Any] = {}
        for name, samples in self.items():
            out[name] = {
                "n": len(samples),
                "groups": len({s.group for s in samples}),
                "by_cwe": dict(sorted(count_by_cwe(samples).items())),
            }
        out["duplicates"] = self.duplicates.as_dict()
        out["notes"] = dict(self.notes)
        return out


# --------------------------------------------------------------------------------------------------- grouping


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller key becomes the root, so roots do not depend on the order of unions.
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def _components(samples: Sequence[Sample], merge_duplicates: bool = False) -> dict[str, list[int]]:
    """Merge groups that share a pair id (and, with *merge_duplicates*, groups holding the same normalised code);
    returns ``{component key: [sample indices]}``.

    The component key is the smallest group name in it, so it does not depend on the input order.
    """
    uf = _UnionFind()
    by_pair: dict[str, str] = {}
    by_code: dict[str, str] = {}
    for s in samples:
        uf.add(s.group)
        if s.pair_id is not None:
            first = by_pair.setdefault(s.pair_id, s.group)
            uf.union(first, s.group)
        if merge_duplicates:
            uf.union(by_code.setdefault(normalise_code(s.code, s.language), s.group), s.group)
    comps: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        comps[uf.find(s.group)].append(i)
    return dict(comps)


def _majority(values: Iterable[str]) -> str:
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


def _rng(seed: int, stratum: str) -> np.random.Generator:
    # One generator per stratum, so adding or removing a CWE does not reshuffle the others.
    return np.random.default_rng([seed, zlib.crc32(stratum.encode("utf-8"))])


def _cuts(sizes: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """Cut points ``0 = c_0 <= c_1 <= ... <= c_k = n`` so block ``i`` = ``sizes[c_i:c_{i+1}]``.

    Each cut is placed where the cumulative size is closest to the cumulative fraction. Then every split with
    a positive fraction gets at least one group when there are enough groups for all of them; with fewer
    groups, splits are served in the order first, last, then the middle ones (train, test, val).
    """
    n, k = len(sizes), len(fractions)
    total = float(sum(sizes))
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(sizes, dtype=float))])
    frac_total = float(sum(fractions))
    cuts = [0]
    acc = 0.0
    for f in fractions[:-1]:
        acc += f / frac_total
        target = acc * total
        j = int(np.argmin(np.abs(cum - target)))  # first minimum: ties go to the earlier cut
        cuts.append(max(j, cuts[-1]))
    cuts.append(n)

    positive = [f > 0 for f in fractions]
    n_pos = sum(positive)
    if n_pos == 0 or n == 0:
        return cuts
    if n < n_pos:
        # Too few groups for every split: one group each, in the order first, last, middle ones.
        order = [i for i in [0, k - 1, *range(1, k - 1)] if positive[i]]
        served = set(order[:n])
        cuts = [0]
        for i in range(k):
            cuts.append(cuts[-1] + (1 if i in served else 0))
        return cuts
    need = [1 if p else 0 for p in positive]
    for i in range(1, k):
        lo = cuts[i - 1] + need[i - 1]
        hi = n - sum(need[i:])
        cuts[i] = min(max(cuts[i], lo), hi)
    return cuts


def _assign(
    comps: Mapping[str, Sequence[int]],
    samples: Sequence[Sample],
    fractions: Sequence[float],
    seed: int,
    stratify_by_cwe: bool,
) -> dict[str, int]:
    """``{component key: split index}`` for the given components."""
    strata: dict[str, list[str]] = defaultdict(list)
    for key, idx in comps.items():
        stratum = _majority(samples[i].cwe for i in idx) if stratify_by_cwe else ""
        strata[stratum].append(key)
    out: dict[str, int] = {}
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        perm = _rng(seed, stratum).permutation(len(keys))
        ordered = [keys[int(p)] for p in perm]
        cuts = _cuts([len(comps[k]) for k in ordered], fractions)
        for split_idx in range(len(fractions)):
            for key in ordered[cuts[split_idx] : cuts[split_idx + 1]]:
                out[key] = split_idx
    return out


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}")
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be non-negative and not all zero, got {fractions!r}")
    s = float(sum(fractions))
    return (fractions[0] / s, fractions[1] / s, fractions[2] / s)


def split_samples(
    samples: Iterable[Sample],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify_by_cwe: bool = True,
    respect_upstream: bool = False,
    check_duplicates: bool = True,
    merge_duplicates: bool = False,
) -> Splits:
    """Deterministic, seeded, group-wise split into train/val/test.

    * All samples of a group go to one split; groups that share a pair id are merged first, so a pair never
      straddles splits. With ``merge_duplicates`` groups that hold the same normalised code (comments stripped,
      whitespace collapsed) are merged too, so a duplicate can never sit on both sides of a split.
    * With ``stratify_by_cwe`` the merged groups are split per CWE (a group with several CWEs counts under its
      majority CWE, ties to the smallest id): within each CWE the group keys are sorted, shuffled with a
      generator seeded by ``(seed, CWE)``, and cut so that each split gets about its fraction of the *samples*.
      When a CWE has at least as many groups as there are non-empty fractions, each such split gets at least one
      group (so tiny CWEs still show up in val and test; for them the fractions are only rough).
    * With ``respect_upstream`` the split a dataset ships (``meta["upstream_split"]``: ``"train"``/``"val"``)
      is kept as the held-out boundary: upstream ``val`` goes to ``test``, upstream ``train`` is split into
      train/val by group with the train/val fractions renormalised (the test fraction is then ignored). Merged
      groups that hold both upstream train and val samples (SVEN has 25 such commits) go wholly to ``test`` and
      are listed in ``notes["upstream_straddling_groups"]``. Samples without the key are split normally with all
      three fractions.

    The assignment does not depend on the input order; within each split samples keep their input order.
    The returned :class:`Splits` carries a :class:`DuplicateReport` (see :func:`find_cross_split_duplicates`;
    ``check_duplicates=False`` skips that check, which lexes every sample, and leaves the report empty).

    >>> from vulnsteer.data.builtin import load_builtin
    >>> splits = split_samples(load_builtin(["CWE-89"]))
    >>> len(splits.train), len(splits.val), len(splits.test)
    (16, 6, 6)
    >>> {s.pair_id for s in splits.train} & {s.pair_id for s in splits.test}
    set()
    """
    samples = list(samples)
    fr = _check_fractions(fractions)
    ids = Counter(s.id for s in samples)
    dup_ids = sorted(i for i, c in ids.items() if c > 1)
    if dup_ids:
        raise ValueError(f"sample ids must be unique; repeated: {dup_ids[:5]}{' ...' if len(dup_ids) > 5 else ''}")

    comps = _components(samples, merge_duplicates)
    split_of: dict[str, int] = {}
    notes: dict[str, Any] = {
        "seed": seed,
        "fractions": list(fr),
        "stratify_by_cwe": stratify_by_cwe,
        "respect_upstream": respect_upstream,
        "groups": len({s.group for s in samples}),
        "merged_groups": len(comps),
        "duplicates_checked": check_duplicates,
        "merge_duplicates": merge_duplicates,
    }
    if respect_upstream:
        upstream_train: dict[str, list[int]] = {}
        unknown: dict[str, list[int]] = {}
        straddling: list[str] = []
        straddling_samples = 0
        for key, idx in comps.items():
            ups = {samples[i].meta.get(UPSTREAM_KEY) for i in idx} & {"train", "val"}
            if ups == {"train", "val"}:
                straddling.append(key)
                straddling_samples += len(idx)
                split_of[key] = 2
            elif ups == {"val"}:
                split_of[key] = 2
            elif ups == {"train"}:
                upstream_train[key] = idx
            else:
                unknown[key] = idx
        if fr[0] + fr[1] <= 0:
            raise ValueError("respect_upstream needs a positive train or val fraction")
        if not upstream_train and not straddling and len(unknown) == len(comps):
            raise ValueError(
                f"respect_upstream: none of the {len(samples)} samples carries an upstream split "
                f"(meta[{UPSTREAM_KEY!r}] = 'train'/'val'; the SVEN/SafeCoder loaders set it from "
                "the train/ and val/ folders)"
            )
        split_of.update(_assign(upstream_train, samples, (fr[0], fr[1], 0.0), seed, stratify_by_cwe))
        split_of.update(_assign(unknown, samples, fr, seed, stratify_by_cwe))
        notes["upstream_straddling_groups"] = sorted(straddling)
        notes["upstream_straddling_samples"] = straddling_samples
        notes["without_upstream_split"] = sum(len(v) for v in unknown.values())
    else:
        split_of = _assign(comps, samples, fr, seed, stratify_by_cwe)

    parts: list[list[Sample]] = [[], [], []]
    comp_of_sample: dict[int, str] = {i: key for key, idx in comps.items() for i in idx}
    for i, s in enumerate(samples):
        parts[split_of[comp_of_sample[i]]].append(s)
    partial = Splits(train=parts[0], val=parts[1], test=parts[2], notes=notes)
    if not check_duplicates:
        return partial
    return dataclasses.replace(partial, duplicates=find_cross_split_duplicates(partial))


# ------------------------------------------------------------------------------------------------- duplicates


@lru_cache(maxsize=65536)
def normalise_code(code: str, language: str) -> str:
    """Code with comments stripped (:func:`vulnsteer.data.clean.strip_comments`) and whitespace collapsed.

    Languages without a known lexer keep their comments (only whitespace is collapsed). Results are cached:
    lexing is the slow part of a duplicate check (≈ 20 ms per SVEN function).
    """
    from vulnsteer.data.clean import strip_comments  # lazy: keeps this module importable on its own

    try:
        # The trailing newline lets lexers that need one see a ``//`` comment on the last line.
        text = strip_comments(code + "\n", language)
    except ValueError:
        text = code
    return _WS.sub(" ", text).strip()


def find_cross_split_duplicates(splits: Splits, max_examples: int = 50) -> DuplicateReport:
    """Exact and normalised duplicates (see :func:`normalise_code`) that occur in two different splits.

    Two samples with the same pair id are never counted (the vulnerable and fixed halves of a pair may well be
    identical after normalisation; that is a labelling problem, not a leak).
    """
    # bucket: normalised code -> list of (split index, sample)
    buckets: dict[str, list[tuple[int, Sample]]] = defaultdict(list)
    for si, (_, samples) in enumerate(splits.items()):
        for s in samples:
            buckets[normalise_code(s.code, s.language)].append((si, s))

    n_splits = len(SPLIT_NAMES)
    pair_keys = [f"{SPLIT_NAMES[a]}/{SPLIT_NAMES[b]}" for a in range(n_splits) for b in range(a + 1, n_splits)]
    by_pair: dict[str, dict[str, int]] = {k: {"exact": 0, "normalised": 0} for k in pair_keys}
    affected = dict.fromkeys(SPLIT_NAMES, 0)
    examples: list[tuple[str, str, str, str, str]] = []
    n_example_pairs = 0

    for norm in sorted(buckets):
        members = buckets[norm]
        if len({si for si, _ in members}) < 2:
            continue
        n = [0] * n_splits
        by_code: list[Counter[str]] = [Counter() for _ in range(n_splits)]
        by_pid: list[Counter[str]] = [Counter() for _ in range(n_splits)]
        by_code_pid: list[Counter[tuple[str, str]]] = [Counter() for _ in range(n_splits)]
        for si, s in members:
            n[si] += 1
            by_code[si][s.code] += 1
            if s.pair_id is not None:
                by_pid[si][s.pair_id] += 1
                by_code_pid[si][(s.code, s.pair_id)] += 1
        for a in range(n_splits):
            for b in range(a + 1, n_splits):
                if not n[a] or not n[b]:
                    continue
                same_pair = sum(c * by_pid[b][p] for p, c in by_pid[a].items())
                total = n[a] * n[b] - same_pair
                exact = sum(c * by_code[b][code] for code, c in by_code[a].items())
                exact -= sum(c * by_code_pid[b][cp] for cp, c in by_code_pid[a].items())
                key = f"{SPLIT_NAMES[a]}/{SPLIT_NAMES[b]}"
                by_pair[key]["exact"] += exact
                by_pair[key]["normalised"] += total - exact
                n_example_pairs += total
        for si, s in members:
            others = sum(n) - n[si]
            if s.pair_id is not None:
                others -= sum(by_pid[t][s.pair_id] for t in range(n_splits) if t != si)
            if others > 0:
                affected[SPLIT_NAMES[si]] += 1
        if len(examples) < max_examples:
            ordered = sorted(members, key=lambda m: (m[0], m[1].id))
            for x, (sa, a_s) in enumerate(ordered):
                for sb, b_s in ordered[x + 1 :]:
                    if len(examples) >= max_examples:
                        break
                    if sa == sb or (a_s.pair_id is not None and a_s.pair_id == b_s.pair_id):
                        continue
                    kind = "exact" if a_s.code == b_s.code else "normalised"
                    examples.append((kind, SPLIT_NAMES[sa], a_s.id, SPLIT_NAMES[sb], b_s.id))

    return DuplicateReport(
        exact=sum(v["exact"] for v in by_pair.values()),
        normalised=sum(v["normalised"] for v in by_pair.values()),
        by_split_pair=by_pair,
        affected=affected,
        examples=tuple(examples),
        truncated_examples=n_example_pairs > len(examples),
    )


def dedupe_across_splits(splits: Splits, policy: DedupePolicy = "drop-from-eval", drop_partner: bool = True) -> Splits:
    """Drop evaluation samples whose normalised code already occurs in an earlier split.

    ``"drop-from-eval"``: ``train`` is kept whole; a ``val`` sample is dropped if its normalised code occurs in
    ``train``, a ``test`` sample if it occurs in ``train`` or ``val`` (samples of the same pair never count as
    each other's duplicate). With ``drop_partner`` the other half of a dropped sample's pair (in the same split)
    is dropped too, so evaluation pairs stay complete. Dropped ids are listed in ``notes["deduped"]``; the
    duplicate report is recomputed.
    """
    if policy != "drop-from-eval":
        raise ValueError(f"unknown dedupe policy {policy!r}")
    seen: dict[str, set[str | None]] = defaultdict(set)  # normalised code -> pair ids (None: unpaired) seen

    def remember(samples: Iterable[Sample]) -> None:
        for s in samples:
            seen[normalise_code(s.code, s.language)].add(s.pair_id if s.pair_id is not None else f"\0{s.id}")

    def leaked(s: Sample) -> bool:
        pids = seen.get(normalise_code(s.code, s.language))
        if not pids:
            return False
        return s.pair_id is None or bool(pids - {s.pair_id})

    remember(splits.train)
    kept: dict[str, list[Sample]] = {"train": list(splits.train)}
    dropped: dict[str, list[str]] = {}
    for name in ("val", "test"):
        samples = splits.get(name)
        bad = {s.id for s in samples if leaked(s)}
        if drop_partner:
            bad_pairs = {s.pair_id for s in samples if s.id in bad and s.pair_id is not None}
            bad |= {s.id for s in samples if s.pair_id in bad_pairs}
        kept[name] = [s for s in samples if s.id not in bad]
        dropped[name] = sorted(bad)
        remember(samples)  # test is also checked against all of val (dropped or not)
    notes = {**splits.notes, "deduped": {"policy": policy, "drop_partner": drop_partner, "dropped": dropped}}
    partial = Splits(train=kept["train"], val=kept["val"], test=kept["test"], notes=notes)
    return dataclasses.replace(partial, duplicates=find_cross_split_duplicates(partial))
