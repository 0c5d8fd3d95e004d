"""Report plots (matplotlib PNGs), drawn from typed results only; :func:`report_plots` makes every one.

- ``val_curves_<mode>_<unit>.png``: balanced accuracy vs strength per CWE on the **validation** split (the
  selection curves), one line per steered setting (vector, layer set, gate), each with its own legend entry and
  style: steered solid, its random vector control dashed, its random gate control dotted; the baseline grey;
- ``layer_strength_<mode>_<method>.png``: layer set x strength heatmap of the change vs baseline (validation);
- ``cross_cwe_<mode>.png``: vector of CWE A on the samples of CWE B, change vs baseline (test, or the other
  dataset for ``evaluate --from``; a second family with such a matrix gets ``cross_cwe_<family>_<mode>.png``);
- ``margins_<mode>.png``: the answer margins by class of the baseline and the headline detectors (test);
- ``cosine_<method>.png``: cosine similarity of the per-CWE vectors, one panel per layer;
- ``pca_<pooling>.png``: training activations of each CWE on their first two principal components.

A plot that carries no information is not drawn (and so not linked): a change-vs-baseline grid or set of curves
that is zero everywhere, a layer x strength heatmap with a single layer set (the curves show the same numbers), a
cosine matrix of a single vector. Every title is wrapped until it fits its figure.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..experiment.grid import Setting
from ..experiment.results import Results, ValEntry
from ..experiment.tables import CrossCwe, PointMetrics
from ..io import atomic_open

__all__ = [
    "plot_cosines",
    "plot_cross_cwe",
    "plot_layer_strength",
    "plot_margins",
    "plot_pca",
    "plot_val_curves",
    "report_plots",
]

PLOT_DIR = "plots"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, width: float = 4.0, height: float = 3.2, cols: int = 3) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _fits(fig: Any, text: Any, renderer: Any) -> bool:
    box, frame = text.get_window_extent(renderer), fig.bbox
    return bool(box.x0 >= frame.x0 - 0.5 and box.x1 <= frame.x1 + 0.5)


def fit_titles(fig: Any) -> None:
    """Wrap the figure's title and every panel's title onto more lines until each lies inside the figure."""
    texts = [t for t in (*fig.texts, *(ax.title for ax in fig.axes)) if t.get_text()]
    for _ in range(2):  # a wrapped title can move the panels (constrained layout): check again after a draw
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for text in texts:
            words = " ".join(text.get_text().split())
            width = len(words)
            while not _fits(fig, text, renderer) and width > 12:
                width = int(width * 0.8)
                text.set_text(textwrap.fill(words, width))


def _save(fig: Any, out_dir: Path, name: str) -> str:
    plt = _pyplot()
    fit_titles(fig)
    path = out_dir / PLOT_DIR / name
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=90)
    plt.close(fig)
    return f"{PLOT_DIR}/{name}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _steered_entries(entries: Sequence[ValEntry]) -> list[ValEntry]:
    """The own-vector steered entries and their controls (a setting, each CWE's own vector)."""
    return [e for e in entries if e.condition.setting is not None and e.condition.vector is None]


def _setting(entry: ValEntry) -> Setting:
    assert entry.condition.setting is not None
    return entry.condition.setting


def _baseline(entries: Sequence[ValEntry]) -> Mapping[str, PointMetrics]:
    return next(
        (e.metrics for e in entries if e.condition.role == "baseline" and e.condition.template == "default"), {}
    )


def _ba(metrics: Mapping[str, PointMetrics], cwe: str) -> float:
    found = metrics.get(cwe)
    value = None if found is None else found.balanced_accuracy
    return math.nan if value is None else float(value)


def _line_name(setting: Setting) -> str:
    """The steered setting a curve follows, strength aside (its vector, layers, steered positions and gate)."""
    layers = ",".join(map(str, setting.layers))
    gate = f", gated by {setting.probe} ({setting.gate})" if setting.gated else ""
    return f"{setting.method}@{setting.pooling} L{layers} (steer {setting.positions}{gate})"


#: How each role's curve is drawn and named in the legend (the setting's name filled in).
ROLE_LINES: Mapping[str, tuple[str, float, str]] = {
    "steered": ("o-", 1.0, "steered {}"),
    "control": ("x--", 0.6, "random vector control of {}"),
    "gate_control": ("s:", 0.6, "random gate control of {}"),
}

ROLE_ORDER = {role: i for i, role in enumerate(ROLE_LINES)}


def _all_zero(values: Sequence[float | None]) -> bool:
    """Whether *values* carry nothing: each is missing, NaN or zero."""
    return all(v is None or math.isnan(v) or abs(v) < 1e-12 for v in values)


def _legend_below(fig: Any, ax: Any) -> None:
    """*ax*'s legend under the panels, in as many columns as its longest label allows, the figure made taller by
    its rows (so no panel shrinks to make room)."""
    handles, labels = ax.get_legend_handles_labels()
    width = fig.get_figwidth()
    cols = max(1, min(3, int(width / (0.6 + 0.06 * max(map(len, labels), default=1)))))
    fig.set_figheight(fig.get_figheight() + 0.2 * math.ceil(len(labels) / cols))
    fig.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=cols)


