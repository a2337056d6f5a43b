"""PNG plots of a collected sweep: heatmap of combinations x strategies, F/A/R main effects and interactions.

Uses matplotlib's object API (Figure + Agg, no pyplot global state) under the default style, and saves without
the 'Software' metadata so the same data gives byte-identical PNGs on every call.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from farlab.collect.factors import FACTORS
from farlab.collect.tables import Table, fmt_num

PNG_META = {"Software": None}
INTERACTIONS = (("F", "A"), ("F", "R"), ("A", "R"))


def have_matplotlib() -> bool:
    """Plots are optional: the tables do not need matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def safe_name(*parts: str) -> str:
    """File-name-safe join of task/model/metric (slashes in names would create folders)."""
    return "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", p) for p in parts)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=PNG_META)


def heatmap(t: Table, path: Path) -> None:
    """Mean of the metric per loss combination (rows) x teacher strategy (columns), values written in the cells."""
    import matplotlib.style
    import numpy as np

    with matplotlib.style.context("default"):
        data = np.full((len(t.losses), len(t.strategies)), np.nan)
        keys: dict[tuple[int, int], tuple[str, str]] = {}
        for i, loss in enumerate(t.losses):
            row = t.row_cells(loss)
            for j, (key, cell) in enumerate(row):
                if key is not None:
                    keys[(i, j)] = key
                shared = row[0][1] if t.baseline(loss) else None  # the CE baseline's colour spans its row
                value = cell if cell is not None else shared
                data[i, j] = np.nan if value is None else value.mean
        fig = _new_figure(1.6 * len(t.strategies) + 2.5, 0.45 * len(t.losses) + 1.8)
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=t.metric)
        ax.set_xticks(range(len(t.strategies)), t.strategies, rotation=30, ha="right")
        ax.set_yticks(range(len(t.losses)), [t.label(loss) for loss in t.losses])
        for (i, j), value in np.ndenumerate(data):
            if not np.isnan(value) and (i, j) in keys:
                bold = "bold" if keys[(i, j)] in t.best else "normal"
                color = "k" if image.norm(value) > 0.6 else "w"  # dark text on the bright end of viridis
                ax.text(j, i, fmt_num(value), ha="center", va="center", color=color, fontsize=8, fontweight=bold)
        ax.set_title(f"{t.task} / {t.model}: {t.metric}")
        fig.tight_layout()
        _save(fig, path)


def _mean_where(rows: list[dict[str, Any]], metric: str, cond: dict[str, int]) -> float | None:
    vals = [float(r[metric]) for r in rows
            if isinstance(r.get(metric), (int, float)) and all(r.get(f) == v for f, v in cond.items())]
    return statistics.fmean(vals) if vals else None


def effects(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean metric with each factor off/on, and per two-way interaction the 2x2 means (None where no runs)."""
    rows = [r for r in rows if all(r.get(f) in (0, 1) for f in FACTORS)]
    main = {f: [_mean_where(rows, metric, {f: v}) for v in (0, 1)] for f in FACTORS}
    inter = {(a, b): {vb: [_mean_where(rows, metric, {a: va, b: vb}) for va in (0, 1)] for vb in (0, 1)}
             for a, b in INTERACTIONS}
    return {"main": main, "interactions": inter}


def _line(ax: Any, ys: list[float | None], label: str, marker: str) -> None:
    pts = [(x, y) for x, y in zip((0, 1), ys) if y is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)


def effects_plot(rows: list[dict[str, Any]], task: str, model: str, metric: str, path: Path) -> None:
    """Main effects of F, A, R (pooled over strategies and seeds) and the three two-way interaction plots."""
    import matplotlib.style

    eff = effects(rows, metric)
    with matplotlib.style.context("default"):
        fig = _new_figure(14, 3.6)
        axes = fig.subplots(1, 4, sharey=True)
        for f, marker in zip(FACTORS, "osD"):
            _line(axes[0], eff["main"][f], f, marker)
        axes[0].set_title("main effects")
        axes[0].set_ylabel(metric)
        for ax, (a, b) in zip(axes[1:], INTERACTIONS):
            for vb, marker in ((0, "o"), (1, "s")):
                _line(ax, eff["interactions"][(a, b)][vb], f"{b} {'on' if vb else 'off'}", marker)
            ax.set_title(f"{a} x {b}")
            ax.set_xlabel(a)
        for ax in axes:
            ax.set_xticks([0, 1], ["off", "on"])
            ax.set_xlim(-0.3, 1.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_xlabel("factor")
        fig.suptitle(f"{task} / {model}: {metric}")
        fig.tight_layout()
        _save(fig, path)


def write_plots(primary: list[Table], rows: list[dict[str, Any]], plot_dir: Path) -> list[Path]:
    """Heatmap + effects plot per (task, model) primary-metric table; returns the files written."""
    written = []
    for t in primary:
        hm = plot_dir / f"heatmap_{safe_name(t.task, t.model, t.metric)}.png"
        heatmap(t, hm)
        sub = [r for r in rows if r["task"] == t.task and r["model"] == t.model]
        ef = plot_dir / f"effects_{safe_name(t.task, t.model, t.metric)}.png"
        effects_plot(sub, t.task, t.model, t.metric, ef)
        written += [hm, ef]
    return written
