"""The report's answer, in its first lines: did the headline detector beat the baseline, each of its controls and
the length-only control; and, where the adapted probe was applied, whether it or the unadapted probe transferred.

"Beat" is decided the way the lead table decides it: a paired change whose 95% CI lies above 0 with McNemar's
p < 0.05 (against the baseline, and against each control on the same samples). The length-only control is a probe
result without paired predictions, so there "beat" means the detector's balanced-accuracy CI lies above the length
control's balanced accuracy. A probe that does not rank better than its length-only control gets a caution line.

>>> from vulnsteer.experiment.tables import Change, LeadRow, LeadTable, MetricBlock
>>> rows = (LeadRow("baseline", "", MetricBlock(balanced_accuracy=0.5)),
...         LeadRow("conditional", "", MetricBlock(balanced_accuracy=0.8, balanced_accuracy_ci=(0.7, 0.9)),
...                 0.3, (0.1, 0.5), 0.001, family="conditional"),
...         LeadRow("random_gate", "", MetricBlock(balanced_accuracy=0.52), 0.02, (-0.1, 0.1), 0.8,
...                 family="conditional", control_of="conditional", versus=Change(0.28, (0.1, 0.45), 0.002)))
>>> verdict = mode_verdict("logit", LeadTable("test", rows), length=None)
>>> verdict.beat_all
True
>>> print(verdict.line())
**Answer (logit mode, TEST)**: conditional steering **beat** the baseline (balanced accuracy 0.800 vs 0.500, \
Δ +0.300 [+0.10, +0.50], p=0.001) and **beat** the random gate (0.520; Δ +0.280 [+0.10, +0.45], p=0.002).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..detection.probe_table import ProbeResult
from ..experiment.results import Results
from ..experiment.tables import LeadRow, LeadTable, MetricBlock
from ..stats.compare import significant_gain

__all__ = [
    "ModeVerdict",
    "answer_lines",
    "headline",
    "length_control",
    "mode_verdict",
    "title",
    "transfer_line",
    "verdicts_of",
]

#: how a lead-table row is named in a sentence (anything else: its name with spaces)
ROW_WORDS = {
    "conditional": "conditional steering",
    "constant": "constant steering",
    "random_gate": "the random gate",
    "gate_control": "the random gate",
    "random_vector": "the random vector",
    "vector_control": "the random behaviour vector",
    "control": "the random-direction control",
    "constant_control": "its random-direction control",
    "probe": "the gating probe",
    "adapted": "the adapted probe",
    "calibrated": "the calibrated baseline",
    "prompt": "the best prompt",
}

SPLIT_WORDS = {"test": "TEST", "val": "VAL", "all": "every sample"}


def _words(name: str) -> str:
    return ROW_WORDS.get(name, name.replace("_", " "))


def _ba(block: MetricBlock) -> str:
    return "–" if block.balanced_accuracy is None else f"{block.balanced_accuracy:.3f}"


def _change(delta: float, ci: tuple[float, float], p_value: float) -> str:
    """``Δ +0.167 [+0.04, +0.29], p=0.344`` and, where the bootstrap CI and McNemar's test disagree, why it is not
    counted as beaten (both must agree)."""
    said = f"Δ {delta:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}], p={p_value:.3g}"
    if ci[0] > 0 and not significant_gain(ci, p_value):
        said += ": the CI lies above 0 but McNemar's test (on the answers that changed) does not confirm it"
    return said


@dataclass(frozen=True)
class Comparison:
    """The headline detector against one reference: whether it beat it, and the numbers that say so."""

    reference: str
    beat: bool
    numbers: str

    def words(self) -> str:
        return f"{'**beat**' if self.beat else 'did **not** beat'} {self.reference} ({self.numbers})"


@dataclass(frozen=True)
class ModeVerdict:
    """One mode's answer: the headline detector (the row the controls control) against the baseline, each of its
    controls and the length-only control."""

    mode: str
    split: str
    detector: str
    comparisons: tuple[Comparison, ...]

    @property
    def beat_all(self) -> bool:
        return all(c.beat for c in self.comparisons)

    @property
    def beat_baseline(self) -> bool:
        return bool(self.comparisons) and self.comparisons[0].beat

    def line(self) -> str:
        said = [c.words() for c in self.comparisons]
        joined = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
        where = SPLIT_WORDS.get(self.split, self.split)
        return f"**Answer ({self.mode} mode, {where})**: {_words(self.detector)} {joined}."


def length_control(probes: Sequence[ProbeResult]) -> ProbeResult | None:
    """The length-only control pooled over CWEs (``cwe == "overall"``), if the run fitted one."""
    return next((p for p in probes if p.detector == "length" and p.cwe == "overall" and not p.is_skipped), None)


def _headline_row(rows: Sequence[LeadRow]) -> LeadRow | None:
    """The table's headline detector (conditional steering in a default run); in a results file older than the
    flag, the detector with the most controls (the last of equals). None where no row has controls."""
    flagged = next((r for r in rows if r.headline), None)
    if flagged is not None:
        return flagged
    controls = {r.name: sum(1 for c in rows if c.control_of == r.name) for r in rows}
    ranked = [(n, i, r) for i, r in enumerate(rows) if (n := controls[r.name])]
    return max(ranked, key=lambda t: (t[0], t[1]))[2] if ranked else None


def mode_verdict(mode: str, table: LeadTable, length: ProbeResult | None) -> ModeVerdict | None:
    """*mode*'s answer from its lead table (None where it has no headline detector: nothing to answer)."""
    head = _headline_row(table.rows)
    base = table.row("baseline")
    if head is None or base is None:
        return None
    comparisons = [
        Comparison(
            "the baseline",
            significant_gain(head.delta_ci, head.p_value),
            f"balanced accuracy {_ba(head.metrics)} vs {_ba(base.metrics)}, "
            + _change(head.delta, head.delta_ci, head.p_value),
        )
    ]
    for row in table.rows:
        if row.control_of != head.name or row.versus is None:
            continue
        v = row.versus
        comparisons.append(
            Comparison(
                _words(row.name),
                significant_gain(v.delta_ci, v.p_value),
                f"{_ba(row.metrics)}; {_change(v.delta, v.delta_ci, v.p_value)}",
            )
        )
    if length is not None:
        ci = head.metrics.balanced_accuracy_ci
        beat = ci is not None and ci[0] > length.test_balanced_accuracy
        comparisons.append(
            Comparison(
                "the length-only control",
                beat,
                f"{length.test_balanced_accuracy:.3f}; "
                + ("its CI lies above it" if beat else "the detector's CI does not lie above it"),
            )
        )
    return ModeVerdict(mode, table.split, head.name, tuple(comparisons))


