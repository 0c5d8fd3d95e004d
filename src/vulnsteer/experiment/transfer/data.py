"""The transfer protocol's datasets: each of ``data.paths`` loaded, cleaned, truncated and split on its own (with
its own pair cap), and its unsteered activations read through the activation cache.

Within a training dataset, probes are fitted on its ``train`` and ``test`` splits and thresholded and calibrated on
its ``val`` split; a left-out dataset is scored whole (every split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...config import DataSection, ExperimentConfig
from ...config.design import ProbeDesign
from ...data.sample import Sample, dataset_hash
from ...detection.probe import ProbeData, states_matrix
from ...lm.activation_cache import ActivationCache
from ...lm.activations import Activations
from ...lm.model import LoadedModel
from ...lm.prompts import PROBE_PROMPTS
from ..prepare import load_dataset, prepare_data

__all__ = [
    "FIT_SPLITS",
    "TransferDataset",
    "dataset_names",
    "dataset_sections",
    "load_transfer_data",
    "with_activations",
]

#: The splits of a training dataset a probe is fitted on (its val split chooses thresholds and calibrations).
FIT_SPLITS: tuple[str, ...] = ("train", "test")


def dataset_names(config: ExperimentConfig) -> list[str]:
    """A short name per ``data.paths`` entry (``builtin``, or the file or folder name), refusing two alike."""
    names = [Path(p).stem if p != "builtin" else "builtin" for p in config.data.paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"data.paths: two datasets are named {twice[0]!r}; each needs its own file or folder name")
    return names


@dataclass(frozen=True)
class TransferDataset:
    """One dataset of the protocol: its splits (made by its own groups) and, once extracted, its activations under
    each prompt template a design reads (by template name; every sample, splits in order ``train``, ``val``,
    ``test``)."""

    name: str
    source: str
    splits: Mapping[str, tuple[Sample, ...]]
    notes: Mapping[str, Any]
    cap: int | None = None
    activations: Mapping[str, Activations] = field(default_factory=dict)

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(s for split in ("train", "val", "test") for s in self.splits.get(split, ()))

    def indices(self, splits: Sequence[str]) -> list[int]:
        """Positions in :attr:`samples` of the samples of *splits*."""
        return [i for i, s in enumerate(self.samples) if s.id in self._ids(splits)]

    def _ids(self, splits: Sequence[str]) -> set[str]:
        return {s.id for split in splits for s in self.splits.get(split, ())}

    @property
    def labels(self) -> list[int]:
        return [s.y for s in self.samples]

    @property
    def hash(self) -> str:
        return dataset_hash(list(self.samples))

    def acts(self, template: str | None = None) -> Activations:
        """The activations under the prompt *template* (None: any, for what does not depend on it: the code's
        token counts)."""
        if template is None and self.activations:
            return next(iter(self.activations.values()))
        if template is None or template not in self.activations:
            raise RuntimeError(f"{self.name}: activations under the prompt {template!r} not extracted")
        return self.activations[template]

    def probe_data(self, design: ProbeDesign, splits: Sequence[str] | None = None) -> ProbeData:
        """The states *design* reads (under its prompt template) of the samples of *splits* (every sample when
        None), as one part of a fit."""
        acts, reads = self.acts(design.template), design.reads
        rows = list(range(len(self.samples))) if splits is None else self.indices(splits)
        idx = torch.as_tensor(rows, dtype=torch.long)
        states = {(layer, p): acts.get(p, layer).index_select(0, idx) for layer, p in reads}
        samples = [self.samples[i] for i in rows]
        lengths = None if acts.code_tokens is None else acts.code_tokens.index_select(0, idx).float()
        return ProbeData(
            states_matrix(states, reads),
            [s.y for s in samples],  # type: ignore[arg-type]
            lengths,
            tuple(s.pair_id for s in samples),
            self.name,
            tuple(s.code for s in samples),
        )


def dataset_sections(config: ExperimentConfig) -> list[DataSection]:
    """One ``[data]`` section per dataset of ``data.paths`` (its path, format and pair cap: ``transfer.
    max_pairs_per_cwe``, else ``data.max_pairs_per_cwe``); refuses fewer than three datasets (one left out, one left
    out of the rest for the nested choice, one to fit on), two of one name, a cap list of another length, or a
    ``transfer.folds`` name that is none of theirs."""
    d, caps = config.data, config.transfer.max_pairs_per_cwe
    if len(d.paths) < 3:
        raise ValueError(
            f"data.paths: the transfer protocol needs at least 3 datasets (got {len(d.paths)}): one left out, one "
            "left out of the rest for the nested choice, and one to fit on"
        )
    if caps and len(caps) != len(d.paths):
        raise ValueError(f"transfer.max_pairs_per_cwe: {len(caps)} caps for {len(d.paths)} data.paths")
    names = dataset_names(config)
    unknown = [n for n in config.transfer.folds if n not in names]
    if unknown:
        known = ", ".join(names)
        raise ValueError(f"transfer.folds: no dataset named {unknown[0]!r} in data.paths (its names: {known})")
    formats = d.formats or (None,) * len(d.paths)
    return [
        dataclasses.replace(
            d,
            path=path,
            format=None if fmt == "builtin" else fmt,
            paths=(),
            formats=(),
            max_pairs_per_cwe=caps[k] if caps else d.max_pairs_per_cwe,
        )
        for k, (path, fmt) in enumerate(zip(d.paths, formats, strict=True))
    ]


def load_transfer_data(config: ExperimentConfig, tokenizer: Any | None, progress: bool = True) -> list[TransferDataset]:
    """Every dataset of ``data.paths`` prepared on its own (:func:`dataset_sections`)."""
    out = []
    for name, one in zip(dataset_names(config), dataset_sections(config), strict=True):
        prepared = prepare_data(one, tokenizer, samples=load_dataset(one), progress=progress, require=("train", "val"))
        splits = {split: tuple(prepared.samples(split)) for split in ("train", "val", "test")}
        out.append(TransferDataset(name, prepared.source, splits, prepared.notes, one.max_pairs_per_cwe))
    return out


def with_activations(
    data: Sequence[TransferDataset],
    lm: LoadedModel,
    cache: ActivationCache,
    layers: Sequence[int],
    poolings: Sequence[str],
    batch_size: int,
    progress: bool = True,
    templates: Sequence[str] = ("default",),
) -> list[TransferDataset]:
    """Each dataset with its activations at *layers* and *poolings* under each prompt of *templates* (names of
    :data:`~vulnsteer.lm.prompts.PROBE_PROMPTS`; through the cache: extracted once)."""
    out = []
    for ds in data:
        found = {}
        for name in templates:
            found[name], _ = cache.load_or_extract(
                lm, list(ds.samples), layers, list(poolings), batch_size=batch_size, template=PROBE_PROMPTS[name],
                progress=progress, desc=f"activations ({name} prompt)" if name != "default" else "activations",
            )  # fmt: skip
        out.append(dataclasses.replace(ds, activations=found))
    return out
