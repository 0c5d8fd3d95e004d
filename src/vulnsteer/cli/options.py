"""Argument groups, value parsers and checks shared by several commands.

Every option that is a configuration key is declared once, with the key (:func:`add_config_args`: ``run``,
``sweep``, ``evaluate``, ``detector fit``, and the ``[model]``, ``[data]`` and ``[detection]`` keys of ``detect``,
``scan``, ``vectors fit`` and ``extract``), so its help text, default and validation are the configuration's. Every
option has help text that shows its default (:class:`HelpFormatter` appends it).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ..config import UNIT_FLAGS, ExperimentConfig, Key, config_keys, parse_config
from ..config import load_config as load_experiment_config
from ..config.defaults import DEFAULT_STEER_POSITIONS, DEFAULT_UNIT, MIN_ADAPT, WARN_ADAPT
from ..config.vocabulary import AGGREGATIONS, POSITIONS, STRENGTH_UNITS

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from ..detection.probe_detector import ProbeDetector
    from ..scan.spec import ScorerSpec

__all__ = [
    "STEERING_OPTIONS",
    "DefaultStr",
    "HelpFormatter",
    "Subcommands",
    "UsageError",
    "add_config_args",
    "add_scorer_args",
    "add_steering_args",
    "config_from_args",
    "finite_float",
    "floats",
    "given",
    "ints",
    "is_default",
    "overrides_from_args",
    "positive_int",
    "require",
    "scorer_spec",
]


class UsageError(ValueError):
    """Options that do not go together (``--strength`` without ``--vector``): one line, exit 2."""


#: What each command module's ``register`` adds its subcommands to (``add_subparsers``' result).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: ...)`` to every option's help that does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if action.default is None or action.default is False or action.default == [] or action.default == ():
            return text
        value = action.default
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


T = TypeVar("T")


def _number_list(text: str, convert: Callable[[str], T], what: str) -> tuple[T, ...]:
    try:
        values = tuple(convert(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers (``--strengths -1,0.3``)."""
    values: tuple[float, ...] = _number_list(text, float, "numbers")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def finite_float(text: str) -> float:
    """One finite number (``nan`` and ``inf`` are refused by name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers (``--layers -8,15``)."""
    values: tuple[int, ...] = _number_list(text, int, "integers")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1 (``--batch-size 0`` is refused by name: argparse prefixes the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def require(args: argparse.Namespace, needs: str, options: Iterable[tuple[str, str]]) -> None:
    """Refuse options that only mean something with *needs*: *options* are ``(option, dest)`` pairs; an option
    counts as given unless its value :func:`is_default`.

    >>> require(argparse.Namespace(vector=None, strength=3.0), "--vector", [("--strength", "strength")])
    Traceback (most recent call last):
    ...
    vulnsteer.cli.options.UsageError: --strength needs --vector (it has no effect without it)
    """
    for option, dest in options:
        if not is_default(getattr(args, dest, None)):
            raise UsageError(f"{option} needs {needs} (it has no effect without it)")


def check_steering_options(args: argparse.Namespace, generates: bool, why: str) -> None:
    """The steering options of ``detect`` and ``scan`` (:data:`STEERING_OPTIONS`): only with ``--vector`` (a
    ``--detector`` takes ``--allow-model-mismatch`` alone), ``--vector`` needs ``--strength``, and the positions
    must steer something where *generates* is false (*why* says so)."""
    if args.detector is not None and args.vector is not None:
        raise UsageError("--detector and --vector exclude each other (a detector carries its own vector)")
    if args.detector is not None:
        require(args, "--vector", STEERING_OPTIONS[:-1])
    elif args.vector is None:
        require(args, "--vector", STEERING_OPTIONS)
    elif args.strength is None:
        raise UsageError("--vector needs --strength (positive = toward 'vulnerable', e.g. --strength 0.3)")
    if args.vector is not None:
        check_steered_positions(args.positions, generates, why)


def check_steered_positions(positions: str, generates: bool, why: str) -> None:
    """Refuse ``--positions generated`` where nothing is generated: the steered result would be the unsteered one.

    >>> try:
    ...     check_steered_positions("generated", False, "--mode logit generates nothing")
    ... except UsageError as exc:
    ...     print(str(exc).split(":")[0])
    --positions generated steers only generated tokens, and --mode logit generates nothing
    """
    if str(positions) == "generated" and not generates:
        raise UsageError(
            f"--positions generated steers only generated tokens, and {why}: the result would be unsteered "
            "(use last, answer, prompt or all)"
        )


class DefaultStr(str):
    """A string option's default, told apart from the same value given on the command line (argparse keeps a
    non-string default as it is; this one is a ``str`` everywhere else).

    >>> isinstance(DefaultStr("last"), DefaultStr), DefaultStr("last") == "last"
    (True, True)
    """


def is_default(value: object) -> bool:
    """Whether *value* is an option's untouched default (:class:`DefaultStr`) or unset (None, False, an empty tuple
    or list)."""
    return value is None or value is False or value in ((), []) or isinstance(value, DefaultStr)


#: Options that only mean something with ``--vector`` (option, dest): :func:`add_steering_args` adds them.
STEERING_OPTIONS = (
    ("--strength", "strength"),
    ("--layers", "layers"),
    ("--positions", "positions"),
    ("--unit", "unit"),
    ("--allow-model-mismatch", "allow_model_mismatch"),
)


def add_steering_args(g: argparse._ActionsContainer) -> None:
    """How ``--vector`` is applied (``detect``, ``scan``): :data:`STEERING_OPTIONS`; the caller adds ``--vector``
    and refuses these without it (``require(args, "--vector", STEERING_OPTIONS)``)."""
    g.add_argument(
        "--strength",
        type=finite_float,
        default=None,
        help="positive = toward 'vulnerable' (no default: required with --vector; e.g. 0.3 with --unit relative)",
    )
    g.add_argument("--layers", type=ints, default=(), help="layers to steer (default: all of the vector's)")
    g.add_argument(
        "--positions",
        default=DefaultStr(DEFAULT_STEER_POSITIONS),
        choices=list(POSITIONS),
        help=f"token positions to steer (default: {DEFAULT_STEER_POSITIONS})",
    )
    g.add_argument(
        "--unit",
        default=DefaultStr(DEFAULT_UNIT),
        choices=list(STRENGTH_UNITS),
        help="raw: strength x vector; relative: strength x the layer's mean hidden-state norm x unit vector; "
        f"sigma: strength x the spread of the training activations along the vector (default: {DEFAULT_UNIT})",
    )
    g.add_argument("--allow-model-mismatch", action="store_true", help="use a vector fitted on another model")


# ------------------------------------------------------------------------------------------------ config keys
# `run`, `sweep` and `evaluate` take one flag per configuration key (vulnsteer.config.sections declares each
# key once: default, parser, help, flag), so a flag and the TOML key it sets are validated alike.


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _default_text(key: Key) -> str:
    value = key.default
    if key.name == "strengths":
        return ",".join(f"{s:g}" for _, s in value) + f" ({value[0][0]})"
    if value is None or value == ():
        return {
            "model.name": "the embedded SmolLM2-135M-Instruct",
            "data.path": "the bundled corpus",
            "steering.layers": "the middle layer",
            "run.out": "runs/<command>-<timestamp>",
        }.get(key.dotted, "not set")
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


_CLI_TYPES: dict[str, dict[str, Any]] = {
    "str": {},
    "int": {"type": int, "metavar": "N"},
    "positive": {"type": positive_int, "metavar": "N"},
    "float": {"type": float, "metavar": "X"},
    "bool": {"action": "store_true"},
    "nobool": {"action": "store_false"},
    "csv": {"type": _words, "metavar": "A,B"},
    "floats": {"type": lambda text: list(floats(text)), "metavar": "X,Y"},
    "repeat": {"action": "append"},
    "layers": {"action": "append", "type": lambda text: list(ints(text)), "metavar": "L[,L...]"},
}


def _dest(key: Key) -> str:
    return f"cfg__{key.section}__{key.name}"


def add_config_args(
    parser: argparse.ArgumentParser, sections: Iterable[str], *, skip: Sequence[str] = (), only: Sequence[str] = ()
) -> None:
    """One argument group per section, one flag per key that has one (``--layers`` sets ``steering.layers``).

    Flags default to "not given", so only what the user typed overrides the configuration (the help text shows
    the configuration's default)."""
    wanted = list(sections)
    for section in wanted:
        group = parser.add_argument_group(f"[{section}] keys")
        for key in config_keys():
            if key.section != section or key.flag is None or key.flag in skip or (only and key.flag not in only):
                continue
            kind = dict(_CLI_TYPES[key.cli])
            if "metavar" not in kind and kind.get("action") not in ("store_true", "store_false"):
                kind["metavar"] = key.flag.lstrip("-").replace("-", "_").upper()
            if key.cli == "nobool":
                text = f"turn off {key.dotted}: {key.help} (default: on)"
            else:
                text = f"{key.help} ({key.dotted}; default: {_default_text(key)})"
            if key.cli == "layers":
                text += "; repeat for several candidate layer sets: --layers 10 --layers 15 --layers 10,15"
            group.add_argument(key.flag, dest=_dest(key), default=argparse.SUPPRESS, help=text, **kind)
        unit_flag = UNIT_FLAGS.get(section)
        if unit_flag and unit_flag not in skip and (not only or unit_flag in only):
            group.add_argument(
                unit_flag,
                dest=f"cfg__{section}__unit",
                default=argparse.SUPPRESS,
                choices=list(STRENGTH_UNITS),
                help=f"unit of the plain list of {section} strengths: "
                "raw (strength x vector), relative (x the layer's mean hidden-state norm) or sigma (x "
                f"the spread along the vector) ({section}.unit; needed with a plain list of strengths; given alone, it "
                "re-units the default strengths)",
            )


def overrides_from_args(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """``{"section.key": (value, "--flag")}`` for every configuration flag the user gave."""
    flags = {_dest(k): k for k in config_keys()}
    out: dict[str, tuple[Any, str]] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__"):
            continue
        section, _, name = dest[len("cfg__") :].partition("__")
        if name == "unit":
            out[f"{section}.unit"] = (value, UNIT_FLAGS[section])
            continue
        key = flags[dest]
        out[key.dotted] = (value, str(key.flag))
    return out


def config_from_args(args: argparse.Namespace, config_file: str | None = None) -> ExperimentConfig:
    """The configuration: *config_file* (or the defaults) with the flags the user gave on top."""
    overrides = overrides_from_args(args)
    if config_file is not None:
        return load_experiment_config(config_file, overrides)
    return parse_config({}, "command line", overrides)


def given(args: argparse.Namespace, dotted: str) -> bool:
    """Whether the flag of configuration key *dotted* (``"data.max_code_tokens"``) was given."""
    return dotted in overrides_from_args(args)


# ------------------------------------------------------------------------------------------------ scoring
# `detect` and `scan` score code the same way: one set of flags, read into one ScorerSpec.


def add_scorer_args(p: argparse.ArgumentParser) -> None:
    """What scores code, for ``detect`` and ``scan`` alike (:func:`scorer_spec` reads them): a saved detector, or
    a vector with its setting (:data:`STEERING_OPTIONS`), or neither; the ``[model]`` keys; the ``[detection]``
    and ``[data]`` keys that apply (``--max-new-tokens``, ``--batch-size``, ``--max-code-tokens``,
    ``--keep-comments``, ``--long-functions``); and ``--aggregation``."""
    g = p.add_argument_group("what steers the model (a saved detector, or a vector: the steering options need it)")
    g.add_argument(
        "--detector",
        default=None,
        metavar="DIR",
        help="a saved detector folder (RUN/detector from `vulnsteer run`/`sweep`/`detector fit`): its probe reads "
        "each function's hidden states and gates its steering; its probe score and push are reported (default: "
        "none)",
    )
    g.add_argument("--vector", default=None, help="steering vector (.safetensors) (default: no steering)")
    g.add_argument(
        "--answer",
        action="store_true",
        help="score by the bare model's answer (P(vulnerable) from its logits), not the shipped detector (which "
        "is the default with the embedded model: no --model, --detector or --vector)",
    )
    g.add_argument(
        "--adapt",
        action="store_const",
        const="on",
        default=None,
        help="label-free adaptation: a probe detector's centre and threshold, or a steering detector's threshold (a "
        "quantile of its steered scores), re-estimated from the functions being scored (no label is read; refused "
        f"below {MIN_ADAPT} functions, warned below {WARN_ADAPT}). Default with a detector (the shipped one, or "
        "--detector): adapt from its minimum (20 for the shipped one) distinct functions on",
    )
    g.add_argument(
        "--no-adapt",
        dest="adapt",
        action="store_const",
        const="off",
        help="never adapt: every function scored by the detector as fitted (the score of a function then does not "
        "depend on the others scanned)",
    )
    g.add_argument(
        "--prevalence",
        type=float,
        default=None,
        metavar="SHARE",
        help="the share of the functions scored you expect to be vulnerable (a prior you state, e.g. 0.05 for a "
        "mature tree; no label is read): the adapted detector flags the highest that share, findings start there "
        "(instead of --min-score), its probabilities take the prior, and its centre moves by what the prior says "
        "(default: none; the centre assumes about as many vulnerable inputs as the detector's calibration data had)",
    )
    add_steering_args(g)
    add_config_args(p, ["model"])
    add_config_args(p, ["detection"], only=("--max-new-tokens", "--batch-size"))
    add_config_args(p, ["data"], only=("--max-code-tokens", "--keep-comments", "--long-functions",
                                       "--file-functions"))  # fmt: skip
    p.add_argument(
        "--aggregation",
        default=None,
        choices=list(AGGREGATIONS),
        help="how a long function's windows and a file's functions add up to its score (default: what the "
        "detector's run chose on val, else logsumexp, a smooth maximum)",
    )


def detector_folder(args: argparse.Namespace) -> Path | None:
    """The detector folder the :func:`add_scorer_args` flags name: ``--detector``; else, with the embedded model
    (no ``--model``), no ``--vector`` and no ``--answer``, the shipped detector; else None (the bare model's
    answer). Refuses the flags that contradict each other."""
    from pathlib import Path

    from ..detection.probe_detector import SHIPPED_DETECTOR

    if args.answer and (args.detector is not None or args.vector is not None):
        raise UsageError("--answer scores by the bare model's answer: it excludes --detector and --vector")
    if args.detector is not None:
        return Path(args.detector)
    if args.answer or args.vector is not None or given(args, "model.name"):
        if args.adapt == "on":
            raise UsageError("--adapt re-estimates a detector's centre or threshold: use it with the shipped "
                             "detector or --detector (not with --answer, --vector or another --model)")  # fmt: skip
        return None
    if not (SHIPPED_DETECTOR / "detector.json").is_file():
        raise UsageError(
            f"the shipped detector is missing from this installation ({SHIPPED_DETECTOR}); pass --answer for the "
            "bare model's answer, or --detector DIR"
        )
    return SHIPPED_DETECTOR


def probe_detector(spec: ScorerSpec) -> ProbeDetector | None:
    """The probe detector *spec* scores by (:class:`~vulnsteer.detection.probe_detector.ProbeDetector`, loaded
    once for every setting read from it), or None for any other scorer."""
    from ..detection.probe_detector import ProbeDetector, is_probe_detector

    if spec.detector is None or not is_probe_detector(spec.detector):
        return None
    return ProbeDetector.load(spec.detector)


def adapt_mode(args: argparse.Namespace, spec: ScorerSpec, detector: ProbeDetector | None) -> str:
    """``--adapt`` (``on``) or ``--no-adapt`` (``off``) as given; else ``auto`` where the scorer *spec* names adapts
    by default (:func:`detector_adapts`; adapted from its minimum distinct functions: on the leave-one-dataset-out
    folds the adapted threshold transferred better, and 20 functions already place the centre within about a
    quarter of the scores' spread) and ``off`` with any other scorer (the bare or vector-steered model).
    *detector*: *spec*'s probe detector (:func:`probe_detector`), already loaded."""
    if args.adapt is not None:
        return str(args.adapt)
    return "auto" if detector_adapts(spec, detector) else "off"


def detector_adapts(spec: ScorerSpec, detector: ProbeDetector | None) -> bool:
    """Whether the scorer *spec* names adapts by default: a probe detector (*detector*, its
    :func:`probe_detector`), or a steering detector whose gate probe stores its calibration data's vulnerable share
    (the share its adapted threshold flags; one saved before vulnsteer stored it adapts only to a stated
    ``--prevalence``). A folder that is not there is left to the scorer's own check, which names it."""
    from pathlib import Path

    if detector is not None:
        return True
    if spec.detector is None or not Path(spec.detector, "detector.json").is_file():
        return False
    from ..detection.detector import SavedDetector

    adaptation = SavedDetector.load(spec.detector).probe.adaptation
    return adaptation is not None and adaptation.share is not None


def adapt_from(detector: ProbeDetector | None) -> int:
    """Where ``auto`` adaptation starts: the probe *detector*'s ``min_adapt`` (else, a steering detector or none,
    the default minimum)."""
    return MIN_ADAPT if detector is None else int(detector.min_adapt)


def adaptation_options(args: argparse.Namespace, spec: ScorerSpec, detector: ProbeDetector | None) -> dict[str, Any]:
    """The :class:`~vulnsteer.scan.options.ScanOptions` fields of the adaptation flags (``adapt``, ``adapt_from``,
    ``prevalence``) for the scorer *spec* names (:func:`scorer_spec`) and its probe *detector*
    (:func:`probe_detector`: None for any other scorer); a usage error for a prevalence that cannot apply."""
    adapt = adapt_mode(args, spec, detector)
    prevalence = getattr(args, "prevalence", None)
    if prevalence is not None:
        if not 0.0 < prevalence < 1.0:
            raise UsageError(f"--prevalence must be a share between 0 and 1 (exclusive), got {prevalence:g}")
        if adapt == "off":
            raise UsageError(
                "--prevalence adapts a detector to the functions scored: it needs the shipped detector or "
                "--detector, and not --no-adapt"
            )
        if getattr(args, "min_score", None) is not None:
            raise UsageError("--prevalence sets where findings start (the highest SHARE of the functions): drop "
                             "--min-score, or --prevalence")  # fmt: skip
    return {"adapt": adapt, "adapt_from": adapt_from(detector), "prevalence": prevalence}


def reading_options(args: argparse.Namespace, spec: ScorerSpec) -> dict[str, Any]:
    """The :class:`~vulnsteer.scan.options.ScanOptions` fields of the :func:`add_scorer_args` flags on how code is
    read and how a file's functions add up (``keep_comments``, ``aggregation``, ``file_functions``) for *spec*
    (:func:`scorer_spec`)."""
    data = config_from_args(args).data
    return {"keep_comments": data.keep_comments, "aggregation": spec.resolved_aggregation,
            "file_functions": data.file_functions}  # fmt: skip


def scorer_spec(args: argparse.Namespace, explain: bool) -> ScorerSpec:
    """The :class:`~vulnsteer.scan.spec.ScorerSpec` the :func:`add_scorer_args` flags name (checked as
    configuration keys are: an error names the flag); *explain*: also generate the answer text."""
    from pathlib import Path

    from ..scan.spec import ScorerSpec, VectorSteering

    config = config_from_args(args)
    vector = None
    if args.vector is not None:
        positions, unit = str(args.positions), str(args.unit)
        vector = VectorSteering(Path(args.vector), args.strength, tuple(args.layers), positions, unit)
    return ScorerSpec(
        model=config.model,
        vector=vector,
        detector=detector_folder(args),
        allow_model_mismatch=bool(args.allow_model_mismatch),
        explain=explain,
        max_new_tokens=config.detection.max_new_tokens,
        batch_size=config.detection.batch_size,
        max_code_tokens=config.data.max_code_tokens if given(args, "data.max_code_tokens") else None,
        long_functions=config.data.long_functions,
        aggregation=args.aggregation,
    )
