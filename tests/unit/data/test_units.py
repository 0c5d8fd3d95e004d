"""Functions, not file heads: whole files scored as their functions, long code as windows, the pieces' scores
aggregated back to the sample (stats.aggregate, data.units, detection.records, the protocol and evaluate)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from runs import run, write_config
from vulnsteer.config import DataSection
from vulnsteer.config.experiment import load_config
from vulnsteer.data.changes import match_functions
from vulnsteer.data.functions import FunctionSplitter, tree_sitter_available
from vulnsteer.data.loaders import DataError, load_samples
from vulnsteer.data.sample import Sample
from vulnsteer.data.truncate import truncate_code, windows
from vulnsteer.data.units import Piece, Units, file_functions, held_out_units, training_pieces, window_fitter
from vulnsteer.detection.records import DetectionRecord, aggregate_records
from vulnsteer.experiment.evaluate import evaluate_from_run, transfer_config
from vulnsteer.experiment.prepare import LoadedData, prepare_data
from vulnsteer.experiment.select import choose_aggregation
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.lm.model import LoadedModel
from vulnsteer.stats.aggregate import aggregate, check_aggregation, top_index

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")


def words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- aggregation rules


def test_aggregation_rules() -> None:
    values = [0.1, 0.7, 0.4, 0.9]
    assert aggregate(values, "max") == 0.9
    assert aggregate(values, "top2_mean") == pytest.approx(0.8)
    assert aggregate(values, "top3_mean") == pytest.approx((0.9 + 0.7 + 0.4) / 3)
    assert aggregate(values, "mean") == pytest.approx(0.525)
    assert aggregate([0.3], "top3_mean") == 0.3  # fewer pieces than k: all of them
    # logsumexp: log(mean(exp(v))), between the mean and the highest, equal to both when every piece is equal
    assert aggregate(values, "logsumexp") == pytest.approx(math.log(sum(math.exp(v) for v in values) / 4))
    assert aggregate(values, "mean") < aggregate(values, "logsumexp") < aggregate(values, "max")
    assert aggregate([1.5] * 7, "logsumexp") == pytest.approx(1.5)  # more functions do not score higher
    assert aggregate([800.0, 0.0], "logsumexp") == pytest.approx(800 - math.log(2))  # no overflow
    assert top_index([0.2, 0.9, 0.9]) == 1  # the first of equal ones
    with pytest.raises(ValueError, match="--aggregation must be one of logsumexp, max, top2_mean"):
        check_aggregation("median", "--aggregation")
    with pytest.raises(ValueError, match="finite"):
        aggregate([float("nan")], "max")


def test_max_ties_a_change_away_from_the_top_and_mean_does_not() -> None:
    # two versions of a file: the riskiest function unchanged, another one changed
    before, after = [0.9, 0.6, 0.2], [0.9, 0.3, 0.2]
    assert aggregate(before, "max") == aggregate(after, "max")
    assert aggregate(before, "mean") > aggregate(after, "mean")
    assert aggregate(before, "top2_mean") > aggregate(after, "top2_mean")
    assert aggregate(before, "logsumexp") > aggregate(after, "logsumexp")


# ---------------------------------------------------------------- which functions changed


def test_functions_matched_by_name_and_compared_by_code() -> None:
    old = [("A.f", "1"), ("g", "2"), ("g", "3"), ("h", "4"), ("gone", "5")]
    new = [("A.f", "1"), ("g", "2"), ("g", "30"), ("k", "4"), ("added", "6")]
    found = [(c.kind, c.before, c.after) for c in match_functions(old, new, lambda f: f)]
    assert found == [
        ("unchanged", ("A.f", "1"), ("A.f", "1")),
        ("unchanged", ("g", "2"), ("g", "2")),  # overloads matched in order
        ("changed", ("g", "3"), ("g", "30")),
        ("renamed", ("h", "4"), ("k", "4")),  # another name, the same code
        ("added", None, ("added", "6")),
        ("removed", ("gone", "5"), None),
    ]


# ---------------------------------------------------------------- windows


def long_function(n: int = 90) -> str:
    return "\n".join(["int handle(char *buf, int len) {", *[f"    v{i} = buf[{i}] + len;" for i in range(n)], "}"])


@pytest.mark.parametrize("budget", [24, 40, 100])
def test_windows_cover_every_line_within_the_budget(budget: int) -> None:
    code = long_function()
    found = windows(code, words, budget)
    assert len(found) > 1
    assert found[0] == truncate_code(code, words, budget)  # the first window is the head
    covered: set[int] = set()
    for text, info in found:
        assert words(text) <= budget and info.truncated
        assert info.kept_ranges[0][0] == 1  # every window starts with the signature
        covered.update(line for a, b in info.kept_ranges for line in range(a, b + 1))
    assert covered == set(range(1, code.count("\n") + 2))
    bodies = [info.kept_ranges[-1] for _, info in found[1:]]
    for (_, end), (start, _) in itertools.pairwise(bodies):
        assert start <= end  # consecutive windows overlap
    assert windows("int f(void) { return 0; }", words, budget) == [
        truncate_code("int f(void) { return 0; }", words, budget)
    ]


# ---------------------------------------------------------------- files as functions

C_FILE = """#include <string.h>