def plot_val_curves(results: Results, out_dir: Path, mode: str) -> list[str]:
    """Balanced accuracy vs strength per CWE on VAL, one figure per strength unit (strength 0 = the baseline);
    a unit whose every curve sits on the baseline is not drawn."""
    entries = results.val.get(mode, ())
    cwes = [*results.cwes, "overall"]
    base = _baseline(entries)
    names = []
    for unit in dict.fromkeys(_setting(e).unit for e in _steered_entries(entries)):
        lines: dict[tuple[str, str], list[tuple[float, Mapping[str, PointMetrics]]]] = {}
        for e in _steered_entries(entries):
            setting = _setting(e)
            if setting.unit == unit and e.condition.role in ROLE_LINES:
                line = lines.setdefault((_line_name(setting), e.condition.role), [(0.0, base)])
                line.append((float(setting.strength), e.metrics))
        scored = [m for line in lines.values() for _, m in line]
        if _all_zero([_ba(m, cwe) - (_ba(base, cwe) if cwe in base else 0.0) for m in scored for cwe in cwes]):
            continue
        fig, axes = _grid(len(cwes))
        colours: dict[str, object] = {}
        for ax, cwe in zip(axes, cwes):
            for (name, role), points in sorted(lines.items(), key=lambda item: (item[0][0], ROLE_ORDER[item[0][1]])):
                pts = sorted((s, _ba(m, cwe)) for s, m in points)
                style, alpha, label = ROLE_LINES[role]
                (handle,) = ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    color=colours.get(name),
                    ms=3,
                    lw=1,
                    alpha=alpha,
                    label=label.format(name),
                )
                colours.setdefault(name, handle.get_color())
            if cwe in base:
                ax.axhline(_ba(base, cwe), color="grey", lw=1.5, label="baseline (no steering)")
            ax.axhline(0.5, color="black", lw=0.5, ls=":")
            ax.set(title=cwe, ylim=(0, 1), xlabel=f"strength ({unit})", ylabel="balanced accuracy (val)")
        _legend_below(fig, axes[0])
        fig.suptitle(
            f"{mode} mode, VALIDATION split (selection curves): steered solid, random vector control dashed, "
            "random gate control dotted"
        )
        names.append(_save(fig, out_dir, f"val_curves_{mode}_{unit}.png"))
    return names


def _heatmap(
    ax: Any,
    values: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    vmin: float,
    vmax: float,
    cmap: str = "RdBu",
    digits: int = 2,
) -> Any:
    import numpy as np

    grid = np.array([[math.nan if v is None else v for v in line] for line in values], dtype=float)
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                dark = abs(v - (vmin + vmax) / 2) > 0.3 * (vmax - vmin)
                ax.text(
                    j,
                    i,
                    f"{v:+.{digits}f}" if vmin < 0 else f"{v:.{digits}f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if dark else "black",
                )
    return image


def _heatmap_row(setting: Setting) -> str:
    """A layer x strength heatmap's row: the layer set, and for a gated setting its gate (one row per gate, so
    settings gated by different probes at the same layers never share a cell)."""
    layers = "L" + ",".join(map(str, setting.layers))
    return f"{layers} gated by {setting.probe} ({setting.gate})" if setting.gated else layers


