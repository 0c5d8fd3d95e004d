"""``results.json``: one schema for every experiment command (run, sweep, evaluate), and the chosen-settings file.

Top-level keys (schema version 2; a key is absent where a command has nothing to put there):

- ``schema_version``, ``command``, ``status`` (``running``, ``complete``, ``interrupted``), ``config`` (the resolved
  configuration), ``template``, ``sign_convention``, ``environment``, ``model``, ``data``, ``warnings``;
- ``layer_sets``, ``layers``, ``vectors`` (every fitted vector), ``cosine``, ``pca`` (train-split analyses);
- ``val`` (every candidate's validation metrics, per mode), ``selection`` (per mode and target: the choice);
- ``summary``, ``pooled``, ``cross_cwe`` (per mode: the apply engine's rows on the held-out samples);
- ``probes``, ``examples``, ``records`` (the held-out conditions' per-sample records), ``prefix_cache``,
  ``activation_cache``, ``peak_memory``, ``timings_s``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..data.sample import Sample
from ..detection.records import DetectionRecord
from ..io import write_json
from ..lm.model import LoadedModel
from ..lm.prompts import PromptTemplate
from ..stats.metrics import point_metrics
from ..steering.gate import LinearProbe
from ..steering.hooks import SIGN_CONVENTION
from ..steering.vectors import SteeringVector
from .apply import Applied
from .fit import annotate, slug
from .grid import Condition
from .rundir import CHOSEN_NAME, RunDir
from .select import Choice

__all__ = [
    "SCHEMA_VERSION",
    "environment_info",
    "examples",
    "json_ready",
    "load_chosen",
    "load_probes",
    "model_info",
    "new_results",
    "save_chosen",
    "train_code_hashes",
    "val_entries",
]

SCHEMA_VERSION = 2


def environment_info() -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    return {
        "vulnsteer": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def model_info(lm: LoadedModel) -> dict[str, Any]:
    from ..lm.activation_cache import model_key

    return {
        "id": lm.model_id,
        "fingerprint": lm.fingerprint,
        "key": model_key(lm),
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        **lm.extra,
    }


def new_results(
    command: str, config_doc: Mapping[str, Any], lm: LoadedModel, template: PromptTemplate
) -> dict[str, Any]:
    """The header every results.json starts with."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "status": "running",
        "config": dict(config_doc),
        "template": template.to_dict(),
        "sign_convention": SIGN_CONVENTION,
        "environment": environment_info(),
        "model": model_info(lm),
        "warnings": [],
    }


def json_ready(obj: Any) -> Any:
    """Round-trip through JSON to turn tuples/dataclasses into plain data."""
    return json.loads(json.dumps(obj, default=_plain))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def train_code_hashes(samples: Sequence[Sample]) -> list[str]:
    import hashlib

    return sorted({hashlib.sha256(s.code.encode()).hexdigest()[:16] for s in samples})