static int helper(int x) {
    return x + 1;
}

void copy(char *dst, const char *src) {
    strcpy(dst, src);
}

int main(int argc, char **argv) {
    char buf[8];
    copy(buf, argv[1]);
    return helper(0);
}
"""
C_FIXED = C_FILE.replace("strcpy(dst, src);", "strncpy(dst, src, 7);\n    dst[7] = 0;")


def file_sample(sid: str, code: str, label: str = "vulnerable", pair: str | None = None) -> Sample:
    return Sample(sid, code, "c", "CWE-787", label, pair, is_file=True)  # type: ignore[arg-type]


@needs_grammars
def test_a_whole_file_is_split_into_its_functions_and_others_stay_whole() -> None:
    splitter = FunctionSplitter()
    found = file_functions(file_sample("f", C_FILE), splitter, keep_comments=False)
    assert found is not None and [f.name for f in found] == ["helper", "copy", "main"]
    assert found[1].code.startswith("void copy(") and found[1].region.start_line == 7
    assert file_functions(dataclasses.replace(file_sample("f", C_FILE), is_file=False), splitter, False) is None
    one = "int f(void) { return 0; }\n"
    assert file_functions(file_sample("g", one), splitter, False) is None  # one function: scored as it is


@needs_grammars
def test_held_out_pieces_and_aggregation_back_to_the_file() -> None:
    splitter = FunctionSplitter()
    plain = Sample("s", long_function(), "c", "CWE-787", "secure")
    whole = file_sample("f", C_FILE)
    functions = {"f": file_functions(whole, splitter, False) or ()}
    units = held_out_units([whole, plain], functions, {}, window_fitter(words, 40))
    assert [p.id for p in units.pieces[:3]] == ["f#0", "f#1", "f#2"]
    assert all(p.label == "vulnerable" and p.cwe == "CWE-787" and not p.is_file for p in units.pieces[:3])
    assert [w.name for w in units.where[:3]] == ["helper", "copy", "main"]
    windowed = [w for w in units.where if w.sample == 1]
    assert len(windowed) > 1 and {w.function for w in windowed} == {0}  # one function, several windows
    assert units.split == 2
    values = [0.2, 0.8, 0.4] + [0.1] * (len(windowed) - 1) + [0.6]
    (file_value, file_top), (long_value, long_top) = units.aggregate(values, "mean")
    assert file_value == pytest.approx(aggregate([0.2, 0.8, 0.4], "mean")) and file_top == 1
    assert long_value == pytest.approx(aggregate(values[3:], "mean")) and long_top == len(values) - 1
    short = Sample("t", "int f(void) { return 0; }", "c", "CWE-787", "secure")
    assert held_out_units([short], {}, {}, window_fitter(words, 40)).pieces[0].id == "t"  # one piece keeps its id


def test_two_versions_of_a_file_score_each_shared_function_once() -> None:
    """The apply engine scores each distinct code once per CWE (two versions of a file share most functions); every
    copy gets its piece's record, with its own id, pair and label, and each file aggregates its own pieces."""
    from vulnsteer.data.region import Region
    from vulnsteer.data.truncate import Truncation
    from vulnsteer.data.units import FunctionCode
    from vulnsteer.experiment.family import HeldOut

    a = Sample("a", "", "c", "CWE-787", "vulnerable", "p", is_file=True)
    b = dataclasses.replace(a, id="b", label="secure")
    other = Sample("o", "int g(void);", "c", "CWE-89", "secure")

    def f(name: str, code: str) -> FunctionCode:
        return FunctionCode(name, "function", Region(1, 1, 1, 1), code)

    found = {
        "a": [f("main", "int main();"), f("copy", "void copy();")],
        "b": [f("main", "int main();"), f("copy", "void copy(int n);")],
    }
    units = held_out_units([a, b, other], found, {}, lambda code: [(code, Truncation(False, 0, 0, None))], "all")
    held = HeldOut("all", ("logit",), {"CWE-787": [a, b], "CWE-89": [other]}, units=units, aggregation="max")
    scored = held.scored_pieces_by_cwe()
    assert {cwe: [p.id for p in pieces] for cwe, pieces in scored.items()} == {
        "CWE-787": ["a#0", "a#1", "b#1"],
        "CWE-89": ["o"],
    }
    score = {"a#0": 0.5, "a#1": 0.9, "b#1": 0.2, "o": 0.3}
    records = [
        DetectionRecord(p.id, p.cwe, p.pair_id, p.y, "vulnerable", score=score[p.id])
        for pieces in scored.values()
        for p in pieces
    ]
    files = held.to_samples(records)
    assert [(r.sample_id, r.y_true, r.pair_id, r.score) for r in files] == [
        ("a", 1, "p", 0.9),
        ("b", 0, "p", 0.5),  # b's main is a's main, scored once: 0.5 > its copy's 0.2
        ("o", 0, None, 0.3),
    ]
    # records of every piece (a family's own, from the activations) are read as they are
    every = [*records, DetectionRecord("b#0", "CWE-787", "p", 0, "secure", score=0.1)]
    assert [r.score for r in held.to_samples(every)] == [0.9, 0.2, 0.3]


