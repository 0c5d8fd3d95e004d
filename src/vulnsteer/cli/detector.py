"""``vulnsteer detector fit|show``: a probe-gated steering detector, fitted by the protocol and saved."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .experiment import SECTIONS
from .options import (
    Subcommands,
    UsageError,
    adaptation_options,
    add_config_args,
    add_scorer_args,
    config_from_args,
    given,
    probe_detector,
    reading_options,
    scorer_spec,
)

if TYPE_CHECKING:
    from ..scan.labelled import Measured
    from ..steering.probe import Probe


def register(sub: Subcommands) -> None:
    group = sub.add_parser("detector", help="fit (with the full protocol) or show a saved conditional detector")
    dsub = group.add_subparsers(dest="detector_command", required=True, metavar="COMMAND")
    p = dsub.add_parser(
        "fit",
        help="run the protocol and save the conditional setting chosen on val over every CWE as OUT/detector",
        description="The same protocol as `vulnsteer run` (every flag is a config key): the gated setting with the "
        "best balanced accuracy on val over every CWE together (a label-free behaviour vector, a probe pooled over "
        "every CWE) is saved as OUT/detector, next to the run's report on test. Use it with `vulnsteer detect FILE "
        "--detector OUT/detector` or `vulnsteer scan --detector OUT/detector`.",
    )
    add_config_args(p, SECTIONS)
    p.set_defaults(func=cmd_fit)
    p = dsub.add_parser(
        "fit-default",
        help="fit the shipped detector from a finished transfer run (the design it chose, calibrated out of dataset)",
        description="Fit the probe design with the best mean over the outer folds of a finished `vulnsteer "
        "transfer` run on every dataset of it, calibrate its scores to probabilities on the out-of-dataset (leave-"
        "one-dataset-out) scores, choose its threshold so the flagged share on each left-out dataset is nearest its "
        "vulnerable share, and write it (probe.safetensors + detector.json with provenance: model, design, dataset "
        "hashes and licences, the leave-one-dataset-out table with the length-only control). Reads the run's "
        "activation cache: nothing is extracted again. Default OUT: the shipped detector inside the package.",
    )
    p.add_argument("run", help="a finished transfer run folder (results.json, config.resolved.toml)")
    p.add_argument("--out", default=None, help="where to write it (default: the shipped detector in the package)")
    p.add_argument("--cache-dir", default=None, help="the activation cache (default: the run's run.cache_dir)")
    p.add_argument(
        "--design",
        default=None,
        metavar="KEY",
        help="fit this design of the run's grid instead of the one the run chose (its key as the run's report names "
        "it, e.g. a shallower probe that scans faster); detector.json says it was given",
    )
    p.set_defaults(func=cmd_fit_default)
    p = dsub.add_parser(
        "show",
        help="print a saved detector (setting, probe, model, training data, metrics); no folder: the shipped one",
    )
    p.add_argument(
        "folder", nargs="?", default=None, help="a detector folder (RUN/detector; default: the shipped detector)"
    )
    p.add_argument("--json", action="store_true", help="print detector.json as it is")
    p.set_defaults(func=cmd_show)
    p = dsub.add_parser(
        "evaluate",
        help="measure a detector (default: the shipped one) on labelled code, scored exactly as `scan` scores it",
        description="Write each sample of --data (any dataset format; whole files are split into functions) to a "
        "file of its own and scan it as `vulnsteer scan` does, then report the detector's file scores against the "
        "labels: AUROC and balanced accuracy with pair-bootstrap 95%% intervals, pair-rank accuracy, TPR at 5%% FPR "
        "and the share flagged, as fitted and adapted to the functions scored (no label read), for pairs read by "
        "only the functions that differ between the halves (what `vulnsteer diff` reports), beside the "
        "length-only control. Nothing is fitted or chosen on --data.",
    )
    add_scorer_args(p)
    add_config_args(p, ["data"], only=("--data", "--format", "--cwe", "--max-pairs-per-cwe", "--seed"))
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of every interval (default: 1000)")
    p.add_argument(
        "--no-peers",
        action="store_true",
        help="do not run the peer analysers (cppcheck, flawfinder, bandit; each where installed) beside it",
    )
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_fit_default(args: argparse.Namespace) -> int:
    from ..detection.probe_detector import SHIPPED_DETECTOR
    from ..experiment.transfer.ship import fit_default

    out = Path(args.out) if args.out else SHIPPED_DETECTOR
    fit_default(args.run, out, cache_dir=args.cache_dir, design_key=args.design, progress=not args.no_progress)
    print(f"detector: {out}")
    return show_probe_detector(out)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..config.vocabulary import PEERS
    from ..detection.probe_detector import SHIPPED_DETECTOR
    from ..experiment.prepare import cap_pairs, load_dataset
    from ..scan import ModelScorer, ScanOptions
    from ..scan.labelled import measure, measure_by, measure_peers, score_labelled

    if not given(args, "data.path"):
        raise UsageError("detector evaluate needs --data (a labelled dataset the detector was not fitted on)")
    if args.n_boot < 10:
        raise UsageError(f"--n-boot must be at least 10, got {args.n_boot}")
    config = config_from_args(args)
    spec = scorer_spec(args, explain=False)
    loaded = load_dataset(config.data)
    samples = cap_pairs(loaded.samples, config.data.max_pairs_per_cwe, config.data.seed)
    detector = probe_detector(spec)
    options = ScanOptions(min_score=0.0, fail_on=1.0, score_unknown=True, **reading_options(args, spec),
                          **adaptation_options(args, spec, detector))  # fmt: skip
    with ModelScorer(spec) as scorer:
        scorer.check()
        scored = score_labelled(samples, scorer, options, progress=not args.no_progress)
    rows = measure(scored, seed=config.data.seed, n_boot=args.n_boot)
    peers = [] if args.no_peers else measure_peers(scored, PEERS, seed=config.data.seed, n_boot=args.n_boot)
    what = "the bare model's answer" if spec.detector is None else str(spec.detector)
    if spec.detector is not None and Path(spec.detector).resolve() == SHIPPED_DETECTOR.resolve():
        what = "the shipped detector"
    why = scored.why
    fitted_on = detector.fitted_on(loaded.source) if detector is not None else None
    if fitted_on is not None:
        print(f"vulnsteer: warning: the detector was fitted on {fitted_on!r}, which --data looks like: these numbers "
              "are in-distribution, not a measure of transfer", file=sys.stderr)  # fmt: skip
    if scored.adapted is None and spec.detector is None:
        why = "only a detector adapts (the shipped one, or --detector)"
    n_vul = sum(s.y for s in samples)
    by: dict[str, dict[str, list[Measured]]] = {}
    for field in ("language", "cwe"):  # a breakdown only where the samples have more than one
        group = attrgetter(field)
        several = len({group(s) for s in samples}) > 1
        by[field] = measure_by(scored, group, seed=config.data.seed, n_boot=args.n_boot) if several else {}
    if args.json:
        print(json.dumps({
            "data": loaded.source, "samples": len(samples), "vulnerable": n_vul, "functions": scored.functions,
            "detector": what, "fitted_on_this_data": fitted_on, "aggregation": spec.resolved_aggregation,
            "adapted": scored.adapted is not None,
            "not_adapted_because": why or None,
            "rows": [r.to_json() for r in rows], "peers": [p.to_json() for p in peers],
            **{f"by_{field}": {name: [r.to_json() for r in found] for name, found in groups.items()}
               for field, groups in by.items()},
        }, indent=2))  # fmt: skip
        return 0
    how = spec.resolved_aggregation
    print(f"{loaded.source}: {len(samples)} samples ({n_vul} vulnerable), {scored.functions} distinct "
          f"functions, scored as `scan` scores them by {what} (files: {how} of their functions)")  # fmt: skip
    if scored.adapted is None:
        print(f"not adapted: {why}")
    _print_measured(rows)
    for language, found in by["language"].items():
        print(f"\n{language} ({found[0].metrics.n + found[0].skipped} samples):")
        _print_measured(found)
    if by["cwe"]:
        _print_by_cwe(by["cwe"])
    ran = [p for p in peers if p.measured is not None and p.detector is not None]
    if ran:
        print("\npeer analysers, each beside the detector on the same samples:")
        _print_measured([row for p in ran for row in (p.measured, p.detector) if row is not None])
    for p in peers:
        if p.measured is None:
            print(f"{p.tool}: {p.note}")
    if rows[0].skipped:
        print(f"{rows[0].skipped} samples left out: no function scored (nothing left once comments were stripped, "
              "or a file the scan could not read)")  # fmt: skip
    return 0


def _print_by_cwe(by_cwe: Mapping[str, Sequence[Measured]]) -> None:
    """One line per CWE holding both labels: the headline row (adapted where it adapted) beside length only."""
    print("\nper CWE (the detector's headline row, adapted where it adapted; flagged as the whole scan flags):")
    print("| CWE | n (vulnerable) | AUROC [95% CI] | bal. acc [95% CI] | flagged | length only: AUROC |")
    print("|---|---|---|---|---|---|")
    for cwe, found in by_cwe.items():
        named = {r.name: r for r in found}
        row, length = named.get("adapted", found[0]), named.get("length")
        m = row.metrics
        control = "–" if length is None or length.metrics.auroc is None else f"{length.metrics.auroc:.3f}"
        print(f"| {cwe} | {m.n} ({m.n_vulnerable}) | {_auroc_cell(row)} | {_balanced_cell(row)} | "
              f"{m.vulnerable_rate:.2f} | {control} |")  # fmt: skip


def _auroc_cell(row: Measured) -> str:
    m = row.metrics
    return (
        "–"
        if m.auroc is None or row.auroc_ci is None
        else f"{m.auroc:.3f} [{row.auroc_ci[0]:.2f}, {row.auroc_ci[1]:.2f}]"
    )


def _balanced_cell(row: Measured) -> str:
    ci = row.balanced_accuracy_ci
    return f"{row.metrics.balanced_accuracy:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _print_measured(rows: Sequence[Measured]) -> None:
    print("| detector | n | AUROC [95% CI] | bal. acc [95% CI] | pair-rank | TPR @5% FPR | flagged / vulnerable |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r.metrics
        auroc, bal = _auroc_cell(r), _balanced_cell(r)
        rank = "–" if m.pair_rank_accuracy is None else f"{m.pair_rank_accuracy:.3f} ({m.n_pairs} pairs)"
        tpr = "–" if m.tpr_at_5_fpr is None else f"{m.tpr_at_5_fpr:.3f}"
        share = f"{m.vulnerable_rate:.2f} / {m.n_vulnerable / m.n:.2f}" if m.n else "–"
        print(f"| {r.name}: {r.label} | {m.n} | {auroc} | {bal} | {rank} | {tpr} | {share} |")


def cmd_fit(args: argparse.Namespace) -> int:
    from ..experiment.protocol import run_protocol

    config = config_from_args(args)
    if not config.conditional.enabled:
        raise ValueError("detector fit needs conditional steering (drop --no-conditional)")
    if config.conditional.scope != "pooled":
        raise ValueError("detector fit needs --probe-scope pooled (a detector cannot know the CWE of new code)")
    out = run_protocol(config, command="detector fit", progress=not args.no_progress, name="detector")
    folder = out / "detector"
    if not (folder / "detector.json").is_file():
        raise ValueError(f"{out}: no gated setting could be saved as a detector (see {out / 'report.md'})")
    _warn_caveats(folder)
    print(f"detector: {folder}")
    print(f"report: {out / 'report.md'}")
    return 0


def _warn_caveats(folder: Path) -> list[str]:
    """Print, as warnings on stderr, what the detector's own record shows against trusting it (and whether the run
    that saved it ever finished); returns them."""
    from ..detection.detector import caveats

    doc = json.loads((folder / "detector.json").read_text(encoding="utf-8"))
    found = caveats(doc)
    run = folder.parent
    if (run / "identity.json").is_file() and not (run / "report.md").is_file():
        found.append(f"the run that saved it ({run}) has not finished: it was never tested; rerun it to finish")
    for line in found:
        print(f"vulnsteer: warning: {folder}: {line}", file=sys.stderr)
    return found


def _cell(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("auroc") is None:
        return "–"
    ci = row.get("auroc_ci")
    return f"{row['auroc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _print_lexical(probe: Probe) -> None:
    """The probe's bag-of-tokens term, if it has one: its size, weight and heaviest words."""
    if probe.lexical is not None:
        lex = probe.lexical.summary()
        up, down = ", ".join(lex["most_vulnerable"][:5]), ", ".join(lex["most_secure"][:5])
        print(
            f"  plus a bag-of-tokens term: {lex['terms']} code-token uni- and bigrams (TF-IDF, logistic, "
            f"C={probe.design.tokens_C:g}), weighted {probe.design.tokens:g}x the states' val spread; "
            f"most vulnerable: {up}; most secure: {down}"
        )


