"""results.md and the statistics CSVs: every table opens with what it shows, what it cannot show, the seeds per
cell, the degenerate cells and the recipe, so a table copied out of context still says how far it can be trusted.

Deterministic text only (fixed float formats, sorted rows, no times or absolute paths): an archived sweep
regenerates these files byte for byte.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from farlab.collect.factors import BASELINE_LABEL, SHARED
from farlab.collect.runs import RECIPE_KEYS, VARIANT_MARK, Skipped
from farlab.collect.stats import CONFIDENCE, Anova, CrossTask, Paired
from farlab.collect.tables import (
    COLLAPSE_RATE,
    Table,
    aggregate,
    cell_text,
    finite,
    fmt_num,
    fmt_value,
    md_table,
    to_csv,
)
from farlab.eval.transfer import MIN_ADVANTAGE_SHARE

DEGENERATE_RULE = (f"† = the student sits at the majority class (MCC exactly 0, or one class >= {COLLAPSE_RATE:.0%} "
                   "of its predictions)")


@dataclass(frozen=True)
class GroupStats:
    """The statistics of one (task, model) group for its primary (or chosen) metric."""

    task: str
    model: str
    metric: str
    table: Table
    paired: tuple[Paired, ...]
    anova: Anova | str  # the reason when not fitted
    rows: tuple[dict[str, Any], ...]


# ---------------------------------------------------------------------------------------------- number formats


def fmt_signed(x: float | None) -> str:
    if x is None:
        return "-"
    text = f"{x:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_g(x: float | None, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    text = format(x, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


# ---------------------------------------------------------------------------------------------- headers


def seeds_text(ns: list[int]) -> str:
    """'3 (every cell)' or '1-3 (n in each cell)'."""
    if not ns:
        return "none"
    lo, hi = min(ns), max(ns)
    return f"{hi} (every cell)" if lo == hi else f"{lo}-{hi} (n in each cell)"


def _value_text(v: Any) -> str:
    return "null" if v is None else fmt_value(float(v) if isinstance(v, float) else v)


def recipe_text(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> str:
    """The runs' recipe: max_steps when every run set it (> 0 overrides epochs), else epochs; then learning rate,
    batch size, train_limit. A field that differs between runs lists each value with its run count."""
    names = [n for n, _ in RECIPE_KEYS]
    steps = [r.get("max_steps") for r in rows]
    if steps and all(isinstance(s, (int, float)) and s > 0 for s in steps):
        names.remove("epochs")
    else:
        names.remove("max_steps")
    parts = []
    for name in names:
        counts = Counter(_value_text(r.get(name)) for r in rows)
        if len(counts) == 1:
            parts.append(f"{name} {next(iter(counts))}")
        else:
            parts.append(f"{name} " + " / ".join(f"{v} ({n} runs)" for v, n in sorted(counts.items())))
    return ", ".join(parts)


def degenerate_text(t: Table) -> str:
    if not t.degenerate:
        return "none"
    if len(t.degenerate) == len(t.cells) and all(d == n for d, n in t.degenerate.values()):
        return "every cell (all runs)"
    keys = [(loss, s) for loss in t.losses for s in (t.strategies + [SHARED]) if (loss, s) in t.degenerate]
    return ", ".join(f"{t.label(loss) if s == SHARED else f'{loss}/{s}'} ({d}/{n} runs)"
                     for (loss, s), (d, n) in ((k, t.degenerate[k]) for k in keys))


def header(shows: str, cannot: str, seeds: str, g: GroupStats) -> list[str]:
    """The five lines every table starts with."""
    return [f"- **Shows**: {shows}", f"- **Cannot show**: {cannot}", f"- **Seeds per cell**: {seeds}",
            f"- **Degenerate cells** ({DEGENERATE_RULE}): {degenerate_text(g.table)}",
            f"- **Recipe** (from the runs' config.yaml): {recipe_text(g.rows)}", ""]


# ---------------------------------------------------------------------------------------------- sections


def _describe(metric: str, primary: str) -> tuple[str, str]:
    """(shows, cannot show) of a loss x strategy table of ``metric``."""
    cell = "mean ± sample std over seeds (n runs), per loss (rows) x teacher strategy (columns); best in bold"
    noise = ("whether a difference is larger than seed-to-seed noise (the paired comparisons and the ANOVA below "
             f"test {primary})")
    if metric == "transfer_efficiency":
        return (f"student gain / teacher advantage (teacher - student before training); {cell}",
                f"cells whose teacher was less than {MIN_ADVANTAGE_SHARE:.0%} of the metric's range ahead before "
                "training (untuned base teachers, the CE baseline: empty); "
                "a comparison of strategies, whose teachers differ (see the normalised score); " + noise)
    if metric == "student_gain":
        return f"post - pre student on the primary metric; {cell}", noise
    if metric.startswith("extra_") and "_post_student_" in metric:
        split, name = metric.removeprefix("extra_").split("_post_student_", 1)
        return (f"post-training student `{name}` on the extra eval split `{split}` (task.extra_eval_files); {cell}",
                noise)
    return f"post-training student `{metric}` on the eval split; {cell}", noise


def metric_section(g: GroupStats, t: Table) -> list[str]:
    shows, cannot = _describe(t.metric, g.metric)
    primary = " (primary)" if t.metric == g.metric else ""
    return ([f"### {t.metric}{primary}", ""] + header(shows, cannot, seeds_text([c.n for c in t.cells.values()]), g)
            + [md_table(t), ""])


def paired_section(g: GroupStats) -> list[str]:
    title = [f"### Paired differences vs the CE baseline: {g.metric}", ""]
    if not g.paired:
        return title + ["No CE baseline run shares a seed with a distilled cell: nothing to pair.", ""]
    strategies = [s for s in g.table.strategies if s != SHARED]
    losses = [loss for loss in g.table.losses if not g.table.baseline(loss)]
    shows = (f"mean over seeds of (cell - CE baseline at the same seed) with its {CONFIDENCE:.0%} t-interval; "
             "**better** / **worse**: the interval excludes zero")
    cannot = ("a difference for a cell with n < 2 (no interval); a correction for comparing many cells at once "
              f"(about 1 in {round(1 / (1 - CONFIDENCE))} intervals excludes zero by chance)")
    by = {(p.loss, p.strategy): p for p in g.paired}
    lines = ["| loss | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for loss in losses:
        cells = []
        for s in strategies:
            p = by.get((loss, s))
            if p is None:
                cells.append("-")
                continue
            interval = f" [{fmt_signed(p.low)}, {fmt_signed(p.high)}]" if p.low is not None else ""
            verdict = p.verdict(g.metric)
            cells.append(f"{fmt_signed(p.mean)}{interval} (n={p.n})" + (f" **{verdict}**" if verdict else ""))
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return title + header(shows, cannot, "n = seeds the cell shares with the CE baseline: "
                          + seeds_text([p.n for p in g.paired]), g) + lines + [""]


def anova_section(g: GroupStats) -> list[str]:
    title = [f"### ANOVA (type II): {g.metric}", ""]
    a = g.anova
    if isinstance(a, str):
        return title + [f"Not fitted: {a}.", ""]
    shows = (f"OLS `{a.formula}` over {a.n_runs} runs (seeds are the replicates): per term its sum of squares, F, "
             "p, partial eta² = SS / (SS + SS_residual) and estimate (the metric's change when the factor(s) "
             "are on: main effects from the additive model, two-way from main + two-way)")
    cannot = ("effects outside the levels in the sweep; with few seeds a non-significant term is not evidence of no "
              "effect (low power)")
    if a.notes:
        cannot += "; " + "; ".join(a.notes)
    lines = ["| term | df | sum sq | F | p | partial eta² | estimate |", "|---|---|---|---|---|---|---|"]
    for r in a.rows:
        lines.append(f"| {r.term} | {fmt_g(r.df, 'g')} | {fmt_g(r.sum_sq)} | {fmt_g(r.f_value, '.2f')} | "
                     f"{fmt_p(r.p_value)} | {fmt_g(r.partial_eta_sq, '.3f')} | {fmt_signed(r.estimate)} |")
    n = Counter((r["loss"], r["cell_strategy"]) for r in g.rows if isinstance(r.get(g.metric), (int, float)))
    return title + header(shows, cannot, seeds_text(list(n.values())), g) + lines + [""]


def calibration_section(g: GroupStats) -> list[str]:
    """ECE and mean confidence of the post-training student per cell; nothing when the runs do not report them."""
    cols = [c for c in ("post_student_ece", "post_student_mean_confidence")
            if any(isinstance(r.get(c), float) for r in g.rows)]
    if not cols:
        return []
    aggs = {c: aggregate(list(g.rows), ("loss", "cell_strategy"), c) for c in cols}
    t = g.table
    lines = ["| loss | " + " | ".join(t.strategies) + " |", "|---|" + "---|" * len(t.strategies)]
    ns = []
    for loss in t.losses:
        cells = []
        for key, _ in t.row_cells(loss):
            parts = [(name, aggs[c].get(key)) for name, c in zip(("ECE", "conf"), cols)]
            if key is None or all(cell is None for _, cell in parts):
                cells.append("(shared)" if key is None else "-")
                continue
            n = max(cell.n for _, cell in parts if cell is not None)
            ns.append(n)
            cells.append(" / ".join(f"{name} {fmt_num(cell.mean)}" for name, cell in parts if cell is not None)
                         + f" (n={n})")
        lines.append(f"| {t.label(loss)} | " + " | ".join(cells) + " |")
    shows = ("the post-training student's top-label expected calibration error (ECE) and mean top-class "
             "confidence, mean over seeds")
    cannot = "the spread over seeds; the teacher's calibration (see results.csv); whether differences exceed noise"
    return ["### Calibration (post-training student)", ""] + header(shows, cannot, seeds_text(ns), g) + lines + [""]


def teacher_section(g: GroupStats) -> list[str]:
    """The teachers the students learned from, per strategy, on the primary metric: when the student started (a
    frozen teacher's one score; after its fine-tuning for an SFT teacher) and when it ended (a co-trained teacher,
    one per run). Nothing when no run had a teacher."""
    name = g.metric.removeprefix("post_student_")
    start_col, end_col = f"pre_teacher_{name}", f"post_teacher_{name}"
    taught = [r for r in g.rows if r["cell_strategy"] != SHARED]
    # Every cell of a seed starts from the same teacher: one value per (strategy, seed), not one per run.
    starts: dict[tuple[str, str], float] = {}
    for r in taught:
        if finite(r.get(start_col)):
            starts.setdefault((r["cell_strategy"], str(r["seed"])), float(r[start_col]))
    if not starts:
        return []
    start = aggregate([{"strategy": s, "v": v} for (s, _), v in sorted(starts.items())], ("strategy",), "v")
    end = aggregate(taught, ("cell_strategy",), end_col)
    lines = ["| teacher strategy | at the student's start | at the student's end |", "|---|---|---|"]
    for s in g.table.strategies:
        lines.append(f"| {s} | {cell_text(start.get((s,)), n_fmt='(n={n} seeds)')} | "
                     f"{cell_text(end.get((s,)), n_fmt='(n={n} runs)')} |")
    shows = (f"the teacher's `{name}` on the eval split, mean ± sample std: at the student's start over seeds "
             "(every cell of a seed starts from the same teacher; an SFT teacher after its fine-tuning), at its end "
             "over runs (co-trained teachers, which every run changes in its own way)")
    cannot = ("a frozen teacher at the end (not evaluated again: it did not change); the teacher's other metrics "
              "(see results.csv)")
    return (["### Teachers", ""] + header(shows, cannot, seeds_text([c.n for c in start.values()]), g) + lines
            + [""])


def cross_task_section(ct: CrossTask, groups: list[GroupStats]) -> list[str]:
    cols = [t.label for t in ct.tasks]
    lines = ["| cell | " + " | ".join(cols) + " | mean rank |", "|---|" + "---|" * (len(cols) + 1)]
    for cell in ct.cells:
        name = BASELINE_LABEL if cell[1] == SHARED else f"{cell[0]} / {cell[1]}"
        parts = []
        for t in ct.tasks:
            if cell not in t.means:
                parts.append("-")
                continue
            norm = t.normalised.get(cell)
            notes = [f"rank {fmt_g(t.ranks[cell], 'g')}"] if cell in t.ranks else []
            notes += [f"norm {fmt_signed(norm)}"] if norm is not None else []
            parts.append(fmt_num(t.means[cell]) + (f" ({', '.join(notes)})" if notes else ""))
        rank = f"{ct.mean_rank[cell]:.2f}" if cell in ct.mean_rank else "- (not in every task)"
        lines.append(f"| {name} | " + " | ".join(parts) + f" | {rank} |")
    common = len(ct.mean_rank)
    metrics = ", ".join(f"{t.label}: {t.metric}" for t in ct.tasks)
    shows = (f"per task the cell's mean primary metric and its rank among the {common} cells every task has (1 = best; "
             "ties share the average rank), the mean of those ranks, and the normalised score "
             "norm = (cell - CE) / (teacher - CE) (1: the student closes the gap to its teacher; 0: no better "
             f"than CE). Metrics: {metrics}")
    cannot = (f"a normalised score where teacher - CE < {MIN_ADVANTAGE_SHARE:.0%} of the metric's range (the teacher "
              "is not meaningfully ahead, e.g. an untuned base teacher: left out); significance (see each task's "
              "paired comparisons); a rank for a cell some task lacks (its means are shown, unranked)")
    seeds = "; ".join(f"{g.task}/{g.model}: {seeds_text([c.n for c in g.table.cells.values()])}" for g in groups)
    recipes = "; ".join(f"{g.task}/{g.model}: {recipe_text(g.rows)}" for g in groups)
    degen = "; ".join(f"{g.task}/{g.model}: {degenerate_text(g.table)}" for g in groups)
    return (["## Cross-task summary", "", f"- **Shows**: {shows}", f"- **Cannot show**: {cannot}",
             f"- **Seeds per cell**: {seeds}", f"- **Degenerate cells** ({DEGENERATE_RULE}): {degen}",
             f"- **Recipe** (from the runs' config.yaml): {recipes}", ""] + lines + [""])


def skipped_md(skipped: list[Skipped]) -> str:
    """Markdown list of skipped job dirs and reasons."""
    if not skipped:
        return "None.\n"
    lines = ["| run_dir | status | reason |", "|---|---|---|"]
    for s in sorted(skipped, key=lambda s: s.run_dir):
        reason = s.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{s.run_dir}` | {s.status} | {reason} |")
    return "\n".join(lines) + "\n"


def results_md(tables: list[Table], groups: list[GroupStats], cross: CrossTask | None, n_runs: int,
               skipped: list[Skipped], sweeps: list[str]) -> str:
    """results.md: how to read it; per (task, model) the primary table, paired comparisons, ANOVA, calibration and
    the other metrics' tables; the cross-task summary (several tasks); the skipped runs."""
    merged = sum(s.status == "merged" for s in skipped)
    merged_text = (f"; {merged} of them are copies of the CE baseline under other teacher strategies, merged into "
                   "its one shared cell" if merged else "")
    out = ["# Results", "",
           "Sweep dirs (relative to this file): " + ", ".join(f"`{s}`" for s in sweeps), "",
           f"Runs: {n_runs} completed and used, {len(skipped)} skipped{merged_text} (listed at the end).", "",
           ("Cells: mean ± sample std over seeds (n = runs with a value; no std when n=1). "
            "Best cell per table in **bold** (lowest for loss/error/perplexity-like metrics, else highest). "
            f"FAR: active distillation factors (Feature, Attention, Response). {BASELINE_LABEL}: alpha 0 loads no "
            "teacher, so the teacher strategy has no effect: one cell per seed, spanning every strategy column."),
           ""]
    if any(VARIANT_MARK in t.model for t in tables):
        out += [("Variants: runs of one task and model whose other overrides differ (the label after "
                 f"`{VARIANT_MARK.strip()}`) are separate experiments, each with its own tables; seeds are never "
                 "pooled across them."), ""]
    by_group = {(g.task, g.model): g for g in groups}
    section = None
    for t in tables:
        g = by_group[(t.task, t.model)]
        if (t.task, t.model) != section:
            section = (t.task, t.model)
            out += [f"## {t.task} / {t.model}", ""]
        out += metric_section(g, t)
        if t is g.table:
            out += paired_section(g) + anova_section(g) + calibration_section(g) + teacher_section(g)
    if cross is not None:
        out += cross_task_section(cross, groups)
    out += ["## Skipped runs", "", skipped_md(skipped)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- CSV


def paired_csv(groups: list[GroupStats]) -> str:
    rows = [{"task": g.task, "model": g.model, "metric": g.metric, "loss": p.loss, "teacher_strategy": p.strategy,
             "n": p.n, "mean_diff": p.mean, "ci_low": p.low, "ci_high": p.high,
             "excludes_zero": int(p.excludes_zero), "verdict": p.verdict(g.metric)}
            for g in groups for p in g.paired]
    return to_csv(rows, ["task", "model", "metric", "loss", "teacher_strategy", "n", "mean_diff", "ci_low",
                         "ci_high", "excludes_zero", "verdict"])


def anova_csv(groups: list[GroupStats]) -> str:
    rows = [{"task": g.task, "model": g.model, "metric": g.metric, "formula": g.anova.formula, "term": r.term,
             "df": r.df, "sum_sq": r.sum_sq, "F": r.f_value, "p": r.p_value, "partial_eta_sq": r.partial_eta_sq,
             "estimate": r.estimate}
            for g in groups if not isinstance(g.anova, str) for r in g.anova.rows]
    return to_csv(rows, ["task", "model", "metric", "formula", "term", "df", "sum_sq", "F", "p", "partial_eta_sq",
                         "estimate"])


def cross_task_csv(ct: CrossTask) -> str:
    rows = [{"task": t.label, "metric": t.metric, "loss": cell[0], "teacher_strategy": cell[1],
             "mean": t.means[cell], "rank": t.ranks.get(cell), "normalised": t.normalised.get(cell),
             "mean_rank": ct.mean_rank.get(cell)}
            for t in ct.tasks for cell in ct.cells if cell in t.means]
    return to_csv(rows, ["task", "metric", "loss", "teacher_strategy", "mean", "rank", "normalised", "mean_rank"])

