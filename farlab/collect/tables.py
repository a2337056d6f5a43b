"""Aggregate collected runs over seeds into loss x strategy tables; render CSV, Markdown and LaTeX deterministically.

Byte-identical output on every call is a requirement (results live in git and papers): rows are sorted,
floats use fixed formats and nothing time- or host-dependent is written. The CE baseline is one row whose single
cell spans every strategy column (its strategy is 'shared'; see farlab.collect.factors).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from farlab.collect.factors import BASELINE_LABEL, FACTORS, LOSS_ORDER, SHARED, STRATEGY_ORDER, far_code, is_baseline
from farlab.collect.runs import RECIPE_KEYS, Run, Skipped
from farlab.eval.metrics import lower_is_better

ID_COLUMNS = ("run_dir", "task", "model", "loss", "F", "A", "R", "teacher_strategy", "cell_strategy", "seed",
              "status", "degenerate")
TAIL_COLUMNS = tuple(name for name, _ in RECIPE_KEYS) + ("overrides",)
SKIPPED_COLUMNS = ("run_dir", "status", "reason", "task", "loss", "teacher_strategy", "seed")
GAP_METRICS = ("student_gain", "transfer_efficiency")
# Calibration entries of an evaluation (farlab.eval.calibration): shown in their own table, not one table each.
CALIBRATION_METRICS = ("ece", "mean_confidence", "nll", "brier", "mean_entropy", "max_class_rate")
# A run's student is degenerate (sits at the majority class) when one class takes this share of its predictions.
COLLAPSE_RATE = 0.99

try:  # pandas is the field's grouping tool; the plain-python path gives the same numbers without it
    import pandas as _pd
except ImportError:  # pragma: no cover - exercised by forcing _pd = None in tests
    _pd = None


@dataclass(frozen=True)
class Cell:
    """Mean, sample std (ddof=1; None for n=1) and count of one metric over seeds."""

    mean: float
    std: float | None
    n: int


# ---------------------------------------------------------------------------------------------- ordering


def ordered(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    """Preferred names first in their fixed order, then any others alphabetically."""
    vals = set(values)
    return [v for v in preferred if v in vals] + sorted(vals - set(preferred))


def _seed_key(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) and not isinstance(seed, bool) else (1, 0, str(seed))


def sort_runs(runs: list[Run]) -> list[Run]:
    """Rows in table order: task, model, loss (FAR order), strategy, seed, run dir."""
    losses = {n: i for i, n in enumerate(ordered({r.loss for r in runs}, LOSS_ORDER))}
    strats = {n: i for i, n in enumerate(ordered({r.teacher_strategy for r in runs}, STRATEGY_ORDER))}
    return sorted(runs, key=lambda r: (r.task, r.model, losses[r.loss], strats[r.teacher_strategy],
                                       _seed_key(r.seed), r.run_dir))


def degenerate(metrics: dict[str, Any]) -> bool:
    """The student sits at the majority class: MCC exactly 0 (it predicts one class), or one class takes
    >= COLLAPSE_RATE of its predictions (when the evaluation reports pred_class_rate)."""
    primary = metrics.get("primary_metric")
    if primary == "mcc" and metrics.get("post_student_mcc") == 0.0:
        return True
    rate = metrics.get("post_student_max_class_rate")
    return finite(rate) and rate >= COLLAPSE_RATE


# ---------------------------------------------------------------------------------------------- tidy rows


def run_row(run: Run) -> dict[str, Any]:
    """One flat dict per run: id columns, metrics, overrides."""
    row: dict[str, Any] = {"run_dir": run.run_dir, "task": run.task, "model": run.model, "loss": run.loss,
                           "teacher_strategy": run.teacher_strategy, "cell_strategy": run.cell_strategy,
                           "seed": run.seed, "status": run.status, "degenerate": int(degenerate(run.metrics))}
    row.update(run.flags)
    row.update(run.metrics)
    row.update(run.recipe)
    row["overrides"] = " ".join(run.overrides)
    return row


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric columns in a stable order: primary/transfer fields, pre_*, post_*, then the rest alphabetically."""
    fixed = set(ID_COLUMNS) | set(TAIL_COLUMNS)
    names = {k for row in rows for k in row if k not in fixed}
    head = [c for c in ("primary_metric", "transfer_metric", "teacher_advantage", "student_gain",
                        "transfer_efficiency", "transfer_efficiency_note", "runtime_s") if c in names]
    rank = {"pre": 0, "post": 1}
    rest = sorted(names - set(head), key=lambda c: (rank.get(c.split("_")[0], 2), c))
    return head + rest