def test_windows_then_functions_are_aggregated_in_that_order() -> None:
    s = Sample("f", "x", "c", "CWE-787", "vulnerable", is_file=True)
    # function 0 has three windows, function 1 one: mean over windows first, then over functions
    where = (Piece(0, 0, "a", 0), Piece(0, 0, "a", 1), Piece(0, 0, "a", 2), Piece(0, 1, "b"))
    units = Units((s,), (s, s, s, s), where)
    assert units.aggregate([0.9, 0.0, 0.0, 0.6], "mean") == [(pytest.approx((0.3 + 0.6) / 2), 3)]
    assert units.aggregate([0.9, 0.0, 0.0, 0.6], "max") == [(0.9, 0)]


@needs_grammars
def test_a_file_pair_trains_on_the_functions_that_differ() -> None:
    splitter = FunctionSplitter()
    vulnerable, fixed = file_sample("p:v", C_FILE, pair="p"), file_sample("p:s", C_FIXED, "secure", "p")
    alone = file_sample("q:v", C_FILE)
    plain = Sample("r", "int f(void) { return 0; }", "c", "CWE-787", "secure")
    functions = {s.id: file_functions(s, splitter, False) or () for s in (vulnerable, fixed, alone)}
    pieces = training_pieces([vulnerable, fixed, alone, plain], functions, lambda s: s)
    assert [(p.id, p.label, p.meta.get("function")) for p in pieces] == [
        ("p:v#0", "vulnerable", "copy"),
        ("p:s#0", "secure", "copy"),  # helper and main are the same in both files: no label in them
        ("q:v#0", "vulnerable", "helper"),  # a file without a partner: every function, with its label
        ("q:v#1", "vulnerable", "copy"),
        ("q:v#2", "vulnerable", "main"),
        ("r", "secure", None),
    ]
    assert "strcpy" in pieces[0].code and "strncpy" in pieces[1].code
    # a pair that differs outside its functions trains on its two files
    header = file_sample("h:s", "#define N 7\n" + C_FILE, "secure", "h")
    hv = file_sample("h:v", C_FILE, pair="h")
    functions = {s.id: file_functions(s, splitter, False) or () for s in (hv, header)}
    assert [p.id for p in training_pieces([hv, header], functions, lambda s: s)] == ["h:v", "h:s"]


