"""``vulnsteer detector fit|show``: a probe-gated steering detector, fitted by the protocol and saved."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .experiment import SECTIONS
from .options import add_config_args, config_from_args


def register(sub: Any) -> None:
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
    p = dsub.add_parser("show", help="print a saved detector: setting, probe, model, training data, val metrics")
    p.add_argument("folder", help="a detector folder (RUN/detector)")
    p.add_argument("--json", action="store_true", help="print detector.json as it is")
    p.set_defaults(func=cmd_show)


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


def cmd_show(args: argparse.Namespace) -> int:
    from ..detection.detector import SavedDetector

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