def fmt_value(value: Any) -> str:
    """CSV cell: blank for missing/NaN, %.10g for floats (stable, round-trip enough for metrics), str otherwise."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        text = f"{value:.10g}"
        return "0" if text == "-0" else text
    return str(value)


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV text with '\\n' line ends (identical on every platform)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([fmt_value(row.get(c)) for c in columns])
    return buf.getvalue()


def results_csv(runs: list[Run]) -> tuple[str, list[dict[str, Any]]]:
    """results.csv text and the tidy rows it was built from."""
    rows = [run_row(r) for r in sort_runs(runs)]
    columns = list(ID_COLUMNS) + metric_columns(rows) + list(TAIL_COLUMNS)
    return to_csv(rows, columns), rows


def skipped_csv(skipped: list[Skipped]) -> str:
    """skipped.csv text: one row per job dir left out, with its reason."""
    rows = [vars(s) for s in sorted(skipped, key=lambda s: s.run_dir)]
    return to_csv(rows, list(SKIPPED_COLUMNS))


# ---------------------------------------------------------------------------------------------- aggregation


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(rows: list[dict[str, Any]], keys: tuple[str, ...], metric: str) -> dict[tuple, Cell]:
    """Mean/std/n of `metric` per group of `keys`, ignoring runs without a finite value (pandas when available)."""
    usable = [r for r in rows if finite(r.get(metric))]
    if not usable:
        return {}
    if _pd is not None:
        frame = _pd.DataFrame({**{k: [str(r[k]) for r in usable] for k in keys},
                               "v": [float(r[metric]) for r in usable]})
        stats = frame.groupby(list(keys), sort=True)["v"].agg(["mean", "std", "count"])
        return {(idx if isinstance(idx, tuple) else (idx,)):
                Cell(float(s["mean"]), None if s["count"] < 2 else float(s["std"]), int(s["count"]))
                for idx, s in stats.iterrows()}
    groups: dict[tuple, list[float]] = {}
    for r in usable:
        groups.setdefault(tuple(str(r[k]) for k in keys), []).append(float(r[metric]))
    return {k: Cell(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
            for k, v in sorted(groups.items())}


@dataclass
class Table:
    """One loss x strategy table of one metric for one (task, model).

    cells are keyed by (loss, cell_strategy): the CE baseline's one cell is (loss, 'shared').
    degenerate: (runs with a degenerate student, runs) per cell that has any.
    """

    task: str
    model: str
    metric: str
    losses: list[str]
    strategies: list[str]
    cells: dict[tuple[str, str], Cell]
    flags: dict[str, dict[str, int | None]]
    best: set[tuple[str, str]]
    degenerate: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def baseline(self, loss: str) -> bool:
        return is_baseline(self.flags.get(loss, {}))

    def label(self, loss: str) -> str:
        """Row label: the CE baseline as 'CE (shared baseline)' (with its loss name when there are several)."""
        if not self.baseline(loss):
            return loss
        several = sum(self.baseline(name) for name in self.losses) > 1
        return f"{BASELINE_LABEL[:-1]}: {loss})" if several else BASELINE_LABEL

    def row_cells(self, loss: str) -> list[tuple[tuple[str, str] | None, Cell | None]]:
        """(key, cell) per strategy column; the baseline's cell sits in the first column, None in the rest."""
        if self.baseline(loss):
            key = (loss, SHARED)
            return [(key, self.cells.get(key))] + [(None, None)] * (len(self.strategies) - 1)
        return [((loss, s), self.cells.get((loss, s))) for s in self.strategies]


def best_cells(cells: dict[tuple[str, str], Cell], metric: str) -> set[tuple[str, str]]:
    """The cell(s) with the best mean (ties all marked)."""
    if not cells:
        return set()
    pick = min if lower_is_better(metric) else max
    target = pick(c.mean for c in cells.values())
    return {k for k, c in cells.items() if c.mean == target}


def build_table(rows: list[dict[str, Any]], task: str, model: str, metric: str) -> Table | None:
    """The table for one (task, model, metric); None when no run has that metric."""
    sub = [r for r in rows if r["task"] == task and r["model"] == model]
    agg = aggregate(sub, ("loss", "cell_strategy"), metric)
    if not agg:
        return None
    cells = {(k[0], k[1]): c for k, c in agg.items()}
    flags = {r["loss"]: {f: r.get(f) for f in FACTORS} for r in sub}
    strategies = ordered({k[1] for k in cells if k[1] != SHARED}, STRATEGY_ORDER) or [SHARED]
    return Table(task, model, metric, ordered({k[0] for k in cells}, LOSS_ORDER), strategies, cells, flags,
                 best_cells(cells, metric), degenerate_cells(sub, metric))