# ---------------------------------------------------------------- records


def record(sid: str, score: float | None, verdict: str, **kw: object) -> DetectionRecord:
    return DetectionRecord(sid, "CWE-787", "p", 1, verdict, score=score, **kw)  # type: ignore[arg-type]


def test_records_of_pieces_add_up_to_the_sample() -> None:
    f = Sample("f", "x", "c", "CWE-787", "vulnerable", "p", is_file=True)
    g = Sample("g", "y", "c", "CWE-787", "secure", "p")
    parts = tuple(dataclasses.replace(f, id=f"f#{i}", is_file=False) for i in range(3))
    units = Units((f, g), (*parts, g), (Piece(0, 0, "a"), Piece(0, 1, "b"), Piece(0, 2, "c"), Piece(1, 0, "")))
    pieces = [
        record("f#0", 0.2, "secure", margin=-1.0, gate_score=0.1, push=-1.0),
        record("f#1", 0.9, "vulnerable", margin=2.0, gate_score=0.5, push=1.0, text="Answer: vulnerable"),
        record("f#2", 0.4, "secure", margin=0.0, gate_score=0.3, push=-1.0),
        DetectionRecord("g", "CWE-787", "p", 0, "secure", score=0.3),
    ]
    file_record, other = aggregate_records(units, pieces, "mean")
    assert file_record.sample_id == "f" and file_record.y_true == 1 and file_record.pair_id == "p"
    assert file_record.score == pytest.approx(0.5) and file_record.margin == pytest.approx(1 / 3)
    assert file_record.gate_score == pytest.approx(0.3)
    assert (file_record.verdict, file_record.push, file_record.text) == ("vulnerable", 1.0, "Answer: vulnerable")
    assert other == pieces[3]  # a sample of one piece keeps its record
    assert aggregate_records(units, pieces, "max")[0].score == 0.9
    # pieces whose verdicts read their score against one threshold: the file's verdict reads its aggregate against
    # it (the top piece's verdict says vulnerable; the mean of 0.2, 0.9 and 0.4 is below 0.6); mixed: the top's
    held = [dataclasses.replace(r, threshold=0.6) for r in pieces]
    mean_record, max_record = aggregate_records(units, held, "mean")[0], aggregate_records(units, held, "max")[0]
    assert (mean_record.verdict, mean_record.threshold, mean_record.text) == ("secure", 0.6, "Answer: vulnerable")
    assert (max_record.verdict, max_record.threshold) == ("vulnerable", 0.6)
    assert aggregate_records(units, [dataclasses.replace(r, threshold=0.45) for r in pieces], "mean")[0].verdict == (
        "vulnerable"
    )
    mixed = [held[0], dataclasses.replace(held[1], threshold=0.5), held[2]]
    assert (
        aggregate_records(units, mixed, "mean")[0].verdict,
        aggregate_records(units, mixed, "mean")[0].threshold,
    ) == (
        "vulnerable",
        None,
    )
    # generation mode has no score: the first piece that says vulnerable leads
    texts = [dataclasses.replace(r, score=None, margin=None, gate_score=None) for r in pieces]
    texts[2] = dataclasses.replace(texts[2], verdict="vulnerable", text="third")
    assert aggregate_records(units, texts, "max")[0].text == "Answer: vulnerable"
    with pytest.raises(ValueError, match="no record for piece 'f#2' of sample 'f'"):
        aggregate_records(units, pieces[:2] + pieces[3:], "max")
    assert aggregate_records(units, pieces[3:], "max") == pieces[3:]  # samples without records are left out


