"""The small table a run prints at the end: pre/post metrics and the transfer gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from farlab.eval.calibration import CALIBRATION_KEYS

SHOWN_CALIBRATION = ("ece", "mean_confidence")  # the rest of the calibration entries stay in metrics.json


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(metrics: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    pre, post = metrics["pre"], metrics["post"]
    # Task metrics first, then two calibration columns: the table must stay readable in an 80-column terminal.
    names = [n for n in pre["student"] if n not in CALIBRATION_KEYS]
    names += [n for n in SHOWN_CALIBRATION if n in pre["student"]]
    table = Table(title=f"{metrics['task']} ({metrics['eval_split']})")
    table.add_column("model")
    for name in names:
        table.add_column(name, justify="right")
    rows = [("teacher (pre)", pre.get("teacher")), ("student (pre)", pre["student"]),
            ("student (post)", post["student"]), ("teacher (post)", post.get("teacher"))]  # fmt: skip
    for split, stages in (metrics.get("extra_eval") or {}).items():
        rows += [(f"{role} ({stage}, {split})", values) for stage in ("pre", "post")
                 for role, values in stages[stage].items()]
    for label, values in rows:
        if values is not None:
            table.add_row(label, *(_fmt(values.get(n)) for n in names))
    console.print(table)
    gap = metrics["transfer_gap"]
    console.print(
        f"transfer gap on {gap['metric']}: teacher advantage {_fmt(gap['teacher_advantage'])}, "
        f"student gain {_fmt(gap['student_gain'])}, transfer efficiency {_fmt(gap['transfer_efficiency'])}"
        + (f" ({gap['transfer_efficiency_note']})" if gap["transfer_efficiency_note"] else "")
    )
    console.print(f"train runtime {metrics['train']['runtime_s']:.1f}s; run dir: {run_dir}")
