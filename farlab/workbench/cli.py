"""``python -m farlab.workbench <tool> <run dir> [options]``: post-hoc analyses of a finished run.

Each tool writes ``<run dir>/workbench/<tool>/`` (JSON + CSV + PNG) and prints a short table; nothing else in
the run dir changes. See docs/workbench.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farlab.trainer.fit import set_threads
from farlab.workbench.cka import run_cka
from farlab.workbench.disagree import run_disagree
from farlab.workbench.headft import run_headft
from farlab.workbench.loading import RunContext, ToolOptions, WorkbenchError, open_run
from farlab.workbench.outputs import console, print_table, write_json
from farlab.workbench.probe import run_probe
from farlab.workbench.sweep import run_sweep

Tool = Callable[[RunContext, ToolOptions], dict[str, Any]]
TOOLS: dict[str, Tool] = {"probe": run_probe, "cka": run_cka, "disagree": run_disagree, "headft": run_headft}
NEEDS_CLASSES = {"probe", "headft"}  # skipped by `all` on generation runs

EXAMPLES = """examples:
  python -m farlab.workbench probe outputs/cola/combined_r/2026-12-01_10-00-00
  python -m farlab.workbench cka RUN --limit 256 --unbiased --teacher-layers 0,2,4,6
  python -m farlab.workbench disagree RUN --top 30
  python -m farlab.workbench headft RUN --baseline RUN_OF_THE_CE_TWIN --epochs 3 --lr 1e-3
  python -m farlab.workbench all RUN --baseline RUN_OF_THE_CE_TWIN
  python -m farlab.workbench cka --sweep multirun/far_cola_minilm_seed1     # one summary table over the sweep

outputs: RUN/workbench/<tool>/ (JSON + CSV + PNG); with --sweep also SWEEP/workbench/<tool>_summary.{csv,json}.
layers: 0 = embeddings, i = block i (hidden_states[i]). See docs/workbench.md for every output and the headft rule.
"""


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated layer indices, e.g. 0,2,4") from err


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m farlab.workbench", description="Why did a student learn (or not)? Post-hoc tools on a "
        "finished run dir: layer probes, CKA, teacher-student disagreement, head-only fine-tuning.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=[*TOOLS, "all"], help="the analysis to run (all = the four in turn)")
    parser.add_argument("run_dir", nargs="?", type=Path, help="a completed run dir (with final/ and metrics.json)")
    parser.add_argument("--sweep", type=Path, help="run the tool on every completed run below this sweep dir")
    parser.add_argument("--limit", type=_positive, help="examples read per split (probe: train rows, default 2000; "
                        "cka: eval rows, default 512; disagree: eval rows, default all; headft: train rows, "
                        "default all)")
    parser.add_argument("--seed", type=int, help="seed of the subsets and fits (default: the run's seed)")
    parser.add_argument("--batch-size", type=_positive, help="forward batch size (default: train.eval_batch_size)")
    parser.add_argument("--threads", type=_positive, help="CPU threads (default: the run's train.num_threads)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--student-layers", type=_layers, help="probe/cka: student layers, e.g. 0,1,3 (default all)")
    parser.add_argument("--teacher-layers", type=_layers, help="probe/cka: teacher layers (default all)")
    parser.add_argument("--unbiased", action="store_true", help="cka: unbiased HSIC estimator (Song et al. 2012)")
    parser.add_argument("--top", type=_positive, default=20, help="disagree: examples listed in Markdown (20)")
    parser.add_argument("--baseline", type=Path, help="headft: the CE-only twin's run dir, compared with the student")
    parser.add_argument("--epochs", type=float, help="headft: epochs of head training (default: train.epochs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="headft: head learning rate (1e-3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _options(args: argparse.Namespace, device: str | None) -> ToolOptions:
    baseline = open_run(args.baseline, device) if args.baseline else None
    return ToolOptions(limit=args.limit, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                       student_layers=args.student_layers, teacher_layers=args.teacher_layers,
                       unbiased=args.unbiased, top=args.top, epochs=args.epochs, learning_rate=args.lr,
                       baseline=baseline)


def run_all(ctx: RunContext, opts: ToolOptions) -> dict[str, Any]:
    """The four tools in turn, sharing the loaded models; a wall time per tool in workbench/all.json."""
    summary: dict[str, Any] = {}
    timings: dict[str, float | None] = {}
    for name, tool in TOOLS.items():
        if name in NEEDS_CLASSES and not ctx.classifies:
            console.print(f"[yellow]all: skipping {name}: task {ctx.data.name!r} has no class labels[/yellow]")
            timings[name] = None
            continue
        start = time.perf_counter()
        summary |= tool(ctx, opts)
        timings[name] = round(time.perf_counter() - start, 1)  # includes loading models the first tool needs
    write_json(ctx.out_root / "all.json", {"tool": "all", **ctx.describe(*ctx.loaded()),
                                           "wall_s": timings, "summary": summary})
    print_table("workbench: wall time per tool", ["tool", "seconds"], list(timings.items()))
    return summary


def _quiet() -> None:
    """--no-progress: no progress bars from datasets' tokenisation or transformers' weight loading either."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:
        _quiet()
    tool = run_all if args.tool == "all" else TOOLS[args.tool]
    try:
        if (args.run_dir is None) == (args.sweep is None):
            raise WorkbenchError("give either a run dir or --sweep <sweep dir> (one of them)")
        if args.baseline is not None and args.tool not in ("headft", "all"):
            raise WorkbenchError(f"--baseline is a headft option; {args.tool} does not use it")
        opts = _options(args, args.device)
        if args.sweep is not None:
            set_threads(args.threads)
            run_sweep(args.sweep.resolve(), args.tool, tool, opts, args.device)
            return 0
        ctx = open_run(args.run_dir, args.device)
        set_threads(args.threads or ctx.cfg.train.num_threads)
        tool(ctx, opts)
    except WorkbenchError as err:
        print(f"farlab.workbench: error: {err}", file=sys.stderr)
        return 2
    return 0
