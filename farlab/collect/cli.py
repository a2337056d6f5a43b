"""Collect a sweep's run dirs into results.csv, Markdown/LaTeX tables and plots.

    python -m farlab.collect DIR [DIR|GLOB ...] [--out OUT] [--metric NAME] [--no-plots]

Reads only run dirs on disk (docs/run_dir.md), so a sweep that is still running, was interrupted or was
resubmitted collects the same way; failed/running/corrupt runs are listed with their reason, never averaged.
Outputs (in OUT, default the first DIR): results.csv, skipped.csv, results.md, results.tex, plots/*.png.
Exit codes: 0 ok; 1 job dirs found but none completed (files still written); 2 bad input / no job dir found.
See docs/collect.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from farlab.collect.plots import have_matplotlib, write_plots
from farlab.collect.runs import CollectError, Run, Skipped, expand_inputs, find_job_dirs, load_all
from farlab.collect.tables import (Table, build_tables, cell_text, md_table, results_csv, results_md, results_tex,
                                   skipped_csv)


@dataclass
class Summary:
    """What one collection produced (for callers and tests)."""

    out_dir: Path
    runs: list[Run]
    skipped: list[Skipped]
    tables: list[Table]
    files: list[Path] = field(default_factory=list)


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
    sweeps = [Path(os.path.relpath(r, out_dir)).as_posix() for r in roots]
    files = [write_text(out_dir / "results.csv", csv_text),
             write_text(out_dir / "skipped.csv", skipped_csv(skipped)),
             write_text(out_dir / "results.md", results_md(tables, runs, skipped, sweeps)),
             write_text(out_dir / "results.tex", results_tex(tables))]
    if plots and have_matplotlib():
        files += write_plots(primary_tables(tables), rows, out_dir / "plots")
    return Summary(out_dir, runs, skipped, tables, files)


# ---------------------------------------------------------------------------------------------- terminal


def print_table(t: Table) -> None:
    """The table with rich when installed (best cell bold), else as Markdown."""
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print(f"\n{t.task} / {t.model}: {t.metric}\n{md_table(t)}")
        return
    rt = RichTable(title=f"{t.task} / {t.model}: {t.metric}")
    rt.add_column("loss")
    for strat in t.strategies:
        rt.add_column(strat, justify="right")
    for loss in t.losses:
        cells = []
        for strat in t.strategies:
            text = cell_text(t.cells.get((loss, strat)))
            cells.append(f"[bold]{text}[/bold]" if (loss, strat) in t.best else text)
        rt.add_row(loss, *cells)
    console = Console()
    if not console.is_terminal:  # piped/logged: do not squeeze the table into 80 columns
        console = Console(width=240)
    console.print(rt)


def print_summary(s: Summary) -> None:
    """Main tables, skipped runs with reasons, files written."""
    for t in primary_tables(s.tables):
        print_table(t)
    print(f"\n{len(s.runs)} runs used, {len(s.skipped)} skipped")
    for sk in sorted(s.skipped, key=lambda k: k.run_dir):
        print(f"  skipped {sk.run_dir}: [{sk.status}] {sk.reason}")
    print("wrote " + ", ".join(str(f.relative_to(s.out_dir)) for f in s.files) + f" in {s.out_dir}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m farlab.collect", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", metavar="DIR|GLOB", help="sweep dirs (or glob patterns) to collect")
    p.add_argument("--out", help="output dir (default: the first sweep dir)")
    p.add_argument("--metric", help="only tabulate/plot this metric (e.g. mcc or post_student_mcc)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = collect(args.dirs, args.out, args.metric, plots=not args.no_plots)
    except CollectError as e:
        print(f"farlab.collect: error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if not summary.runs:
        print("farlab.collect: no completed run yet (see the skipped list)", file=sys.stderr)
        return 1
    return 0

