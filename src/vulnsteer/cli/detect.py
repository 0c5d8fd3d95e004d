"""``vulnsteer detect``: verdicts for source files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import (
    add_model_args,
    ints,
    load,
)


def register(sub: Any) -> None:
    p = sub.add_parser("detect", help="verdicts for source files, optionally steered")
    add_model_args(p)
    p.add_argument("files", nargs="+", help="source files to scan")
    p.add_argument("--language", default=None, help="language (default: from the file extension)")
    p.add_argument("--vector", default=None, help="steering vector (.safetensors)")
    p.add_argument("--strength", type=float, default=0.0, help="positive = toward 'vulnerable'")
    p.add_argument("--layers", type=ints, default=(), help="layers to steer (default: all of the vector's)")
    p.add_argument("--positions", default="all", choices=["last", "prompt", "generated", "all"])
    p.add_argument("--unit", default="raw", choices=["raw", "relative"])
    p.add_argument("--mode", default="generation", choices=["generation", "logit"])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-code-tokens", type=int, default=1024)
    p.add_argument("--allow-model-mismatch", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..data.clean import canonical_language
    from ..data.sample import Sample
    from ..data.truncate import truncate_sample
    from ..detection.engine import generate_verdicts, score_logits
    from ..steering.hooks import SteeringSpec, steer
    from ..steering.vectors import SteeringVector

    samples = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        raw = path.read_bytes()
        code = raw.decode("utf-8", errors="replace")
        if not code.strip():
            raise ValueError(f"{path}: file is empty")
        language = args.language or canonical_language(path.suffix or "txt")
        samples.append(Sample(str(path), code, language, "unknown", "vulnerable"))
    lm = load(args)
    try:

        def count(text: str) -> int:
            return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

        samples = [truncate_sample(s, count, args.max_code_tokens) for s in samples]
        ctx: Any = nullcontext()
        if args.vector:
            vec = SteeringVector.load(
                args.vector,
                hidden_size=lm.hidden_size,
                fingerprint=None if args.allow_model_mismatch else lm.fingerprint,
                weights=None if args.allow_model_mismatch else lm.weights_identity,
            )
            ctx = steer(
                lm.model, SteeringSpec(vec, args.strength, layers=args.layers, positions=args.positions, unit=args.unit)
            )
        with ctx:
            if args.mode == "logit":
                records = score_logits(lm, samples, progress=not args.no_progress)
            else:
                records = generate_verdicts(
                    lm, samples, max_new_tokens=args.max_new_tokens, progress=not args.no_progress
                )
    finally:
        lm.close()
    for sample, rec in zip(samples, records):
        out = {
            "file": sample.id,
            "language": sample.language,
            "verdict": rec.verdict,
            "weakness": rec.named_cwe,
            "p_vulnerable": rec.score,
            "text": rec.text,
            "truncated": bool(sample.meta.get("truncation", {}).get("truncated")),
        }
        if args.json:
            print(json.dumps(out))
        else:
            extra = f" p(vulnerable)={rec.score:.3f}" if rec.score is not None else ""
            weakness = f" {rec.named_cwe}" if rec.named_cwe else ""
            print(f"{sample.id}: {rec.verdict}{weakness}{extra}")
            if rec.text:
                print("  " + rec.text.strip().replace("\n", "\n  "))
    return 0