def test_the_aggregation_is_chosen_on_val_by_mean_auroc() -> None:
    # three file pairs whose riskiest function is the same in both versions: max ties them, mean ranks them
    samples, pieces, where, records = [], [], [], []
    for k in range(3):
        for label, changed in (("vulnerable", 0.7), ("secure", 0.3)):
            index = len(samples)
            sample = Sample(f"{k}{label[0]}", "x", "c", "CWE-787", label, f"p{k}", is_file=True)  # type: ignore[arg-type]
            samples.append(sample)
            for j, value in enumerate((0.95, changed)):
                piece = dataclasses.replace(sample, id=f"{sample.id}#{j}", is_file=False)
                pieces.append(piece)
                where.append(Piece(index, j, f"f{j}"))
                records.append(DetectionRecord(piece.id, "CWE-787", f"p{k}", sample.y, "vulnerable", score=value))
    units = Units(tuple(samples), tuple(pieces), tuple(where))
    how, words_, means = choose_aggregation(("max", "mean"), units, {"baseline|logit|val": records})
    assert how == "mean" and means == {"max": 0.5, "mean": 1.0} and words_.startswith("on val")
    whole = Units.whole(samples)
    assert choose_aggregation(("top2_mean", "max"), whole, {})[0] == "top2_mean"  # nothing split: the first


# ---------------------------------------------------------------- loaders mark whole files