def degenerate_cells(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(degenerate runs, runs) per (loss, cell_strategy) cell with at least one degenerate run."""
    counts: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if finite(r.get(metric)):
            c = counts.setdefault((r["loss"], r["cell_strategy"]), [0, 0])
            c[0] += int(r.get("degenerate") or 0)
            c[1] += 1
    return {k: (d, n) for k, (d, n) in sorted(counts.items()) if d}


def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    """post_student_<primary_metric> (most common primary among the rows; ties alphabetical), if present."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("primary_metric"):
            counts[r["primary_metric"]] = counts.get(r["primary_metric"], 0) + 1
    for name in sorted(counts, key=lambda n: (-counts[n], n)):
        col = f"post_student_{name}"
        if any(finite(r.get(col)) for r in rows):
            return col
    posts = sorted({k for r in rows for k in r if k.startswith("post_student_")})
    return posts[0] if posts else None


def resolve_metric(name: str, rows: list[dict[str, Any]]) -> str:
    """--metric accepts a column name or a bare metric ('mcc' -> post_student_mcc)."""
    columns = {k for r in rows for k in r}
    for cand in (name, f"post_student_{name}"):
        if cand in columns:
            return cand
    return name


def table_metrics(rows: list[dict[str, Any]], chosen: str | None) -> list[str]:
    """Metrics to tabulate: the chosen one, else primary, the other post_student_* task metrics (calibration has
    its own table), the primary metric on each extra eval split, student_gain, transfer_efficiency."""
    if chosen:
        return [resolve_metric(chosen, rows)]
    primary = primary_metric(rows)
    calibration = {f"post_student_{m}" for m in CALIBRATION_METRICS}
    posts = sorted({k for r in rows for k in r if k.startswith("post_student_")} - {primary} - calibration)
    extra = sorted({k for r in rows for k in r if k.startswith("extra_") and primary
                    and k.endswith("_post_student_" + primary.removeprefix("post_student_"))})
    return ([primary] if primary else []) + posts + extra + list(GAP_METRICS)


def build_tables(rows: list[dict[str, Any]], chosen: str | None) -> list[Table]:
    """All tables, grouped by (task, model) in sorted order."""
    tables = []
    for task, model in sorted({(r["task"], r["model"]) for r in rows}):
        sub = [r for r in rows if r["task"] == task and r["model"] == model]
        for metric in table_metrics(sub, chosen):
            table = build_table(sub, task, model, metric)
            if table:
                tables.append(table)
    return tables


# ---------------------------------------------------------------------------------------------- rendering


def fmt_num(x: float) -> str:
    """Fixed 4-decimal format; never '-0.0000'."""
    text = f"{x:.4f}"
    return text[1:] if text == "-0.0000" else text


def cell_text(cell: Cell | None, pm: str = "±", n_fmt: str = "(n={n})") -> str:
    """'mean ± std (n=k)'; with one seed 'mean (n=1)'; '-' for an empty cell."""
    if cell is None:
        return "-"
    body = fmt_num(cell.mean) if cell.std is None else f"{fmt_num(cell.mean)} {pm} {fmt_num(cell.std)}"
    return f"{body} {n_fmt.format(n=cell.n)}"


SHARED_TEXT = "(shared)"  # the CE baseline's row in the strategy columns after the first


def row_texts(t: Table, loss: str, text: Callable[[Cell | None, tuple[str, str]], str],
              bold: Callable[[str], str]) -> list[str]:
    """One row's cell texts for any output format: the shared-baseline filler, ``text(cell, key)``, best in ``bold``."""
    cells = []
    for key, cell in t.row_cells(loss):
        if key is None:
            cells.append(SHARED_TEXT)
        else:
            cells.append(bold(text(cell, key)) if key in t.best else text(cell, key))
    return cells


def tex_cell(text: str) -> str:
    return "--" if text == "-" else text


def md_table(t: Table) -> str:
    """Markdown table; best cell in **bold**, a cell with a degenerate run marked †."""
    lines = ["| loss | FAR | " + " | ".join(t.strategies) + " |",
             "|---|---|" + "---|" * len(t.strategies)]
    for loss in t.losses:
        cells = row_texts(t, loss, lambda cell, key: cell_text(cell) + (" †" if key in t.degenerate else ""),
                          lambda text: f"**{text}**")
        lines.append(f"| {t.label(loss)} | {far_code(t.flags.get(loss, {}))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """Escape LaTeX special characters in names."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def tex_table(t: Table) -> str:
    """One booktabs table; best cell in \\textbf."""
    head = " & ".join(["loss", "FAR"] + [tex_escape(s) for s in t.strategies]) + r" \\"
    lines = [f"% {t.task} / {t.model}: {t.metric}", r"\begin{table}[ht]", r"\centering",
             (rf"\caption{{{tex_escape(t.task)} / {tex_escape(t.model)}: {tex_escape(t.metric)} "
              r"(mean $\pm$ std over seeds)}"),
             rf"\begin{{tabular}}{{ll{'c' * len(t.strategies)}}}", r"\toprule", head, r"\midrule"]
    for loss in t.losses:
        cells = row_texts(t, loss, lambda cell, key: tex_cell(cell_text(cell, pm=r"$\pm$", n_fmt="($n$={n})")),
                          lambda text: rf"\textbf{{{text}}}")
        lines.append(" & ".join([tex_escape(t.label(loss)), far_code(t.flags.get(loss, {}))] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def results_tex(tables: list[Table]) -> str:
    """results.tex: all tables (needs \\usepackage{booktabs})."""
    header = "% farlab results; generated by python -m farlab.collect; needs \\usepackage{booktabs}\n"
    return header + "\n\n".join(tex_table(t) for t in tables) + "\n"
