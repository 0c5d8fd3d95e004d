"""``vulnsteer detect``: verdicts for source files.

Everything that can be wrong with the input is checked before the model loads: the options, the files (read as
source text: BOMs, UTF-16; binary files skipped with a count), the steering vector, and the token budget against
the model's context.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from ..config.defaults import DEFAULT_MAX_NEW_TOKENS
from .options import (
    DefaultInt,
    UsageError,
    add_code_tokens_arg,
    add_model_args,
    add_steering_args,
    check_model_options,
    check_steering_options,
    code_token_budget,
    is_default,
    load,
    positive_int,
)

#: The largest file ``detect`` reads: far beyond any function's token budget, and tokenising more only costs time.
MAX_SOURCE_BYTES = 8 << 20


def register(sub: Any) -> None:
    p = sub.add_parser("detect", help="verdicts for source files, optionally steered")
    add_model_args(p)
    p.add_argument("files", nargs="+", help="source files to scan")
    p.add_argument(
        "--language",
        default=None,
        help="language of every file, e.g. c, python (default: from each file's extension; an unknown extension "
        "is prompted as plain source code, with a warning)",
    )
    p.add_argument(
        "--mode",
        default="generation",
        choices=["generation", "logit"],
        help="how the verdict is read: the generated answer text, or P(vulnerable) from the answer logits",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=DefaultInt(DEFAULT_MAX_NEW_TOKENS),
        help=f"tokens to generate (--mode generation only; default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    add_code_tokens_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.add_argument(
        "--detector",
        default=None,
        help="a saved detector folder (RUN/detector from `vulnsteer run`/`sweep`/`detector fit`): the probe reads "
        "each file's hidden states and gates the steering; prints its score too (default: none)",
    )
    g = p.add_argument_group("steering (all need --vector)")
    g.add_argument("--vector", default=None, help="steering vector (.safetensors) (default: no steering)")
    add_steering_args(g)
    p.set_defaults(func=cmd_detect)


def _check_options(args: argparse.Namespace) -> None:
    if args.detector is not None and args.vector is not None:
        raise UsageError("--detector and --vector exclude each other (a detector carries its own vector)")
    check_steering_options(args, args.mode == "generation", f"--mode {args.mode} generates nothing")
    if args.mode != "generation" and not is_default(args.max_new_tokens):
        raise UsageError("--max-new-tokens needs --mode generation (logit mode generates nothing)")
    if args.language is not None and not args.language.strip():
        raise UsageError("--language is empty")


def _warn(message: str) -> None:
    print(f"vulnsteer: warning: {message}", file=sys.stderr)


def read_files(names: list[str], language: str | None) -> list[Any]:
    """One sample per readable source file; binary files are skipped (a warning each, and a count); an empty
    file, a folder or a missing file is an error naming it."""
    from ..data.clean import LANGUAGE_ALIASES, canonical_language
    from ..data.sample import Sample
    from ..data.text import BinaryContentError, read_source

    known = set(LANGUAGE_ALIASES) | set(LANGUAGE_ALIASES.values())
    if language is not None and canonical_language(language) not in known:
        _warn(
            f"--language {language!r} is no language vulnsteer knows; it goes into the prompt as written "
            f"(known: {', '.join(sorted(set(LANGUAGE_ALIASES.values())))})"
        )
    samples = []
    skipped = 0
    for name in dict.fromkeys(names):
        path = Path(name)
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; detect takes source files (pass them, e.g. {path}/*.c)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file (a device, pipe or socket); pass source files")
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise UsageError(
                f"{path}: {size / 2**20:.1f} MiB is too large for one source file (at most "
                f"{MAX_SOURCE_BYTES // 2**20} MiB); pass the part to check"
            )
        try:
            decoded = read_source(path)
        except BinaryContentError as exc:
            _warn(f"{exc}; skipped")
            skipped += 1
            continue
        if not decoded.text.strip():
            raise ValueError(f"{path}: file is empty")
        if decoded.replaced:
            _warn(f"{path}: not valid {decoded.encoding}; undecodable bytes replaced")
        lang = language
        if lang is None:
            suffix = path.suffix.lower().lstrip(".")
            if suffix in LANGUAGE_ALIASES:
                lang = canonical_language(suffix)
            else:
                what = f"extension '.{suffix}'" if suffix else "no extension"
                _warn(f"{path}: {what} names no known language; prompting it as plain source code (pass --language)")
                lang = ""
        samples.append(
            Sample(str(path), decoded.text, canonical_language(lang) if lang else "", "unknown", "vulnerable")
        )
    if skipped:
        _warn(f"skipped {skipped} binary file(s)")
    if not samples:
        raise ValueError("no source files left to scan (every file given is binary)")
    return samples


def _steering_spec(args: argparse.Namespace, vector: Any, config: Any) -> Any:
    """The steering spec, checked before the model's weights load: the vector's hidden size and layers against
    the model's config (a mismatch ``--allow-model-mismatch`` cannot fix), ``--layers``, and the shift's scale.
    None without a vector."""
    from ..steering.hooks import PositionMode, SteeringSpec, StrengthUnit
    from ..steering.vectors import VectorMismatchError

    if vector is None:
        return None
    hidden = getattr(config, "hidden_size", None)
    if isinstance(hidden, int):
        try:
            vector.check_compatible(hidden)
        except VectorMismatchError as exc:
            raise VectorMismatchError(f"{args.vector}: {exc}") from None
    layers = getattr(config, "num_hidden_layers", None)
    outside = [layer for layer in args.layers or vector.layers if isinstance(layers, int) and not 0 <= layer < layers]
    if outside:
        raise VectorMismatchError(f"{args.vector}: steers layers {outside}, but the model has {layers} layers")
    try:
        return SteeringSpec(
            vector,
            args.strength,
            layers=tuple(args.layers),
            positions=cast(PositionMode, str(args.positions)),  # argparse choices checked them
            unit=cast(StrengthUnit, str(args.unit)),
        )
    except ValueError as exc:
        raise UsageError(f"{args.vector}: {exc}") from None


def cmd_detect(args: argparse.Namespace) -> int:
    _check_options(args)
    samples = read_files(args.files, args.language)  # cheap checks first: no torch imported yet
    check_model_options(args)
    vector = None
    if args.vector is not None:  # a damaged file is said before transformers is even imported
        from ..steering.vectors import SteeringVector

        vector = SteeringVector.load(args.vector)
    detector = None
    if args.detector is not None:
        from ..detection.detector import SavedDetector

        detector = SavedDetector.load(args.detector)

    from contextlib import nullcontext

    from ..data.truncate import truncate_sample
    from ..detection.engine import generate_verdicts, score_logits
    from ..steering.hooks import steer
    from ..steering.vectors import VectorMismatchError

    new_tokens = int(args.max_new_tokens) if args.mode == "generation" else 0
    config, tokenizer, budget = code_token_budget(args, new_tokens)
    spec = _steering_spec(args, vector, config)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    samples = [truncate_sample(s, count, budget) for s in samples]
    lm = load(args)
    try:
        if detector is not None:
            if not args.allow_model_mismatch:
                detector.check_model(lm, args.detector)
            records = detector.detect(
                lm, samples, mode=args.mode, max_new_tokens=new_tokens or 1, progress=not args.no_progress
            )
            return _print(args, samples, records)
        ctx: Any = nullcontext()
        if spec is not None:
            if not args.allow_model_mismatch:
                try:
                    spec.vector.check_compatible(lm.hidden_size, lm.fingerprint, weights=lm.weights_identity)
                except VectorMismatchError as exc:
                    raise VectorMismatchError(f"{args.vector}: {exc}") from None
            ctx = steer(lm, spec)
        with ctx:
            if args.mode == "logit":
                records = score_logits(lm, samples, progress=not args.no_progress)
            else:
                records = generate_verdicts(lm, samples, max_new_tokens=new_tokens, progress=not args.no_progress)
    finally:
        lm.close()
    return _print(args, samples, records)


def _print(args: argparse.Namespace, samples: list[Any], records: list[Any]) -> int:
    for sample, rec in zip(samples, records):
        out = {
            "file": sample.id,
            "language": sample.language or "unknown",
            "verdict": rec.verdict,
            "weakness": rec.named_cwe,
            "p_vulnerable": rec.score,
            "text": rec.text,
            "truncated": bool(sample.meta.get("truncation", {}).get("truncated")),
        }
        if rec.gate_score is not None:
            out["probe_score"] = rec.gate_score
            out["push"] = rec.push
        if args.json:
            print(json.dumps(out))
        else:
            extra = f" p(vulnerable)={rec.score:.3f}" if rec.score is not None else ""
            if rec.gate_score is not None:
                extra += f" probe score {rec.gate_score:+.3f} (push {rec.push:+.2f})"
            weakness = f" {rec.named_cwe}" if rec.named_cwe else ""
            print(f"{sample.id}: {rec.verdict}{weakness}{extra}")
            if rec.text:
                print("  " + rec.text.strip().replace("\n", "\n  "))
    return 0