def plot_layer_strength(results: Results, out_dir: Path, mode: str) -> list[str]:
    """Layer set (and gate) x strength heatmap (VAL, Δ balanced accuracy vs baseline) per CWE, per vector method;
    not drawn with a single row or a grid of zeros."""
    entries = [e for e in _steered_entries(results.val.get(mode, ())) if e.condition.role == "steered"]
    base = _baseline(results.val.get(mode, ()))
    cwes = [*results.cwes, "overall"]
    names = []
    groups = dict.fromkeys((_setting(e).method, _setting(e).pooling, _setting(e).positions) for e in entries)
    for method, pooling, steer in groups:
        chosen = [
            e
            for e in entries
            if (_setting(e).method, _setting(e).pooling, _setting(e).positions) == (method, pooling, steer)
        ]
        rows = list(dict.fromkeys(_heatmap_row(_setting(e)) for e in chosen))
        if len(rows) < 2:
            continue  # one row: the val curves show the same numbers
        cols = sorted(dict.fromkeys((_setting(e).unit, float(_setting(e).strength)) for e in chosen))
        grids: dict[str, list[list[float | None]]] = {}
        for cwe in cwes:
            values: list[list[float | None]] = [[None] * len(cols) for _ in rows]
            for e in chosen:
                setting = _setting(e)
                i = rows.index(_heatmap_row(setting))
                j = cols.index((setting.unit, float(setting.strength)))
                values[i][j] = _ba(e.metrics, cwe) - _ba(base, cwe)
            grids[cwe] = values
        if _all_zero([v for values in grids.values() for line in values for v in line]):
            continue
        fig, axes = _grid(len(cwes))
        image = None
        for ax, (cwe, values) in zip(axes, grids.items()):
            image = _heatmap(ax, values, rows, [f"{s:g} {u[:3]}" for u, s in cols], vmin=-0.5, vmax=0.5)
            ax.set_title(cwe, fontsize=9)
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.6, label="Δ balanced accuracy vs baseline (val)")
        fig.suptitle(f"{mode} mode, VALIDATION split: {method}@{pooling}, steering {steer}")
        names.append(_save(fig, out_dir, _safe(f"layer_strength_{mode}_{method}_{pooling}_{steer}.png")))
    return names


def plot_cross_cwe(cross: CrossCwe, out_dir: Path, name: str, title: str) -> str | None:
    """Heatmap of the cross-CWE matrix (rows: vector, columns: samples)."""
    if not cross.vectors or not cross.targets or _all_zero([v for line in cross.delta_balanced_accuracy for v in line]):
        return None
    fig, axes = _grid(
        1, width=max(5.5, 2.5 + 0.8 * len(cross.targets)), height=max(3.5, 1.8 + 0.5 * len(cross.vectors))
    )
    rows = [v if cross.chosen.get(v) == "steered" else f"{v}*" for v in cross.vectors]
    image = _heatmap(axes[0], cross.delta_balanced_accuracy, rows, cross.targets, vmin=-0.5, vmax=0.5)
    axes[0].set(xlabel=f"samples ({cross.split})", ylabel="vector at its best val setting\n(* = baseline won on val)")
    fig.colorbar(image, ax=axes[0], label="Δ balanced accuracy vs baseline")
    axes[0].set_title(title, fontsize=9)
    return _save(fig, out_dir, name)


def plot_cosines(results: Results, out_dir: Path) -> list[str]:
    """Cosine similarity of the per-CWE vectors (train), one panel per layer, one figure per method."""
    names = []
    for family in results.families.values():
        for method_key, block in family.cosine.items():
            layers = list(block.layers)
            if len(block.cwes) < 2:
                continue  # one vector: its cosine with itself
            side = max(3.6, 1.2 + 0.55 * len(block.cwes))
            fig, axes = _grid(len(layers), width=side, height=side * 0.9)
            image = None
            for ax, layer in zip(axes, layers):
                image = _heatmap(ax, block.layers[layer], block.cwes, block.cwes, vmin=-1, vmax=1)
                ax.set_title(f"layer {layer}", fontsize=9)
            if image is not None:
                fig.colorbar(image, ax=axes, shrink=0.6, label="cosine")
            fig.suptitle(f"vector cosine similarity ({method_key}, fitted on TRAIN)", fontsize=10)
            names.append(_save(fig, out_dir, _safe(f"cosine_{method_key}.png")))
    return names


