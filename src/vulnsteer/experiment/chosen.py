"""``RUN/chosen/``: what a run chose on validation, kept so ``evaluate --from`` applies it unchanged elsewhere.

``chosen/chosen.json`` holds a header (the run's model, configuration, prompt template, control seed, the hashes
of its training code, how it adds up a sample's pieces) and, per detector family that keeps its choices, that
family's entry (for the setting families: per mode and target, the choice and the files of its vector and gating
probes, saved beside it). Files of schema 2 (``modes`` for constant steering, ``conditional`` for conditional
steering) are read too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.defaults import DEFAULT_AGGREGATION
from ..data.sample import Sample
from ..io import JsonObject, json_ready, write_json
from ..stats.aggregate import check_aggregation
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector
from .fit import annotate, slug
from .grid import POOLED, RANDOM_PROBE
from .header import ModelInfo
from .results import SCHEMA_VERSION
from .rundir import CHOSEN_DIR, CHOSEN_NAME
from .select import Choice

__all__ = [
    "ChosenFile",
    "load_chosen",
    "load_probes",
    "save_choice_files",
    "save_chosen",
    "train_code_hashes",
]

#: What schema 2 called the entries of the two families that kept their choices.
_V2_FAMILIES = {"modes": "constant", "conditional": "conditional"}


@dataclass(frozen=True)
class ChosenFile:
    """A run's ``chosen/chosen.json``: its header, and per family the entry that family saved (per mode: every
    family keys its entry by mode, so ``evaluate --from`` applies the modes asked for)."""

    path: Path
    model: ModelInfo
    config: JsonObject
    template: JsonObject
    control_seed: int
    train_code_hashes: frozenset[str] = frozenset()
    families: Mapping[str, JsonObject] = field(default_factory=dict)
    #: how the run adds up a sample's pieces (chosen on its val split; the default for runs made before there was a
    #: choice)
    aggregation: str = DEFAULT_AGGREGATION

    @property
    def modes(self) -> list[str]:
        """The modes some family chose for."""
        return list(dict.fromkeys(mode for entry in self.families.values() for mode in entry))


def train_code_hashes(samples: Sequence[Sample]) -> list[str]:
    """Short hashes of the training code (``evaluate --from`` counts the samples it shares with them)."""
    return sorted({hashlib.sha256(s.code.encode()).hexdigest()[:16] for s in samples})


def save_chosen(run: Path, header: JsonObject, families: Mapping[str, JsonObject]) -> None:
    """Write ``chosen/chosen.json``: *header* and each family's entry (its files are already saved)."""
    doc = {"schema_version": SCHEMA_VERSION, **header, "families": dict(families)}
    write_json(run / CHOSEN_DIR / CHOSEN_NAME, json_ready(doc))


def save_choice_files(
    run: Path,
    target: str,
    choice: Choice,
    vectors: Mapping[tuple[str, str], SteeringVector],
    probes: Mapping[tuple[str, str], Probe],
) -> dict[str, Any]:
    """A choice's ``chosen.json`` entry, with its vector (every fitted layer: the setting says which are steered,
    so applying it elsewhere uses exactly the vector, and draws exactly the random control, the run used) and,
    for a gated setting, its gating probe and random-gate control saved under ``chosen/``."""
    entry = choice.to_dict()
    best = choice.best
    if best is None:
        return entry
    name = f"{slug(target)}-{slug(best.method_key)}.safetensors"
    annotate(vectors[(target, best.method_key)], run_dir=str(run)).save(run / CHOSEN_DIR / name)
    entry["vector"] = name
    if best.probe is not None:
        entry["probes"] = _save_probes(run, target, best.probe, probes)
    return entry


def _save_probes(run: Path, target: str, key: str, probes: Mapping[tuple[str, str], Probe]) -> dict[str, str]:
    """The gating probe of *target*'s setting and its random-gate control, saved under ``chosen/probes/``."""
    files = {}
    for name in (key, RANDOM_PROBE + key):
        owner = target if (target, name) in probes else POOLED
        file = f"probes/{slug(owner)}-{slug(name)}.safetensors"
        probes[(owner, name)].save(run / CHOSEN_DIR / file)
        files[name] = file
    return files


def load_probes(run: Path, entry: JsonObject, target: str) -> dict[tuple[str, str], Probe]:
    """The probes a gated choice's entry names, keyed ``(target, key)`` as the engine looks them up."""
    files = entry.get("probes") or {}
    return {(target, name): Probe.load(Path(run) / CHOSEN_DIR / file) for name, file in files.items()}


def load_chosen(run_dir: str | Path) -> ChosenFile:
    """A run's ``chosen/chosen.json`` (schema 2 or 3), with a clear error when *run_dir* is not a finished run."""
    path = Path(run_dir) / CHOSEN_DIR / CHOSEN_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --from needs the directory of a finished `vulnsteer run` or `vulnsteer sweep`"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    version = data.get("schema_version")
    if version == 2 and isinstance(data.get("modes"), dict):
        families = {name: data[key] for key, name in _V2_FAMILIES.items() if isinstance(data.get(key), dict)}
    elif version == SCHEMA_VERSION and isinstance(data.get("families"), dict):
        families = dict(data["families"])
    else:
        raise ValueError(
            f"{path}: not a vulnsteer chosen-settings file of schema 2 or {SCHEMA_VERSION} (schema "
            f"{version!r}; rerun the experiment with this version)"
        )
    model = ModelInfo.from_json(data.get("model"), str(path))
    if model is None:
        raise ValueError(f"{path}: no model in the chosen-settings file")
    return ChosenFile(
        path,
        model,
        dict(data.get("config") or {}),
        dict(data.get("template") or {}),
        int(data["control_seed"]),
        frozenset(data.get("train_code_hashes") or ()),
        families,
        check_aggregation(str(data.get("aggregation") or DEFAULT_AGGREGATION), f"{path}: aggregation"),
    )