def headline(verdicts: Sequence[ModeVerdict]) -> str:
    """The report title's answer: ``conditional steering did not beat the baseline`` (per mode where they differ).

    >>> v = lambda mode, beat: ModeVerdict(mode, "test", "conditional", (Comparison("the baseline", beat, ""),))
    >>> headline([v("logit", True), v("generation", False)])
    'conditional steering beat the baseline in logit mode, not in generation mode'
    >>> headline([v("logit", False), v("generation", False)])
    'conditional steering did not beat the baseline'
    """
    if not verdicts:
        return ""
    name = _words(verdicts[0].detector)
    beat = [v.mode for v in verdicts if v.beat_baseline]
    if len(beat) == len(verdicts):
        return f"{name} beat the baseline"
    if not beat:
        return f"{name} did not beat the baseline"
    lost = [v.mode for v in verdicts if not v.beat_baseline]
    return f"{name} beat the baseline in {', '.join(beat)} mode, not in {', '.join(lost)} mode"


def _flagged(block: MetricBlock) -> str:
    share = block.vulnerable_rate
    return "–" if share is None else f"{share:.0%}"


def _above_chance(block: MetricBlock) -> bool:
    ci = block.balanced_accuracy_ci
    return ci is not None and ci[0] > 0.5


def _ci(block: MetricBlock) -> str:
    ci = block.balanced_accuracy_ci
    return _ba(block) if ci is None else f"{_ba(block)} [{ci[0]:.2f}, {ci[1]:.2f}]"


def transfer_line(table: LeadTable, left_out: bool) -> str | None:
    """The probe unadapted and adapted to the held-out inputs (their unlabelled states): balanced accuracy with
    its CI and whether it lies above chance, the share flagged beside the true vulnerable share, which one did
    better; on *left_out* data (``evaluate --from``) that is which one transferred. None without both rows."""
    plain, adapted = table.row("probe"), table.row("adapted")
    if plain is None or adapted is None:
        return None
    m = plain.metrics
    said = []
    for row in (plain, adapted):
        chance = "above chance" if _above_chance(row.metrics) else "**not** above chance"
        said.append(f"{_words(row.name)} {_ci(row.metrics)} ({chance}), flagging {_flagged(row.metrics)}")
    truth = "" if not m.n or m.n_vulnerable is None else f" of inputs ({m.n_vulnerable / m.n:.0%} truly vulnerable)"
    better = _better(plain, adapted, left_out)
    auroc = ""
    if m.auroc is not None:
        ci = "" if m.auroc_ci is None else f" [{m.auroc_ci[0]:.2f}, {m.auroc_ci[1]:.2f}]"
        ranks = "" if m.auroc_ci is None else (", above chance" if m.auroc_ci[0] > 0.5 else ", **not** above chance")
        auroc = f"; both rank at AUROC {m.auroc:.3f}{ci}{ranks} (adapting moves the threshold only)"
    where = (
        "Transfer to the left-out data"
        if left_out
        else f"Probe, unadapted vs adapted ({SPLIT_WORDS.get(table.split, table.split)})"
    )
    return f"**{where}**: balanced accuracy of {said[0]}; of {said[1]}{truth}: {better}{auroc}."