def plot_pca(results: Results, out_dir: Path) -> list[str]:
    """Secure vs vulnerable training activations per CWE on their first two principal components."""
    names = []
    for pooling, block in results.pca.items():
        cwes = list(block.cwes)
        fig, axes = _grid(len(cwes), width=3.2, height=3.0, cols=4)
        for ax, cwe in zip(axes, cwes):
            item = block.cwes[cwe]
            for flag, colour, label in ((True, "tab:red", "vulnerable"), (False, "tab:blue", "secure")):
                xs = [x for x, v in zip(item.x, item.vulnerable, strict=True) if v == flag]
                ys = [y for y, v in zip(item.y, item.vulnerable, strict=True) if v == flag]
                ax.scatter(xs, ys, s=10, c=colour, label=label, alpha=0.7)
            ax.set_title(f"{cwe} ({', '.join(f'{100 * v:.0f}%' for v in item.explained)})", fontsize=8)
            ax.tick_params(labelsize=6)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"TRAIN activations, layer {block.layer}, pooling {pooling}: PC1 vs PC2")
        names.append(_save(fig, out_dir, _safe(f"pca_{pooling}.png")))
    return names


def plot_margins(results: Results, out_dir: Path, mode: str) -> str | None:
    """Answer-margin distribution per class: the baseline vs the headline detectors (logit mode)."""
    block = results.lead.get(mode)
    if block is None or not any([*m.vulnerable, *m.secure] for m in block.margins.values()):
        return None
    fig, axes = _grid(len(block.margins), width=4.5, height=3.2)
    for ax, (name, by_class) in zip(axes, block.margins.items()):
        values = [*by_class.vulnerable, *by_class.secure]
        if not values:
            continue
        bins = 20
        for label, colour, points in (
            ("vulnerable", "tab:red", by_class.vulnerable),
            ("secure", "tab:blue", by_class.secure),
        ):
            ax.hist(
                points, bins=bins, range=(min(values), max(values)), alpha=0.55, color=colour, label=f"truly {label}"
            )
        ax.axvline(0.0, color="black", lw=0.8, ls=":")
        ax.set(title=name, xlabel="logp(' vulnerable') - logp(' secure')", ylabel="samples")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{mode} mode, TEST split: answer margins by class (right of 0 = answers 'vulnerable')")
    return _save(fig, out_dir, f"margins_{mode}.png")


def report_plots(results: Results, out_dir: str | Path) -> list[str]:
    """Every plot of a report; returns their paths relative to *out_dir* (a failing plot is skipped, not fatal)."""
    import logging

    out = Path(out_dir)
    made: list[str] = []
    jobs: list[Callable[[], list[str] | str | None]] = []
    for mode in results.lead:
        jobs.append(partial(plot_margins, results, out, mode))
    for mode in results.val:
        jobs.append(partial(plot_val_curves, results, out, mode))
        jobs.append(partial(plot_layer_strength, results, out, mode))
    drawn: set[str] = set()
    for family in results.families.values():
        for mode, table in family.held_out.items():
            cross = table.cross_cwe
            if cross is not None and cross.vectors and cross.targets:
                name = f"cross_cwe_{mode}.png" if mode not in drawn else f"cross_cwe_{family.name}_{mode}.png"
                drawn.add(mode)
                jobs.append(partial(plot_cross_cwe, cross, out, name, f"{mode} mode, {cross.split} split"))
    jobs += [lambda: plot_cosines(results, out), lambda: plot_pca(results, out)]
    for job in jobs:
        try:
            result = job()
        except Exception as exc:  # a plot must never cost the results
            logging.getLogger(__name__).warning("plot failed: %s", exc)
            continue
        if isinstance(result, str):
            made.append(result)
        elif result:
            made.extend(result)
    return made
