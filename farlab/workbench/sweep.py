"""``--sweep <dir>``: one tool on every completed run of a sweep, one summary table.

Job dirs are found the way the collector finds them (a folder holding ``run_metadata.json``); runs that are not
completed or lack ``final/`` are listed with the reason and skipped. The table has one row per run (its F/A/R
cell, teacher strategy, seed, the post-training ECE from metrics.json, and the tool's summary numbers) and a
mean per (cell, strategy). Written to ``<sweep dir>/workbench/<tool>_summary.{csv,json}``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from farlab.workbench.loading import (
    WORKBENCH_DIR,
    RunContext,
    ToolOptions,
    WorkbenchError,
    check_run_dir,
    open_run,
)
from farlab.workbench.outputs import console, print_table, write_csv, write_json

# Folders inside a job dir that never hold job dirs.
PRUNE = {"final", "final_teacher", WORKBENCH_DIR, ".hydra", ".submitit", "wandb", "plots", ".staging"}


def find_job_dirs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in PRUNE and not d.startswith("checkpoint-"))
        if "run_metadata.json" in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def _metrics_row(ctx: RunContext) -> dict[str, Any]:
    post, pre = ctx.metrics.get("post", {}), ctx.metrics.get("pre", {})
    teacher = post.get("teacher") or pre.get("teacher") or {}
    student = post.get("student", {})
    primary = ctx.metrics.get("primary_metric", ctx.data.primary_metric)
    return {f"student_{primary}": student.get(primary), "student_ece": student.get("ece"),
            "student_mean_confidence": student.get("mean_confidence"), "teacher_ece": teacher.get("ece"),
            "teacher_mean_confidence": teacher.get("mean_confidence")}


def _find_baseline(opened: list[RunContext], ctx: RunContext) -> RunContext | None:
    """The sweep's CE-only run with the same task, model and seed (no teacher: the F/A/R cell 'ce')."""
    for other in opened:
        same = (other.cfg.task.name, other.cfg.model.name, other.cfg.seed) == (
            ctx.cfg.task.name, ctx.cfg.model.name, ctx.cfg.seed)
        if same and other.plan.far_cell == "ce" and other is not ctx:
            return other
    return None


def run_sweep(root: Path, tool: str, run_tool: Callable[[RunContext, ToolOptions], dict[str, Any]],
              opts: ToolOptions, device: str | None) -> list[dict[str, Any]]:
    if not root.is_dir():
        raise WorkbenchError(f"--sweep {root}: no such directory")
    jobs = find_job_dirs(root)
    if not jobs:
        raise WorkbenchError(f"--sweep {root}: no run dirs (folders with run_metadata.json) below it")
    opened, rows, skipped = [], [], []
    for job in jobs:
        try:
            check_run_dir(job)
            opened.append(open_run(job, device))
        except WorkbenchError as err:
            skipped.append({"run_dir": str(job.relative_to(root)), "reason": str(err)})
    for ctx in opened:
        console.rule(f"{tool}: {ctx.run_dir.relative_to(root)}")
        base = {"run_dir": str(ctx.run_dir.relative_to(root)), "loss": ctx.cfg.loss.name, "cell": ctx.plan.far_cell,
                "teacher_strategy": ctx.cfg.teacher_strategy.name, "seed": int(ctx.cfg.seed), **_metrics_row(ctx)}
        run_opts = opts
        if opts.baseline is None and ctx.plan.far_cell != "ce":
            run_opts = dataclasses.replace(opts, baseline=_find_baseline(opened, ctx))
        try:
            rows.append(base | run_tool(ctx, run_opts))
        except WorkbenchError as err:
            skipped.append({"run_dir": base["run_dir"], "reason": str(err)})
        ctx.release()  # one run's models at a time
    out = root / WORKBENCH_DIR
    out.mkdir(exist_ok=True)
    by_cell = _by_cell(rows)
    write_csv(out / f"{tool}_summary.csv", rows)
    write_json(out / f"{tool}_summary.json", {"tool": tool, "sweep_dir": str(root), "runs": rows,
                                              "by_cell": by_cell, "skipped": skipped})
    numeric = [c for c in ("student_ece", "teacher_ece", "cka_mapped_after", "agreement", "headft_gap_closed",
                           "probe_mean_best_gain") if any(c in r for r in rows)]
    print_table(f"{tool} over {len(rows)} runs of {root} (means per cell)", ["cell", "strategy", "runs", *numeric],
                [(c["cell"], c["teacher_strategy"], c["runs"], *(c.get(k) for k in numeric)) for c in by_cell],
                caption=f"{len(skipped)} skipped (see {tool}_summary.json); wrote {out}")
    return rows


def _by_cell(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    numeric = frame.select_dtypes("number").columns.drop("seed", errors="ignore")
    grouped = frame.groupby(["cell", "teacher_strategy"], sort=True)
    table = grouped[list(numeric)].mean().reset_index()
    table.insert(2, "runs", grouped.size().values)
    return table.to_dict("records")
