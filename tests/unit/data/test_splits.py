from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from vulnsteer.data.sample import Sample
from vulnsteer.data.splits import (
    SPLIT_NAMES,
    Splits,
    dedupe_across_splits,
    find_cross_split_duplicates,
    split_samples,
)


def pair(
    pid: str, group: str, cwe: str = "CWE-89", upstream: str | None = None, code: str | None = None
) -> list[Sample]:
    meta = {"upstream_split": upstream} if upstream else {}
    base = code if code is not None else f"int f_{pid}(int x) {{ return x; }}"
    return [
        Sample(
            id=f"{pid}/v",
            code=base + " /*v*/",
            language="c",
            cwe=cwe,
            label="vulnerable",
            pair_id=pid,
            group=group,
            meta=meta,
        ),
        Sample(
            id=f"{pid}/s",
            code=base + " /*s*/",
            language="c",
            cwe=cwe,
            label="secure",
            pair_id=pid,
            group=group,
            meta=meta,
        ),
    ]


def synthetic(n_groups: int = 200, cwes: tuple[str, ...] = ("CWE-89",), seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for g in range(n_groups):
        cwe = cwes[g % len(cwes)]
        for p in range(rng.randint(1, 3)):
            out += pair(f"g{g}p{p}", f"g{g}", cwe, code=f"int f{g}_{p}(int x) {{ return x + {g * 10 + p}; }}")
    return out


def split_of(splits: Splits) -> dict[str, str]:
    return {s.id: name for name, part in splits.items() for s in part}


def test_every_sample_lands_once_and_order_is_kept() -> None:
    samples = synthetic(50)
    sp = split_samples(samples)
    assigned = split_of(sp)
    assert len(assigned) == len(samples) == len(sp.train) + len(sp.val) + len(sp.test)
    for _, part in sp.items():
        positions = [samples.index(s) for s in part]
        assert positions == sorted(positions)


def test_deterministic_and_independent_of_input_order() -> None:
    samples = synthetic(120, ("CWE-89", "CWE-79", "CWE-22"))
    a = split_of(split_samples(samples, seed=7))
    b = split_of(split_samples(samples, seed=7))
    shuffled = list(samples)
    random.Random(3).shuffle(shuffled)
    c = split_of(split_samples(shuffled, seed=7))
    assert a == b == c
    assert split_of(split_samples(samples, seed=8)) != a


def test_groups_never_straddle() -> None:
    sp = split_samples(synthetic(150, ("CWE-89", "CWE-79")), seed=3)
    seen: dict[str, set[str]] = {}
    for name, part in sp.items():
        for s in part:
            seen.setdefault(s.group, set()).add(name)
    assert all(len(v) == 1 for v in seen.values())


def test_pairs_never_straddle_even_across_groups() -> None:
    samples = synthetic(60)
    # A pair whose halves carry different groups merges those groups (and so drags g0 and g1 along).
    samples += [
        Sample(id="x/v", code="a", language="c", cwe="CWE-89", label="vulnerable", pair_id="x", group="g0"),
        Sample(id="x/s", code="b", language="c", cwe="CWE-89", label="secure", pair_id="x", group="g1"),
    ]
    for seed in range(10):
        sp = split_samples(samples, seed=seed)
        where = split_of(sp)
        by_pair: dict[str, set[str]] = {}
        for s in samples:
            by_pair.setdefault(s.pair_id or s.id, set()).add(where[s.id])
        assert all(len(v) == 1 for v in by_pair.values())
        g0 = {where[s.id] for s in samples if s.group in ("g0", "g1")}
        assert len(g0) == 1


def test_fractions_roughly_respected_on_200_groups() -> None:
    samples = synthetic(200)
    sp = split_samples(samples, fractions=(0.6, 0.2, 0.2), seed=0)
    n = len(samples)
    assert abs(len(sp.train) / n - 0.6) < 0.03
    assert abs(len(sp.val) / n - 0.2) < 0.03
    assert abs(len(sp.test) / n - 0.2) < 0.03


def test_stratified_per_cwe() -> None:
    cwes = ("CWE-22", "CWE-78", "CWE-79", "CWE-89")
    samples = synthetic(200, cwes)
    sp = split_samples(samples, fractions=(0.5, 0.25, 0.25), seed=5)
    for cwe in cwes:
        total = sum(s.cwe == cwe for s in samples)
        for name, frac in zip(SPLIT_NAMES, (0.5, 0.25, 0.25), strict=True):
            got = sum(s.cwe == cwe for s in sp.get(name)) / total
            assert abs(got - frac) < 0.06, (cwe, name, got)
    summary = sp.summary()
    assert set(summary["train"]["by_cwe"]) == set(cwes)
    assert summary["test"]["by_cwe"]["CWE-89"]["pairs"] > 0
    assert summary["train"]["n"] == len(sp.train)


def test_tiny_cwes_still_reach_val_and_test() -> None:
    three = [s for g in range(3) for s in pair(f"a{g}", f"a{g}", "CWE-416")]
    sp = split_samples(three)
    assert [len({s.group for s in part}) for _, part in sp.items()] == [1, 1, 1]
    two = [s for g in range(2) for s in pair(f"b{g}", f"b{g}", "CWE-416")]
    sp = split_samples(two)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (2, 0, 2)
    one = pair("c", "c", "CWE-416")
    sp = split_samples(one)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (2, 0, 0)


def test_zero_fraction_split_stays_empty() -> None:
    sp = split_samples(synthetic(30), fractions=(0.8, 0.0, 0.2))
    assert sp.val == []
    assert sp.train and sp.test


def test_mixed_cwe_group_assigned_once() -> None:
    samples = synthetic(40)
    samples += pair("m1", "mixed", "CWE-79") + pair("m2", "mixed", "CWE-79") + pair("m3", "mixed", "CWE-22")
    where = split_of(split_samples(samples))
    assert len({where[s.id] for s in samples if s.group == "mixed"}) == 1


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        split_samples(pair("a", "a") + pair("a", "b"))
    with pytest.raises(ValueError):
        split_samples(synthetic(5), fractions=(0.5, 0.5))
    with pytest.raises(ValueError):
        split_samples(synthetic(5), fractions=(0.5, -0.1, 0.6))


def test_respect_upstream_moves_straddling_groups_to_test() -> None:
    samples: list[Sample] = []
    for g in range(100):
        samples += pair(f"t{g}", f"commit{g}", upstream="train", code=f"int t{g}(void) {{ return {g}; }}")
    for g in range(20):
        samples += pair(f"v{g}", f"vcommit{g}", upstream="val", code=f"int v{g}(void) {{ return -{g}; }}")
    # commit5 also has a function in upstream val: the whole commit must go to test.
    samples += pair("straddle", "commit5", upstream="val", code="int s(void) { return 0; }")
    # No upstream split: split normally.
    samples += [s for g in range(30) for s in pair(f"j{g}", f"j{g}", code=f"int j{g}(void) {{ return 1; }}")]

    sp = split_samples(samples, fractions=(0.6, 0.2, 0.2), seed=0, respect_upstream=True)
    where = split_of(sp)
    assert all(where[s.id] == "test" for s in samples if s.meta.get("upstream_split") == "val")
    assert all(where[s.id] == "test" for s in samples if s.group == "commit5")
    assert sp.notes["upstream_straddling_groups"] == ["commit5"]
    assert sp.notes["upstream_straddling_samples"] == 4
    assert sp.notes["without_upstream_split"] == 60
    up_train = [s for s in samples if s.meta.get("upstream_split") == "train" and s.group != "commit5"]
    in_train = sum(where[s.id] == "train" for s in up_train) / len(up_train)
    assert abs(in_train - 0.75) < 0.05  # (0.6, 0.2) renormalised
    assert not any(where[s.id] == "test" for s in up_train)
    assert {where[s.id] for s in samples if s.group.startswith("j")} == {"train", "val", "test"}


def _c(id_: str, code: str, pid: str | None = None, label: str = "vulnerable") -> Sample:
    return Sample(id=id_, code=code, language="c", cwe="CWE-787", label=label, pair_id=pid)  # type: ignore[arg-type]


def test_cross_split_duplicates_exact_and_normalised() -> None:
    body = "int f(int x) {\n    return x + 1;\n}"
    commented = "int f(int x) { /* bounds checked by caller */\n  return x + 1; // ok\n}"
    train = [_c("a", body), _c("u1", "int g(void) { return 2; }")]
    val = [_c("b", body)]  # exact copy of a
    test = [_c("c", commented), _c("u2", "int h(void) { return 3; }")]  # differs from a/b only in comments+ws
    rep = find_cross_split_duplicates(Splits(train=train, val=val, test=test))
    assert rep.by_split_pair["train/val"] == {"exact": 1, "normalised": 0}
    assert rep.by_split_pair["train/test"] == {"exact": 0, "normalised": 1}
    assert rep.by_split_pair["val/test"] == {"exact": 0, "normalised": 1}
    assert (rep.exact, rep.normalised, rep.total) == (1, 2, 3)
    assert rep.affected == {"train": 1, "val": 1, "test": 1}
    assert ("exact", "train", "a", "val", "b") in rep.examples
    assert ("normalised", "train", "a", "test", "c") in rep.examples
    assert not rep.truncated_examples
    capped = find_cross_split_duplicates(Splits(train=train, val=val, test=test), max_examples=1)
    assert len(capped.examples) == 1 and capped.truncated_examples
    assert capped.total == 3


def test_within_pair_duplicates_are_not_cross_split() -> None:
    code = "int f(void) { return 0; }"
    # Same pair id in two splits (hand-made splits), identical code: not a cross-split leak.
    sp = Splits(train=[_c("p/v", code, "p")], val=[], test=[_c("p/s", code + " // fixed", "p", "secure")])
    rep = find_cross_split_duplicates(sp)
    assert rep.total == 0 and rep.examples == ()
    # ... but a different pair with the same code is.
    sp2 = Splits(train=[_c("p/v", code, "p")], val=[], test=[_c("p/s", code, "p", "secure"), _c("q/v", code, "q")])
    rep2 = find_cross_split_duplicates(sp2)
    assert rep2.by_split_pair["train/test"] == {"exact": 1, "normalised": 0}
    assert rep2.affected["test"] == 1


def test_many_copies_count_pairs() -> None:
    code = "void f(void) {}"
    sp = Splits(train=[_c(f"t{i}", code) for i in range(3)], val=[], test=[_c(f"e{i}", code) for i in range(4)])
    rep = find_cross_split_duplicates(sp, max_examples=5)
    assert rep.exact == 12
    assert rep.affected == {"train": 3, "val": 0, "test": 4}
    assert len(rep.examples) == 5 and rep.truncated_examples


def test_split_samples_reports_duplicates() -> None:
    samples = synthetic(60)
    # The same function in many groups: wherever they land, some copies are in different splits.
    samples += [_c(f"dup{i}", "int same(void) { return 42; }") for i in range(12)]
    sp = split_samples(samples, seed=0)
    assert sp.duplicates.exact > 0
    assert sp.summary()["duplicates"]["exact"] == sp.duplicates.exact
    fast = split_samples(samples, seed=0, check_duplicates=False)
    assert fast.duplicates.total == 0 and fast.notes["duplicates_checked"] is False
    assert split_of(fast) == split_of(sp)


def test_dedupe_drops_eval_duplicates_and_partners() -> None:
    shared = "int f(int x) { return x * 2; }"
    train = [_c("a/v", shared, "a"), _c("a/s", shared + " + 0", "a", "secure")]
    val = [_c("b/v", shared + "  // same", "b"), _c("b/s", "int f2(void) { return 1; }", "b", "secure")]
    test = [
        _c("c/v", "int f2(void) {\n return 1;\n}", "c"),  # duplicates val b/s
        _c("c/s", "int unrelated(void) { return 7; }", "c", "secure"),
        _c("d/v", "int keep(void) { return 9; }", "d"),
    ]
    sp = Splits(train=train, val=val, test=test)
    out = dedupe_across_splits(sp)
    assert [s.id for s in out.train] == ["a/v", "a/s"]
    assert out.val == []  # b/v duplicates train; b/s goes with it
    assert [s.id for s in out.test] == ["d/v"]  # c/v duplicates val; c/s goes with it
    assert out.notes["deduped"]["dropped"] == {"val": ["b/s", "b/v"], "test": ["c/s", "c/v"]}
    assert out.duplicates.total == 0
    keep_partner = dedupe_across_splits(sp, drop_partner=False)
    assert [s.id for s in keep_partner.val] == ["b/s"]
    assert [s.id for s in keep_partner.test] == ["c/s", "d/v"]
    with pytest.raises(ValueError):
        dedupe_across_splits(sp, policy="nope")  # type: ignore[arg-type]


def test_summary_counts_by_split() -> None:
    sp = split_samples(synthetic(30, ("CWE-89", "CWE-79")))
    summary = sp.summary()
    for name in SPLIT_NAMES:
        part = sp.get(name)
        counted = sum(r["vulnerable"] + r["secure"] for r in summary[name]["by_cwe"].values())
        assert counted == summary[name]["n"] == len(part)
        assert summary[name]["groups"] == len(Counter(s.group for s in part))
    assert summary["notes"]["seed"] == 0


def test_respect_upstream_refuses_data_without_an_upstream_split() -> None:
    samples = [s for g in range(6) for s in pair(f"j{g}", f"j{g}", code=f"int j{g}(void) {{ return 1; }}")]
    with pytest.raises(ValueError, match="none of the 12 samples carries an upstream split"):
        split_samples(samples, fractions=(0.7, 0.3, 0.0), seed=0, respect_upstream=True)


def test_merge_duplicates_keeps_identical_code_in_one_split() -> None:
    samples = []
    for g in range(30):  # every secure version is the same code, every vulnerable one differs
        samples += pair(f"d{g}", f"d{g}", code=f"int d{g}(void) {{ return {g}; }}")
    shared = [
        dataclasses.replace(s, code="int fixed(void) { return 0; }") if s.label == "secure" else s for s in samples
    ]
    plain = split_samples(shared, fractions=(0.6, 0.2, 0.2), seed=0)
    assert plain.duplicates.exact > 0
    merged = split_samples(shared, fractions=(0.6, 0.2, 0.2), seed=0, merge_duplicates=True)
    assert merged.duplicates.exact == 0 and merged.notes["merge_duplicates"] is True
    assert sum(len(part) for _, part in merged.items()) == len(shared)
    assert len({where for where, part in merged.items() if part}) == 1  # one component: all in one split
