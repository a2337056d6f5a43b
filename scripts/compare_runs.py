"""Runs side by side, one row each, from their own files: a results table for runs that are not one sweep's cells.

The collector (``python -m farlab.collect``) tabulates a sweep's loss x strategy cells; a comparison across setups
(a KD run with a transfer set vs the FAR sweep's CE and KD runs, a real pair vs another) is a handful of run dirs
with a label each. This reads each dir's config.yaml and metrics.json and prints one Markdown table: the student's
post-training metrics, its teacher's, the recipe fields that differ between the runs, steps and wall time.

    python scripts/compare_runs.py "CE=docs/results/sweeps/a/run1" "KD + transfer=docs/results/sweeps/b/0"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

# Recipe fields worth a column when they differ between the compared runs.
RECIPE = ("seed", "loss.name", "teacher_strategy.name", "task.train_limit", "task.class_ratio", "task.transfer.source",
          "task.transfer.ratio", "train.epochs", "train.learning_rate", "train.batch_size")
STUDENT = ("accuracy", "f1", "mcc", "ece", "mean_confidence", "max_class_rate")


def row(label: str, run_dir: Path) -> dict[str, Any]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    post, pre = metrics["post"], metrics["pre"]
    teacher = post.get("teacher") or pre.get("teacher") or {}  # a co-trained teacher after training
    out: dict[str, Any] = {"run": label}
    out |= {key: _plain(OmegaConf.select(cfg, key)) for key in RECIPE}
    out |= {f"student {m}": _metric(post["student"], m) for m in STUDENT}
    out[f"teacher {metrics['primary_metric']}"] = teacher.get(metrics["primary_metric"])
    out |= {"steps": metrics["train"]["global_step"], "train s": metrics["train"]["runtime_s"]}
    return out


def _plain(value: Any) -> Any:
    """Lists (a class ratio) as text, as pandas would otherwise spread them over rows; null as written in YAML."""
    if value is None:
        return "null"
    return str(OmegaConf.to_container(value)) if OmegaConf.is_config(value) else value


def _metric(evaluation: dict[str, Any], name: str) -> Any:
    if name == "max_class_rate":  # the fraction of predictions in the most predicted class (1.0 = majority only)
        rates = evaluation.get("pred_class_rate") or {}
        return max(rates.values()) if rates else None
    return evaluation.get(name)


def table(pairs: list[tuple[str, Path]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    frame = pd.DataFrame([row(label, path) for label, path in pairs])
    same = [c for c in RECIPE if frame[c].nunique(dropna=False) == 1]  # shown once, above the table
    empty = [c for c in frame.columns if frame[c].isna().all()]
    return frame.drop(columns=same + empty), {c: frame[c].iloc[0] for c in same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (a finished run dir with config.yaml, metrics.json)")
    args = parser.parse_args()
    pairs = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "metrics.json").is_file():
            parser.error(f"{spec!r}: expected LABEL=RUN_DIR with a metrics.json in RUN_DIR")
        pairs.append((label, Path(path)))
    frame, shared = table(pairs)
    print("Shared by every run: " + ", ".join(f"{k}={v}" for k, v in shared.items()) + "\n")
    print(frame.to_markdown(index=False, floatfmt=".4f", missingval="-"))


if __name__ == "__main__":
    main()