def show_probe_detector(folder: Path) -> int:
    """Print a probe detector: what it reads, its model, its data and its leave-one-dataset-out numbers."""
    from ..detection.probe_detector import ProbeDetector

    detector = ProbeDetector.load(folder)
    probe, info = detector.probe, detector.info
    print(
        f"{folder}: probe detector {detector.digest} (vulnsteer {info.get('vulnsteer_version')}, {info.get('created')})"
    )
    reads = ", ".join(f"layer {layer} ({pooling})" for layer, pooling in probe.reads)
    print(f"  probe: {probe.key} at {reads}")
    _print_lexical(probe)
    at = probe.threshold_probability
    print(f"  score: P(vulnerable), Platt-calibrated on out-of-dataset scores; flagged above {at:.3f}")
    m = detector.model
    print(f"  model: {m.id} (fingerprint {m.fingerprint}, weights {m.weights_digest}, {m.dtype})")
    for ds in info.get("datasets", []):
        licence = (ds.get("licence") or {}).get("licence", "?")
        print(
            f"  data: {ds['name']}: {ds['n']} samples ({ds['n_vulnerable']} vulnerable), hash {ds['hash']}, {licence}"
        )
    table = info.get("leave_one_dataset_out") or {}
    measured = info.get("out_of_dataset") or {}
    nested = {kind: (measured.get(kind) or {}).get("nested", {}) for kind in ("plain", "adapted")}
    own = (measured.get("plain") or {}).get("folds", {})
    if table:
        print(
            "  leave-one-dataset-out, AUROC [95% CI] (probe, adapted: the run's nested choice; shipped: this design on "
            "each fold, chosen on all of them; flagged/true share: this detector's threshold chosen without the fold):"
        )
        print(
            f"    {'left out':<12} {'probe':<20} {'adapted':<20} {'length only':<20} {'bag of tokens':<20} "
            f"{'shipped':<20} {'flagged/true':<13} adapted"
        )
        for name, fold in table.items():
            rows = fold["rows"]
            shares = [
                f"{row['flagged_share']:.2f}/{row['vulnerable_share']:.2f}" if (row := nested[kind].get(name)) else "–"
                for kind in ("plain", "adapted")
            ]
            print(
                f"    {name:<12} {_cell(rows.get('probe')):<20} {_cell(rows.get('adapted')):<20} "
                f"{_cell(rows.get('length')):<20} {_cell(rows.get('bag_of_tokens')):<20} {_cell(own.get(name)):<20} "
                f"{shares[0]:<13} {shares[1]}"
            )
    for kind in ("plain", "adapted"):
        found = measured.get(kind)
        if found:
            s, n = found["summary"], found["nested_summary"]
            print(
                f"  {kind}: mean AUROC {s['mean_auroc']:.3f}; flagged share within {s['max_share_gap']:.2f} of the "
                f"true share on every left-out dataset (nested: {n['max_share_gap']:.2f}, mean "
                f"{n['mean_share_gap']:.2f}); nested balanced accuracy {n['mean_balanced_accuracy']:.3f}"
            )
    a = detector.probe.adaptation
    if a is not None and a.share is not None and a.separation is not None:
        print(
            f"  adapted, it flags the highest {a.share:.0%} of the distinct functions it adapts to: its calibration "
            "data's vulnerable share, assumed (no label is read); --prevalence states another and moves the centre "
            f"by the classes' separation there, {a.separation / a.spread:.2f} score spreads"
        )
    elif a is not None:
        print("  --prevalence: not available (no share and separation in this file: refit it)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..detection.detector import SavedDetector
    from ..detection.probe_detector import SHIPPED_DETECTOR, is_probe_detector

    if args.folder is None or is_probe_detector(args.folder):
        folder = Path(args.folder) if args.folder else SHIPPED_DETECTOR
        if args.json:
            print((folder / "detector.json").read_text(encoding="utf-8"))
            return 0
        return show_probe_detector(folder)
    detector = SavedDetector.load(args.folder)
    doc = json.loads((Path(args.folder) / "detector.json").read_text(encoding="utf-8"))
    _warn_caveats(Path(args.folder))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    s, probe = doc["setting"], detector.probe
    print(f"{args.folder}: detector {detector.digest}")
    print(
        f"  push: {detector.vector.provenance.method} vector, strength {s['strength']:g} ({s['unit']}) at layers "
        f"{s['layers']}, positions {s['positions']}; gate {s['gate']}"
    )
    reads = ", ".join(f"layer {layer} ({pooling})" for layer, pooling in probe.reads)
    print(f"  probe: {probe.name} ({probe.key}) at {reads}, threshold {probe.threshold:.4g}, spread {probe.spread:.4g}")
    _print_lexical(probe)
    model = doc.get("model", {})
    print(f"  model: {model.get('id')} (fingerprint {model.get('fingerprint')}, weights {model.get('weights_digest')})")
    training = doc.get("training", {})
    print(
        f"  trained on: {training.get('source')} ({training.get('n_train')} train, {training.get('n_val')} val; "
        f"CWEs {', '.join(training.get('cwes', []))})"
    )
    val = doc.get("validation", {})
    if val:
        print(
            f"  val balanced accuracy {val.get('balanced_accuracy')} (baseline {val.get('baseline_balanced_accuracy')}"
            f", {val.get('mode')} mode)"
        )
    return 0