def save_chosen(
    run: RunDir,
    choices: Mapping[str, Mapping[str, Choice]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    header: Mapping[str, Any],
    conditional: Mapping[str, Mapping[str, Choice]] | None = None,
    probes: Mapping[tuple[str, str], LinearProbe] | None = None,
) -> None:
    """``chosen/chosen.json`` + the vector of every chosen (target, method@pooling) and, for conditional choices,
    their gating probes (and random-gate controls), for ``evaluate --from``.

    Vector files hold every fitted layer (the setting says which are steered), so applying them elsewhere uses
    exactly the vector, and draws exactly the random control, that the run used."""

    def table(by_mode: Mapping[str, Mapping[str, Choice]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mode, by_target in by_mode.items():
            out[mode] = {}
            for target, choice in by_target.items():
                entry = choice.to_dict()
                best = choice.best
                if best is not None:
                    name = f"{slug(target)}-{slug(best.method_key)}.safetensors"
                    annotate(vectors[(target, best.method_key)], run_dir=str(run.path)).save(run.chosen / name)
                    entry["vector"] = name
                    if best.probe is not None:
                        entry["probes"] = _save_probes(run, target, best.probe, probes or {})
                out[mode][target] = entry
        return out

    doc = {"schema_version": SCHEMA_VERSION, **header, "modes": table(choices)}
    if conditional:
        doc["conditional"] = table(conditional)
    write_json(run.chosen / CHOSEN_NAME, json_ready(doc))


def _save_probes(run: RunDir, target: str, key: str, probes: Mapping[tuple[str, str], LinearProbe]) -> dict[str, str]:
    """The gating probe of *target*'s setting and its random-gate control, saved under ``chosen/probes/``."""
    from safetensors.torch import save

    from ..io import atomic_open
    from .grid import POOLED, RANDOM_PROBE

    files = {}
    for name in (key, RANDOM_PROBE + key):
        owner = target if (target, name) in probes else POOLED
        tensors, meta = probes[(owner, name)].to_tensors()
        file = f"probes/{slug(owner)}-{slug(name)}.safetensors"
        with atomic_open(run.chosen / file, "wb") as handle:
            handle.write(save(tensors, metadata=meta))
        files[name] = file
    return files


def load_probes(run_dir: str | Path, entry: Mapping[str, Any], target: str) -> dict[tuple[str, str], LinearProbe]:
    """The probes a conditional choice's entry names, keyed ``(target, key)`` as the engine looks them up."""
    from safetensors import safe_open

    out = {}
    for name, file in (entry.get("probes") or {}).items():
        with safe_open(str(RunDir(run_dir).chosen / file), framework="pt") as handle:
            out[(target, name)] = LinearProbe.from_tensors({"weight": handle.get_tensor("weight")},
                                                          handle.metadata() or {})  # fmt: skip
    return out


def load_chosen(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``chosen/chosen.json``, with a clear error when *run_dir* is not a finished run."""
    path = RunDir(run_dir).chosen / CHOSEN_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --from needs the directory of a finished `vulnsteer run` or `vulnsteer sweep`"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("modes"), dict):
        raise ValueError(
            f"{path}: not a vulnsteer chosen-settings file of schema {SCHEMA_VERSION} (rerun the "
            "experiment with this version)"
        )
    return data


def val_entries(
    conds: Sequence[Condition], records: Mapping[str, Sequence[DetectionRecord]], cwes: Sequence[str]
) -> list[dict[str, Any]]:
    """Every validation condition with its point metrics per CWE and overall (the selection curves' data)."""
    keys = ("balanced_accuracy", "accuracy", "tpr", "fpr", "pair_accuracy", "vulnerable_rate", "auroc")
    out = []
    for cond in conds:
        recs = records.get(cond.key)
        if recs is None:
            continue
        metrics: dict[str, Any] = {}
        for cwe in [*cwes, "overall"]:
            sub = [r.to_prediction() for r in recs if cwe == "overall" or r.cwe == cwe]
            if sub:
                margins = [r.margin for r in recs if r.margin is not None and (cwe == "overall" or r.cwe == cwe)]
                metrics[cwe] = {
                    "n": len(sub),
                    **point_metrics(sub, keys),
                    "mean_margin": sum(margins) / len(margins) if margins else None,
                }
        setting = None if cond.setting is None else cond.setting.to_dict()
        out.append({"condition": cond.to_dict(), "setting": setting, "metrics": metrics})
    return out


def examples(applied: Applied, choices: Mapping[str, Choice], mode: str, split: str, n: int) -> list[dict[str, Any]]:
    """Per CWE, up to *n* samples: the baseline's and the chosen (else best) steered setting's generated text."""
    base = {r.sample_id: r for r in applied.records.get(Condition("baseline", mode, split).key, [])}
    out = []
    for cwe, choice in choices.items():
        steered = next(
            (c for c in applied.conditions if c.mode == mode and c.kind == "steered" and c.vector == cwe), None
        )
        if steered is None or choice.best is None:
            continue
        for r in [r for r in applied.records[steered.key] if r.cwe == cwe][:n]:
            b = base.get(r.sample_id)
            out.append(
                {
                    "cwe": cwe,
                    "sample_id": r.sample_id,
                    "truth": "vulnerable" if r.y_true else "secure",
                    "chosen": choice.chosen,
                    "setting": choice.best.label(),
                    "baseline": b.text if b else None,
                    "baseline_verdict": b.verdict if b else None,
                    "steered": r.text,
                    "steered_verdict": r.verdict,
                }
            )
    return out
