"""The seed claim "frozen SFT teacher overconfident on imbalanced data" as one table (issue 11).

Reads the collector's ``results.csv`` of one or more archived sweeps (``python -m farlab.collect``) and prints a
Markdown table of the calibration of the teacher each student learned from: the frozen SFT teacher (its metrics
before training; it does not change) and the co-trained base teacher (its metrics after training). A run dir
whose config.yaml sets ``task.class_ratio`` trained on an imbalanced set; anything else on the task's own ratio.

    python scripts/seed_claim_table.py --loss combined_r docs/results/sweeps/seed_claim_sst2 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

# The teacher a student learned from: a frozen teacher is measured before training, a co-trained one after.
TEACHER_PHASE = {"frozen_sft": "pre", "cotrain_base": "post"}
COLUMNS = ("ece", "mean_confidence", "accuracy", "mcc", "max_class_rate")


def class_ratio(sweep: Path, run_dir: str) -> str:
    ratio = OmegaConf.load(sweep / run_dir / "config.yaml").task.get("class_ratio")
    return "task's own" if ratio is None else str(list(ratio))


def teacher_rows(results: pd.DataFrame) -> pd.DataFrame:
    """One row per completed run with a frozen SFT or co-trained base teacher: that teacher's calibration."""
    rows = []
    for _, run in results[results["teacher_strategy"].isin(TEACHER_PHASE)].iterrows():
        phase = TEACHER_PHASE[run["teacher_strategy"]]
        row = {"task": run["task"], "train ratio": class_ratio(Path(run["sweep"]), run["run_dir"]),
               "teacher": run["teacher_strategy"],
               "seed": int(run["seed"]), "loss": run["loss"]}
        row |= {f"teacher {c}": run.get(f"{phase}_teacher_{c}") for c in COLUMNS}
        row["student ece"] = run.get("post_student_ece")
        row["student max_class_rate"] = run.get("post_student_max_class_rate")
        rows.append(row)
    return pd.DataFrame(rows)


def main(sweeps: list[str], loss: str | None) -> None:
    results = pd.concat([pd.read_csv(Path(s) / "results.csv", dtype={"run_dir": str}).assign(sweep=s)
                         for s in sweeps], ignore_index=True)
    if loss is not None:  # a co-trained teacher depends on the loss it was trained with
        results = results[results["loss"] == loss]
    table = teacher_rows(results)
    keys = ["task", "train ratio", "teacher"]
    per_run = table.sort_values([*keys, "seed", "loss"])
    print("## Per run\n")
    print(per_run.to_markdown(index=False, floatfmt=".4f"))
    # The teacher does not depend on the student's loss: one value per (task, ratio, teacher, seed) for frozen
    # SFT teachers, so the summary averages over seeds after collapsing duplicates.
    per_seed = per_run.groupby([*keys, "seed"], as_index=False).mean(numeric_only=True)
    measured = [c for c in ("ece", "mean_confidence", "accuracy", "mcc")  # mcc: CoLA only
                if f"teacher {c}" in per_seed and per_seed[f"teacher {c}"].notna().any()]
    summary = per_seed.groupby(keys).agg(
        seeds=("seed", "nunique"),
        **{f"{c} mean": (f"teacher {c}", "mean") for c in measured},
        **{"ece min": ("teacher ece", "min"), "ece max": ("teacher ece", "max")},
    ).reset_index()
    print("\n## Mean over seeds\n")
    print(summary.to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="archived sweep dirs holding the collector's results.csv")
    parser.add_argument("--loss", help="only runs with this loss (e.g. combined_r)")
    args = parser.parse_args()
    main(args.sweeps, args.loss)
