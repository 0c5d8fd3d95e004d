"""The ``vulnsteer`` command: a thin layer over the library API.

Every subcommand has ``--help``. Errors in input print one clear line naming the file or field and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="Hugging Face id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--device-map", default=None, help="passed to from_pretrained, e.g. 'auto' for multi-GPU models")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model repositories to run their code")


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, required=required,
                   help="dataset file or folder (default: the bundled corpus)")
    g.add_argument("--format", default=None, help="sven, juliet, paired-dir, castle, jsonl, csv (default: detect)")
    g.add_argument("--cwe", action="append", default=[], help="restrict to these CWEs (repeatable: --cwe 89 --cwe 79)")
    g.add_argument("--merge-cwe", action="append", default=[], help="treat CWE FROM as TO, e.g. 77=78 (repeatable)")
    g.add_argument("--keep-comments", action="store_true", help="do not strip comments (label leaks!)")
    g.add_argument("--max-code-tokens", type=int, default=512, help="token budget for code (default 512)")
    g.add_argument("--max-pairs-per-cwe", type=int, default=None, help="cap pairs per CWE (seeded choice; with "
                   "--respect-upstream-split only train/val pairs are capped, the upstream val split stays whole)")
    g.add_argument("--duplicates", default="merge", choices=["merge", "drop", "keep"],
                   help="code occurring in several splits (after stripping comments/whitespace): merge = one split "
                   "group, nothing dropped (default); drop = drop val/test copies with their pair partner; keep = "
                   "report only")
    g.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    g.add_argument("--respect-upstream-split", action="store_true",
                   help="use the dataset's own train/val split (val becomes test)")


#: ``vulnsteer run``'s candidate strengths and unit (the same as :class:`~vulnsteer.experiment.RunConfig`'s;
#: literals here so that ``--help`` does not import torch).
RUN_STRENGTHS: tuple[float, ...] = (-1.0, -0.3, 0.3, 1.0)
RUN_UNIT = "relative"


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("steering")
    g.add_argument("--layers", type=_ints, default=(), help="comma-separated layers, negatives allowed "
                   "(default: the middle layer)")
    g.add_argument("--position", default="last", choices=["last", "code_mean"],
                   help="activation position the vectors are fitted at")
    g.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "logistic"])
    g.add_argument("--positions", dest="steer_positions", default="last",
                   choices=["last", "prompt", "generated", "all"], help="token positions to steer")
    g.add_argument("--unit", default="raw", choices=["raw", "relative"],
                   help="raw: strength x vector; relative: strength x layer's mean hidden norm x unit vector")
    g.add_argument("--batch-size", type=int, default=8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vulnsteer",
        description="Steer code LLMs toward finding vulnerabilities, and measure honestly whether it helps. "
        "Sign convention: positive strength pushes toward reporting a vulnerability.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the default experiment: vectors, baseline vs steered vs control, report")
    _add_model_args(p)
    _add_data_args(p)
    _add_steer_args(p)
    p.add_argument("--strengths", type=_floats, default=RUN_STRENGTHS,
                   help="candidate strengths, chosen per CWE on val (default -1,-0.3,0.3,1 with --unit relative)")
    p.add_argument("--modes", default="logit,generation", help="logit and/or generation (comma-separated)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>); rerun to resume")
    p.set_defaults(func=cmd_run, unit=RUN_UNIT)

    p = sub.add_parser("extract", help="record hidden states of a dataset's samples to a safetensors file")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--layers", type=_ints, default=(), help="layers (default: middle)")
    p.add_argument("--positions", default="last,code_mean", help="last and/or code_mean")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("vectors", help="fit per-CWE steering vectors on the train split and save them")
    _add_model_args(p)
    _add_data_args(p)
    _add_steer_args(p)
    p.add_argument("--pooled", action="store_true", help="also fit an 'any weakness' vector over all CWEs")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>.safetensors")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("detect", help="verdicts for source files, optionally steered")
    _add_model_args(p)
    p.add_argument("files", nargs="+", help="source files to scan")
    p.add_argument("--language", default=None, help="language (default: from the file extension)")
    p.add_argument("--vector", default=None, help="steering vector (.safetensors)")
    p.add_argument("--strength", type=float, default=0.0, help="positive = toward 'vulnerable'")
    p.add_argument("--layers", type=_ints, default=(), help="layers to steer (default: all of the vector's)")
    p.add_argument("--positions", default="all", choices=["last", "prompt", "generated", "all"])
    p.add_argument("--unit", default="raw", choices=["raw", "relative"])
    p.add_argument("--mode", default="generation", choices=["generation", "logit"])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-code-tokens", type=int, default=1024)
    p.add_argument("--allow-model-mismatch", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="evaluate saved vectors (baseline vs steered vs control) on a dataset")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--vectors", default=None, help="folder of saved vectors (from `vulnsteer vectors`)")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN_DIR",
                   help="a sweep's run directory: apply its chosen vectors and settings per CWE unchanged to every "
                   "sample of --data (no re-selection; --strength/--unit/--positions/--split are not used)")
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--positions", dest="steer_positions", default="last",
                   choices=["last", "prompt", "generated", "all"])
    p.add_argument("--unit", default="raw", choices=["raw", "relative"])
    p.add_argument("--split", default="test", choices=["all", "train", "val", "test"])
    p.add_argument("--modes", default="logit", help="logit and/or generation")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--allow-model-mismatch", action="store_true")
    p.add_argument("--out", default=None, help="output folder (default runs/<timestamp>-eval)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="many configurations; per-CWE choice on val, one test evaluation, report")
    p.add_argument("config", help="sweep config (TOML; see examples/default.toml)")
    p.add_argument("--out", default=None, help="run directory (default: the config's run.out, else "
                   "runs/sweep-<config>-<timestamp>); rerun to resume")
    p.add_argument("--model", default=None, help="override the config's model (id, directory or .gguf)")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--cache-dir", default=None, help="activation cache folder (default <cache root>/activations)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("data", help="dataset statistics and validation")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("stats", help="per-CWE counts, languages, lengths")
    q.add_argument("path")
    q.add_argument("--format", default=None)
    q.add_argument("--merge-cwe", action="append", default=[])
    q.add_argument("--json", action="store_true")
    q.add_argument("--model", default=None, help="tokenizer for token-length percentiles (default: embedded model)")
    q.add_argument("--no-tokens", action="store_true", help="skip token-length percentiles")
    q.set_defaults(func=cmd_data_stats)
    q = dsub.add_parser("validate", help="list every problem; exit 1 if any")
    q.add_argument("path")
    q.add_argument("--format", default=None)
    q.set_defaults(func=cmd_data_validate)
    return parser


def _run_config(args: argparse.Namespace, **extra: Any) -> Any:
    from .experiment import RunConfig

    modes = tuple(m.strip() for m in getattr(args, "modes", "logit").split(",") if m.strip())
    return RunConfig(
        model=args.model, data=args.data, format=args.format, cwes=tuple(args.cwe), merge_cwe=tuple(args.merge_cwe),
        layers=tuple(getattr(args, "layers", ()) or ()), position=getattr(args, "position", "last"),
        method=getattr(args, "method", "mean_diff"), unit=getattr(args, "unit", "raw"),
        steer_positions=getattr(args, "steer_positions", "all"), modes=modes, batch_size=args.batch_size,
        seed=args.seed, respect_upstream=args.respect_upstream_split, keep_comments=args.keep_comments,
        max_code_tokens=args.max_code_tokens, max_pairs_per_cwe=args.max_pairs_per_cwe, duplicates=args.duplicates,
        device=args.device,
        dtype=args.dtype, **extra,
    )


def _load(args: argparse.Namespace) -> Any:
    from .model import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map,
                      trust_remote_code=args.trust_remote_code)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_experiment

    config = _run_config(args, strengths=args.strengths, max_new_tokens=args.max_new_tokens)
    lm = _load(args)
    try:
        out = run_experiment(config, args.out, lm=lm, progress=not args.no_progress)
    finally:
        lm.close()
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from .activations import extract_activations
    from .experiment import prepare_data, resolve_run_layers
    from .io import atomic_open

    config = _run_config(args)
    lm = _load(args)
    try:
        data = prepare_data(config, lm.tokenizer, progress=not args.no_progress)
        samples = ([s for _, part in data.splits.items() for s in part] if args.split == "all"
                   else data.splits.get(args.split))
        layers = resolve_run_layers(args.layers, lm.num_layers)
        positions = [p.strip() for p in args.positions.split(",") if p.strip()]
        acts = extract_activations(lm, samples, layers, positions, batch_size=args.batch_size,
                                   progress=not args.no_progress)
    finally:
        lm.close()
    meta = {"model_id": lm.model_id, "fingerprint": lm.fingerprint, "layers": json.dumps(acts.layers),
            "sample_ids": json.dumps(acts.sample_ids),
            "labels": json.dumps([s.label for s in samples]), "cwes": json.dumps([s.cwe for s in samples])}
    blob = save({k: v.contiguous() for k, v in acts.by_position.items()}, metadata=meta)
    with atomic_open(args.out, "wb") as handle:
        handle.write(blob)
    shape = {k: list(v.shape) for k, v in acts.by_position.items()}
    print(f"wrote {args.out}: {shape} (samples x layers x hidden)")
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from .experiment import fit_cwe_vectors, prepare_data, resolve_run_layers
    from .runner import save_vectors

    config = _run_config(args)
    lm = _load(args)
    try:
        data = prepare_data(config, lm.tokenizer, progress=not args.no_progress)
        layers = resolve_run_layers(args.layers, lm.num_layers)
        vectors = fit_cwe_vectors(lm, data.by_cwe("train"), layers, position=args.position, methods=[args.method],
                                  batch_size=args.batch_size, pooled=args.pooled, progress=not args.no_progress)
    finally:
        lm.close()
    info = save_vectors(vectors, Path(args.out))
    for key, item in info.items():
        norms = ", ".join(f"L{k}: {v:.3g} ({item['relative_norm'][k]:.3g} rel)" for k, v in item["norm"].items())
        print(f"{key}: {Path(args.out).parent / item['file']}  n={item['n_vulnerable']}+{item['n_secure']}  {norms}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from .data.clean import canonical_language
    from .data.sample import Sample
    from .data.truncate import truncate_sample
    from .detection import generate_verdicts, score_logits
    from .steering import SteeringSpec, steer
    from .vectors import SteeringVector

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
    lm = _load(args)
    try:
        def count(text: str) -> int:
            return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

        samples = [truncate_sample(s, count, args.max_code_tokens) for s in samples]
        ctx: Any = nullcontext()
        if args.vector:
            vec = SteeringVector.load(args.vector, hidden_size=lm.hidden_size,
                                      fingerprint=None if args.allow_model_mismatch else lm.fingerprint,
                                      weights=None if args.allow_model_mismatch else lm.weights_identity)
            ctx = steer(lm.model, SteeringSpec(vec, args.strength, layers=args.layers, positions=args.positions,
                                               unit=args.unit))
        with ctx:
            if args.mode == "logit":
                records = score_logits(lm, samples, progress=not args.no_progress)
            else:
                records = generate_verdicts(lm, samples, max_new_tokens=args.max_new_tokens,
                                            progress=not args.no_progress)
    finally:
        lm.close()
    for sample, rec in zip(samples, records):
        out = {"file": sample.id, "language": sample.language, "verdict": rec.verdict, "weakness": rec.named_cwe,
               "p_vulnerable": rec.score, "text": rec.text,
               "truncated": bool(sample.meta.get("truncation", {}).get("truncated"))}
        if args.json:
            print(json.dumps(out))
        else:
            extra = f" p(vulnerable)={rec.score:.3f}" if rec.score is not None else ""
            weakness = f" {rec.named_cwe}" if rec.named_cwe else ""
            print(f"{sample.id}: {rec.verdict}{weakness}{extra}")
            if rec.text:
                print("  " + rec.text.strip().replace("\n", "\n  "))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate_cmd import evaluate_saved_vectors

    return evaluate_saved_vectors(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_config, run_sweep

    config = load_config(args.config, {"model": args.model, "device": args.device, "cache_dir": args.cache_dir})
    out = run_sweep(config, args.out, progress=not args.no_progress, config_path=args.config)
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")
    print(f"chosen: {out / 'chosen' / 'chosen.json'}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from .cwe import parse_merge_map
    from .data.loaders import LoadReport, dataset_stats, load_samples

    report = LoadReport()
    samples = load_samples(args.path, args.format, merge=parse_merge_map(args.merge_cwe), report=report)
    counter = None
    if not args.no_tokens:
        from .model import ModelLoadError, load_tokenizer

        try:
            tokenizer = load_tokenizer(args.model)

            def counter(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        except ModelLoadError as exc:
            print(f"(no token-length percentiles: {exc})", file=sys.stderr)
    stats = dataset_stats(samples, counter)
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    from .report import fmt

    print(f"{args.path}: {len(samples)} samples")
    per_cwe = stats.get("per_cwe") or stats.get("by_cwe") or {}
    print(f"{'CWE':<10} {'vulnerable':>10} {'secure':>8} {'pairs':>7}  languages")
    for cwe, row in per_cwe.items():
        langs = row.get("languages", {})
        lang_text = ", ".join(f"{k}:{v}" for k, v in langs.items()) if isinstance(langs, dict) else str(langs)
        print(f"{cwe:<10} {row.get('vulnerable', 0):>10} {row.get('secure', 0):>8} {row.get('pairs', 0):>7}  "
              f"{lang_text}")
    for key, value in stats.items():
        if key not in ("per_cwe", "by_cwe"):
            print(f"{key}: {fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)}")
    if report.problems:
        print(f"{len(report.problems)} problem(s) while loading; run `vulnsteer data validate {args.path}`")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from .data.loaders import validate

    problems = validate(args.path, args.format)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: valid")
    return 0


def _known_errors() -> tuple[type[BaseException], ...]:
    from .cwe import UnknownCWEError
    from .model import ModelLoadError
    from .vectors import VectorMismatchError

    errors: list[type[BaseException]] = [ModelLoadError, VectorMismatchError, UnknownCWEError, FileNotFoundError,
                                         ValueError, KeyError]
    try:
        from .data.loaders import DataError

        errors.insert(0, DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.no_progress:
        import os

        os.environ["TQDM_DISABLE"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        print("vulnsteer: interrupted; finished work is kept (rerun the same command to resume)", file=sys.stderr)
        return 130
    except _known_errors() as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"vulnsteer: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
