"""One collection: find job dirs, read them, aggregate, run the statistics, write every output file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from farlab.collect.plots import have_matplotlib, write_plots
from farlab.collect.report import GroupStats, anova_csv, cross_task_csv, paired_csv, results_md
from farlab.collect.runs import CollectError, Run, Skipped, expand_inputs, find_job_dirs, load_all
from farlab.collect.stats import CrossTask, cross_task, far_anova, paired_vs_baseline
from farlab.collect.tables import Table, build_tables, results_csv, results_tex, skipped_csv


@dataclass
class Summary:
    """What one collection produced (for callers and tests)."""

    out_dir: Path
    runs: list[Run]
    skipped: list[Skipped]
    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    groups: list[GroupStats] = field(default_factory=list)
    cross: CrossTask | None = None


def write_text(path: Path, text: str) -> Path:
    """UTF-8, '\\n' line ends, so files are byte-identical across runs and platforms."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def primary_tables(tables: list[Table]) -> list[Table]:
    """The first (primary-metric) table of every (task, model)."""
    seen: dict[tuple[str, str], Table] = {}
    for t in tables:
        seen.setdefault((t.task, t.model), t)
    return list(seen.values())


def group_stats(tables: list[Table], rows: list[dict]) -> list[GroupStats]:
    """Paired comparisons and the ANOVA of each (task, model)'s primary (or chosen) metric."""
    out = []
    for t in primary_tables(tables):
        sub = tuple(r for r in rows if r["task"] == t.task and r["model"] == t.model)
        out.append(GroupStats(t.task, t.model, t.metric, t, tuple(paired_vs_baseline(list(sub), t.metric)),
                              far_anova(list(sub), t.metric), sub))
    return out


def collect(inputs: list[str], out: str | None = None, metric: str | None = None, plots: bool = True) -> Summary:
    """Find, read, aggregate and write everything; raises CollectError for unusable input."""
    roots = expand_inputs(inputs)
    jobs = find_job_dirs(roots)
    if not jobs:
        raise CollectError("no job dir (a dir with run_metadata.json or .hydra/config.yaml) under: "
                           + ", ".join(str(r) for r in roots))
    out_dir = Path(out).resolve() if out else roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, skipped = load_all(jobs, out_dir)
    csv_text, rows = results_csv(runs)
    tables = build_tables(rows, metric)
    groups = group_stats(tables, rows)
    cross = (cross_task([(f"{g.task}/{g.model}", list(g.rows), g.metric) for g in groups])
             if len(groups) > 1 else None)
    sweeps = [Path(os.path.relpath(r, out_dir)).as_posix() for r in roots]
    files = [write_text(out_dir / "results.csv", csv_text),
             write_text(out_dir / "skipped.csv", skipped_csv(skipped)),
             write_text(out_dir / "results.md", results_md(tables, groups, cross, len(runs), skipped, sweeps)),
             write_text(out_dir / "results.tex", results_tex(tables)),
             write_text(out_dir / "paired.csv", paired_csv(groups)),
             write_text(out_dir / "anova.csv", anova_csv(groups))]
    if cross is not None:
        files.append(write_text(out_dir / "cross_task.csv", cross_task_csv(cross)))
    if plots and have_matplotlib():
        files += write_plots(primary_tables(tables), rows, out_dir / "plots")
    return Summary(out_dir, runs, skipped, tables, files, groups, cross)
