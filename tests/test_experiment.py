"""The experiment engine: configs, data preparation, condition keys, selection on val, resumable results."""

from __future__ import annotations

from pathlib import Path

import pytest

from vulnsteer.experiment.engine import Condition, ResultStore, RunConfig, prepare_data, run_conditions, select_per_cwe
from vulnsteer.lm.model import LoadedModel


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        RunConfig(modes=("vibes",))
    with pytest.raises(ValueError, match="method"):
        RunConfig(method="magic")
    with pytest.raises(ValueError, match="fractions"):
        RunConfig(fractions=(0.5, 0.5, 0.5))
    assert RunConfig(cwes=("89", "cwe-022")).cwes == ("CWE-89", "CWE-22")


def test_prepare_data_splits_pairs_and_strips_comments() -> None:
    data = prepare_data(RunConfig(cwes=("CWE-89", "CWE-787")), tokenizer=None, progress=False)
    assert data.cwes == ["CWE-89", "CWE-787"]
    where = {}
    for name, samples in data.splits.items():
        for s in samples:
            where.setdefault(s.pair_id, set()).add(name)
    assert all(len(v) == 1 for v in where.values()), "a pair straddles splits"
    for name in ("val", "test"):
        for cwe, samples in data.by_cwe(name).items():
            labels = [s.label for s in samples]
            assert labels.count("vulnerable") == labels.count("secure"), (name, cwe)


def test_condition_keys_distinguish_everything() -> None:
    a = Condition("steered", "logit", "val", 2.0, (3,), "raw", "last")
    b = Condition("control", "logit", "val", 2.0, (3,), "raw", "last")
    c = Condition("steered", "logit", "test", 2.0, (3,), "raw", "last")
    assert len({a.key, b.key, c.key}) == 3
    assert a.setting == b.setting == c.setting
    assert Condition("baseline", "logit", "val").setting == "baseline"


def test_selection_uses_val_only_and_prefers_smaller_strength() -> None:
    base = Condition("baseline", "logit", "val")
    weak = Condition("steered", "logit", "val", 2.0, (1,))
    strong = Condition("steered", "logit", "val", 8.0, (1,))
    scores = {base.key: 0.5, weak.key: 0.7, strong.key: 0.7}
    chosen = select_per_cwe([base, strong, weak], lambda c, _cwe: scores[c.key], ["CWE-89"])
    assert chosen["CWE-89"] == weak
    only_base = select_per_cwe([base, weak], lambda c, _cwe: 0.5, ["CWE-89"])
    assert only_base["CWE-89"] == base
    with pytest.raises(ValueError, match="validation"):
        select_per_cwe([Condition("baseline", "logit", "test")], lambda c, _cwe: 1.0, ["CWE-89"])


def test_result_store_resumes(tmp_path: Path, tiny_llama: LoadedModel) -> None:
    data = prepare_data(RunConfig(cwes=("CWE-89",)), tokenizer=None, progress=False)
    store = ResultStore(tmp_path / "records.jsonl")
    conds = [Condition("baseline", "logit", "val")]
    first = run_conditions(tiny_llama, conds, store, data.by_cwe, {}, progress=False)
    assert (tmp_path / "records.jsonl").read_text().count("\n") == 1
    again = ResultStore(tmp_path / "records.jsonl")
    assert conds[0].key in again

    second = run_conditions(None, conds, again, data.by_cwe, {}, progress=False)  # type: ignore[arg-type]
    assert [r.margin for r in second[conds[0].key]] == [r.margin for r in first[conds[0].key]]


def test_prepare_data_refuses_an_empty_required_split() -> None:
    config = RunConfig(cwes=("CWE-89",), fractions=(0.8, 0.2, 0.0))
    assert not prepare_data(config, progress=False).splits.test  # allowed unless required
    with pytest.raises(ValueError, match=r"the test split is empty \(28 samples, fractions \[0.8, 0.2, 0.0\]"):
        prepare_data(config, progress=False, require=("val", "test"))


def test_pair_cap_keeps_the_upstream_held_out_split_whole(tmp_path: Path) -> None:
    from tests.test_loaders import sven_row, write_jsonl

    def rows(prefix: str, n: int) -> list[object]:
        return [
            sven_row(
                before=f"def {prefix}{i}(x):\n    os.system(x)\n",
                after=f"def {prefix}{i}(x):\n    run([x])\n",
                commit_link=f"github.com/acme/tool/commit/{prefix}{i}",
            )
            for i in range(n)
        ]

    root = tmp_path / "sven" / "data_train_val"
    write_jsonl(root / "train" / "cwe-078.jsonl", rows("t", 12))
    write_jsonl(root / "val" / "cwe-078.jsonl", rows("v", 5))
    config = RunConfig(
        data=str(tmp_path / "sven"), respect_upstream=True, fractions=(0.7, 0.3, 0.0), max_pairs_per_cwe=4
    )
    data = prepare_data(config, progress=False, require=("train", "val", "test"))
    assert len(data.splits.test) == 10  # all 5 upstream val pairs
    assert len(data.splits.train) + len(data.splits.val) == 8  # 4 of the 12 upstream train pairs
    assert all(s.meta["upstream_split"] == "val" for s in data.splits.test)


def test_prepare_data_duplicate_policies(tmp_path: Path) -> None:
    import json

    rows = []
    for i in range(12):  # every fixed version is the same code: duplicates across splits are certain
        rows.append(
            {
                "id": f"p{i}-v",
                "pair_id": f"p{i}",
                "cwe": "CWE-89",
                "label": "vulnerable",
                "language": "python",
                "code": f"cur.execute('SELECT * FROM t{i} WHERE id=' + uid)",
            }
        )
        rows.append(
            {
                "id": f"p{i}-s",
                "pair_id": f"p{i}",
                "cwe": "CWE-89",
                "label": "secure",
                "language": "python",
                "code": "cur.execute(QUERY, (uid,))",
            }
        )
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kept = prepare_data(RunConfig(data=str(path), duplicates="keep"), progress=False).splits
    assert kept.duplicates.exact > 0 and "deduped" not in kept.notes
    dropped = prepare_data(RunConfig(data=str(path), duplicates="drop"), progress=False).splits
    assert dropped.duplicates.exact == 0
    assert dropped.notes["duplicates_before_dedupe"]["exact"] == kept.duplicates.exact
    gone = dropped.notes["deduped"]["dropped"]
    assert gone["val"] and gone["test"]  # whole pairs: both halves go
    assert len(dropped.train) == len(kept.train) and not dropped.val and not dropped.test
    merged = prepare_data(RunConfig(data=str(path)), progress=False).splits  # the default: one split group
    assert merged.duplicates.exact == 0 and merged.notes["merge_duplicates"] is True
    assert sum(len(part) for _, part in merged.items()) == 24  # nothing dropped
    with pytest.raises(ValueError, match="duplicates must be one of"):
        RunConfig(duplicates="ignore")