def _better(plain: LeadRow, adapted: LeadRow, left_out: bool) -> str:
    a, p = adapted.metrics.balanced_accuracy, plain.metrics.balanced_accuracy
    verb = "transferred" if left_out else "did"
    if a is None or p is None or round(a, 3) == round(p, 3):  # (as printed: no winner by a float's last digits)
        return f"neither {verb} better (same balanced accuracy)"
    return f"the {'adapted' if a > p else 'unadapted'} probe {verb} better"


def title(results: Results) -> str:
    """What the report's title says after the command: the headline detector's verdict
    (:func:`headline`), else which probe, unadapted or adapted, did better (on left-out data: transferred), and
    whether either lies above chance; "" where the lead table has neither.

    >>> from vulnsteer.experiment.tables import LeadRow, LeadTable, MetricBlock
    >>> rows = (LeadRow("probe", "", MetricBlock(balanced_accuracy=0.55, balanced_accuracy_ci=(0.48, 0.62))),
    ...         LeadRow("adapted", "", MetricBlock(balanced_accuracy=0.6, balanced_accuracy_ci=(0.53, 0.67))))
    >>> title(Results(command="evaluate --from", lead={"logit": LeadTable("all", rows)}))
    'the adapted probe transferred better (balanced accuracy above chance: the adapted probe)'
    """
    said = headline(verdicts_of(results))
    table = next(iter(results.lead.values()), None)
    plain, adapted = (None, None) if table is None else (table.row("probe"), table.row("adapted"))
    if said or plain is None or adapted is None:
        return said
    above = [_words(r.name) for r in (plain, adapted) if _above_chance(r.metrics)]
    chance = f"balanced accuracy above chance: {' and '.join(above) if above else 'neither'}"
    return f"{_better(plain, adapted, results.command.startswith('evaluate'))} ({chance})"


#: how far a probe's AUROC must lie above its length-only control's to count as reading more than length
LENGTH_MARGIN = 0.05


def _caution(probe: LeadRow | None, length: ProbeResult | None) -> str | None:
    """A caution where the gating probe does not clearly beat its length-only control (AUROC by
    :data:`LENGTH_MARGIN`, and balanced accuracy)."""
    if probe is None or length is None or probe.metrics.auroc is None or length.test_auroc is None:
        return None
    auroc, ba = probe.metrics.auroc, probe.metrics.balanced_accuracy
    if auroc >= length.test_auroc + LENGTH_MARGIN and ba is not None and ba > length.test_balanced_accuracy:
        return None
    return (
        f"**Caution**: the gating probe (AUROC {auroc:.3f}, balanced accuracy {_ba(probe.metrics)}) does not clearly "
        f"beat its length-only control (AUROC {length.test_auroc:.3f}, balanced accuracy "
        f"{length.test_balanced_accuracy:.3f}): it may be reading the code's length, not its weakness."
    )


def answer_lines(results: Results) -> list[str]:
    """The lines under the report's title: one answer per mode, the transfer line of the probe and the adapted
    probe (on left-out data, or on test), and a caution where the gating probe does not beat its length control."""
    length = length_control(results.probes)
    lines = [verdict.line() for verdict in verdicts_of(results)]
    table = next(iter(results.lead.values()), None)
    if table is not None:
        transfer = transfer_line(table, left_out=results.command.startswith("evaluate"))
        caution = _caution(table.row("probe"), length)
        lines += [line for line in (transfer, caution) if line is not None]
    return [f"- {line}" for line in lines]


def verdicts_of(results: Results) -> list[ModeVerdict]:
    """Every mode's verdict (for the title)."""
    length = length_control(results.probes)
    return [v for mode, t in results.lead.items() if (v := mode_verdict(mode, t, length)) is not None]
