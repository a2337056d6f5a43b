"""Collect a sweep's run dirs into results.csv, Markdown/LaTeX tables, the FAR statistics and plots.

Reads only run dirs on disk (docs/run_dir.md), so a sweep that is still running, was interrupted or was
resubmitted collects the same way; failed/running/corrupt runs are listed with their reason, never averaged.
Outputs (in OUT, default the first DIR): results.csv, skipped.csv, results.md, results.tex, paired.csv, anova.csv,
cross_task.csv (several tasks), plots/*.png. Exit codes: 0 ok; 1 job dirs found but none completed (files still
written); 2 bad input / no job dir found. See docs/collect.md.
"""

from __future__ import annotations

import argparse
import sys

from farlab.collect.archive import LOG_TAIL_LINES, archive_sweep
from farlab.collect.pipeline import Summary, collect, primary_tables
from farlab.collect.runs import CollectError
from farlab.collect.tables import Table, cell_text, md_table

EXAMPLES = f"""\
examples:
  python -m farlab.collect multirun/2026-11-26/02-40-00
  python -m farlab.collect 'multirun/2026-11-2*/*' --out results/far_cola      several sweeps (e.g. a resubmission)
  python -m farlab.collect sweeps/cola sweeps/sst2 --out results/far_study     two tasks: adds the cross-task summary
  python -m farlab.collect multirun/2026-11-26/02-40-00 --metric accuracy      only post_student_accuracy
  python -m farlab.collect --archive multirun/2026-11-26/02-40-00 docs/results/sweeps/far_cola_seed1
  python -m farlab.collect docs/results/sweeps/far_cola_seed1                   same tables as from the sweep

--archive SWEEP DEST copies config.yaml, metrics.json, run_metadata.json, .hydra/{{config,overrides}}.yaml, the last
{LOG_TAIL_LINES} lines of output.log and multirun.yaml (never checkpoints or weights) into the new dir DEST,
atomically. Exit codes: 0 ok; 1 job dirs found but none completed; 2 bad input or no job dir.
"""


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
        for key, cell in t.row_cells(loss):
            text = "(shared)" if key is None else cell_text(cell)
            cells.append(f"[bold]{text}[/bold]" if key in t.best else text)
        rt.add_row(t.label(loss), *cells)
    console = Console()
    if not console.is_terminal:  # piped/logged: do not squeeze the table into 80 columns
        console = Console(width=240)
    console.print(rt)


def print_summary(s: Summary) -> None:
    """Main tables, the cells that differ from CE with confidence, skipped runs with reasons, files written."""
    for t in primary_tables(s.tables):
        print_table(t)
    for g in s.groups:
        flagged = [f"{p.loss}/{p.strategy} {p.verdict(g.metric)}" for p in g.paired if p.verdict(g.metric)]
        print(f"{g.task}/{g.model}: vs CE ({g.metric}, 95% CI excludes 0): " + (", ".join(flagged) or "none"))
    merged = sum(k.status == "merged" for k in s.skipped)
    print(f"\n{len(s.runs)} runs used, {len(s.skipped)} skipped" + (f" ({merged} CE copies merged)" if merged else ""))
    for sk in sorted(s.skipped, key=lambda k: k.run_dir):
        print(f"  skipped {sk.run_dir}: [{sk.status}] {sk.reason}")
    print("wrote " + ", ".join(str(f.relative_to(s.out_dir)) for f in s.files) + f" in {s.out_dir}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m farlab.collect", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", metavar="DIR|GLOB", help="sweep dirs (or glob patterns) to collect")
    p.add_argument("--out", help="output dir (default: the first sweep dir)")
    p.add_argument("--metric", help="only tabulate/plot/test this metric (e.g. mcc or post_student_mcc)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--archive", nargs=2, metavar=("SWEEP", "DEST"),
                   help="copy SWEEP's metrics/configs/log tails (no weights) into the new dir DEST, then exit")
    args = p.parse_args(argv)
    if args.archive and (args.dirs or args.out or args.metric):
        p.error("--archive SWEEP DEST takes no other DIR, --out or --metric")
    if not args.archive and not args.dirs:
        p.error("give at least one DIR|GLOB to collect (or --archive SWEEP DEST)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.archive:
            res = archive_sweep(*args.archive)
            print(f"archived {res.jobs} job dirs ({res.files} files, {res.bytes} bytes) into {res.dest}; "
                  f"regenerate the tables with: python -m farlab.collect {args.archive[1]}")
            return 0
        summary = collect(args.dirs, args.out, args.metric, plots=not args.no_plots)
    except CollectError as e:
        print(f"farlab.collect: error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if not summary.runs:
        print("farlab.collect: no completed run yet (see the skipped list)", file=sys.stderr)
        return 1
    return 0