def test_loaders_mark_whole_files(tmp_path: Path) -> None:
    root = tmp_path / "pairs" / "CWE-787"
    root.mkdir(parents=True)
    (root / "copy.c").write_text(C_FILE)
    (root / "p_copy.c").write_text(C_FIXED)
    assert all(s.is_file for s in load_samples(tmp_path / "pairs", "paired-dir"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"code": "int f();", "label": 1, "cwe": "CWE-787", "whole_file": True}) + "\n"
        + json.dumps({"code": "int g();", "label": 0, "cwe": "CWE-787", "whole_file": "no"}) + "\n"
        + json.dumps({"code": "int h();", "label": 0, "cwe": "CWE-787"}) + "\n"
    )  # fmt: skip
    assert [s.is_file for s in load_samples(rows, "jsonl")] == [True, False, False]
    rows.write_text(json.dumps({"code": "int f();", "label": 1, "cwe": "CWE-787", "whole_file": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:1: cannot read field 'whole_file' = 'maybe' as true or false"):
        load_samples(rows, "jsonl")


# ---------------------------------------------------------------- prepare, protocol and evaluate --from

PY_FILE = """import os


def load(name):
    return open(os.path.join(BASE, name)).read()


def run(cmd{i}):
    {body}


def report(rows):
    return ", ".join(str(r) for r in rows)
"""
BODIES = {
    "CWE-78": ("os.system('ls ' + cmd{i})", "subprocess.run(['ls', cmd{i}])"),
    "CWE-89": ("cur.execute('SELECT ' + cmd{i})", "cur.execute('SELECT ?', (cmd{i},))"),
}


def write_file_pairs(path: Path, n_pairs: int = 6, load_per_pair: bool = False) -> Path:
    """A generic-JSONL dataset of whole Python files: the vulnerable and fixed versions differ in one function
    (``run``), the middle one of three; the other two are the same in every file, or (*load_per_pair*) ``load``
    is the same in a pair's two files only."""
    rows = []
    for cwe, (bad, good) in BODIES.items():
        for i in range(n_pairs):
            pair = f"{cwe}-{i}"
            for label, body in (("vulnerable", bad), ("secure", good)):
                code = PY_FILE.format(i=i, body=body.format(i=i))
                if load_per_pair:
                    code = code.replace("os.path.join(BASE, name)", f"os.path.join(BASE, {pair!r}, name)")
                rows.append({"id": f"{pair}-{label[0]}", "pair_id": pair, "cwe": cwe, "label": label,
                             "language": "python", "code": code, "whole_file": True})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@needs_grammars
def test_prepare_splits_files_into_pieces(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    data = write_file_pairs(tmp_path / "files.jsonl")
    loaded = load_samples(data, "jsonl")
    prepared = prepare_data(
        DataSection(path=str(data), format="jsonl", max_code_tokens=64), tiny_lm.tokenizer,
        samples=LoadedData(loaded, str(data)), progress=False,
    )  # fmt: skip
    assert prepared.notes["files_split"] == len(loaded) and prepared.notes["functions_of_files"] == 3 * len(loaded)
    train = prepared.samples("train")
    assert train and all(s.meta["function"] == "run" for s in train)  # only the changed function of each pair
    test = prepared.units("test")
    assert test.split == len(test.samples) and {w.name for w in test.where} == {"load", "run", "report"}
    assert [s.id for s in prepared.pieces("test")] == [p.id for p in test.pieces]


@needs_grammars
def test_held_out_files_leave_out_what_exactly_two_of_them_share(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """``data.file_functions``: a held-out file's score leaves out the function only its other version has too
    (each pair's own ``load``), not the helper every file has (``report``), as a scan reads files; ``all`` reads
    every function. The records of the pieces add up to the file's over the functions it reads."""
    data = write_file_pairs(tmp_path / "files.jsonl", load_per_pair=True)
    loaded = load_samples(data, "jsonl")
    units = {}
    for rule in ("differing", "all"):
        prepared = prepare_data(
            DataSection(path=str(data), format="jsonl", max_code_tokens=64, file_functions=rule), tiny_lm.tokenizer,
            samples=LoadedData(loaded, str(data)), progress=False,
        )  # fmt: skip
        assert prepared.notes["file_functions"] == rule
        units[rule] = prepared.units("test")
    differing = units["differing"]
    assert len(differing.samples) >= 4 and {p.shared for p in units["all"].where} == {False}
    assert {(w.name, w.shared) for w in differing.where} == {("load", True), ("run", False), ("report", False)}
    records = [DetectionRecord(p.id, p.cwe, p.pair_id, p.y, "secure", score=0.1 * (k % 7), threshold=0.5)
               for k, p in enumerate(differing.pieces)]  # fmt: skip
    for file_record, (index, sample) in zip(aggregate_records(differing, records, "mean"), enumerate(differing.samples),
                                            strict=True):  # fmt: skip
        read = [r.score for r, w in zip(records, differing.where, strict=True) if w.sample == index and not w.shared]
        assert file_record.sample_id == sample.id and len(read) == 2
        assert file_record.score == pytest.approx(aggregate(read, "mean"))  # type: ignore[arg-type]
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nfile_functions = "some"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.toml.*data\.file_functions"):
        load_config(bad)


@needs_grammars
def test_protocol_and_evaluate_score_files_as_functions(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    data = write_file_pairs(tmp_path / "files.jsonl")
    config = write_config(tmp_path / "sweep.toml", data, cache_dir=tmp_path / "cache",
                          extra="", strengths="{ relative = [0.5] }")  # fmt: skip
    results = run(load_config(config), tmp_path / "run", tiny_lm)
    info = results.data.pieces if results.data is not None else None
    assert (
        info is not None
        and info.chosen_by.startswith("on val")
        and set(info.val_auroc) == {"logsumexp", "max", "top2_mean", "top3_mean", "mean"}
    )
    assert info.aggregation == max(info.val_auroc, key=lambda how: info.val_auroc[how])
    assert info.split == info.samples > 0 and info.pieces == 3 * info.samples
    chosen = json.loads((tmp_path / "run" / "chosen" / "chosen.json").read_text())
    assert chosen["aggregation"] == info.aggregation
    # every test record is one file's, its score its functions' aggregate
    base = results.lead["logit"].rows[0]
    assert base.name == "baseline" and base.metrics.n == info.samples
    stored = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    pieces = {r["sample_id"]: r["score"] for e in stored if e["condition"]["key"] == "baseline|logit|test"
              for r in e["records"]}  # fmt: skip
    files = {r.sample_id: r.score for r in results.records["baseline|logit|test"]}
    assert files and all("#" not in sid for sid in files)
    # load and report are the same in every file: each is scored once per CWE, and a file without its own record
    # of one reads that CWE's; run, the function that differs, is scored in every file
    assert len(pieces) == len(files) + 2 * len({sid.rsplit("-", 2)[0] for sid in files})

    def part(sid: str, k: int) -> float:
        if f"{sid}#{k}" in pieces:
            return float(pieces[f"{sid}#{k}"])
        assert k != 1
        cwe = sid.rsplit("-", 2)[0]
        return float(next(v for p, v in pieces.items() if p.startswith(f"{cwe}-") and p.endswith(f"#{k}")))

    for sid, score in files.items():
        parts = [part(sid, k) for k in range(3)]
        assert score == pytest.approx(aggregate(parts, info.aggregation))
    # and its verdict is that score against the answer's threshold, not its riskiest function's verdict
    for r in results.records["baseline|logit|test"]:
        assert r.threshold == 0.5 and r.score is not None
        assert r.verdict == ("vulnerable" if r.score >= 0.5 else "secure")
    # evaluate --from applies the run's aggregation to every file of the data; --aggregations overrides it
    other = transfer_config(tmp_path / "run", {"data.path": (str(data), "--data"), "data.format": ("jsonl", "-")})
    out = evaluate_from_run(tmp_path / "run", other, tmp_path / "eval", lm=tiny_lm, progress=False)
    got = load_results(out / "results.json")
    assert got.data is not None and got.data.pieces is not None
    assert got.data.pieces.aggregation == info.aggregation and got.data.pieces.split == 24
    assert got.lead["logit"].rows[0].metrics.n == 24
    out = evaluate_from_run(tmp_path / "run", other, tmp_path / "eval-max", lm=tiny_lm, progress=False,
                            aggregation="max")  # fmt: skip
    maxed = load_results(out / "results.json")
    assert maxed.data is not None and maxed.data.pieces is not None and maxed.data.pieces.aggregation == "max"


def test_val_entries_report_pair_rank_beside_pair_accuracy() -> None:
    from vulnsteer.experiment.grid import Condition
    from vulnsteer.experiment.results import val_entry

    def rec(sid: str, pair: str, y: int, score: float | None) -> DetectionRecord:
        return DetectionRecord(sid, "CWE-787", pair, y, "vulnerable", score=score)

    # both pairs answered "vulnerable" twice: pair accuracy 0; the scores still rank one pair right, one tied
    records = [rec("a", "p", 1, 0.9), rec("b", "p", 0, 0.4), rec("c", "q", 1, 0.6), rec("d", "q", 0, 0.6)]
    entry = val_entry(Condition("baseline", "logit", "val"), records, ["CWE-787"])
    overall = entry.metrics["overall"]
    assert overall.pair_accuracy == 0.0 and overall.pair_rank_accuracy == pytest.approx(0.75)
    texts = [dataclasses.replace(r, score=None) for r in records]  # generation mode: no scores, no pair-rank
    assert (
        val_entry(Condition("baseline", "generation", "val"), texts, ["CWE-787"]).metrics["overall"].pair_rank_accuracy
        is None
    )
