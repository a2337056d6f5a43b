"""A real tiny KD run on an MNLI-style fixture: the extra eval file and calibration reach metrics.json,
the W&B summary and the printed table."""

from __future__ import annotations

import json
import sys
import types

from rich.console import Console
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from farlab.data import build_task_data
from farlab.eval.calibration import CALIBRATION_KEYS
from farlab.eval.loop import evaluate_model
from farlab.report import print_summary
from farlab.train import execute
from farlab.trainer.fit import finish_wandb
from tests.conftest import tiny_overrides
from tests.unit.test_glue_extra_eval import write_mnli


def test_mnli_matched_and_mismatched_both_in_metrics_json(compose_cfg, tmp_path, store_dir, monkeypatch):
    mnli = write_mnli(tmp_path / "mnli", {"train.tsv": 48, "dev_matched.tsv": 15, "dev_mismatched.tsv": 12})
    overrides = tiny_overrides(store_dir, task="mnli", teacher_strategy="frozen_base", **{"task.data_dir": str(mnli)})
    run_dir = tmp_path / "run"
    metrics = execute(compose_cfg(overrides), run_dir, overrides)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["eval_split"] == "dev_matched.tsv"
    extra = on_disk["extra_eval"]["dev_mismatched"]
    assert set(extra["pre"]) == {"student", "teacher"} and set(extra["post"]) == {"student"}  # frozen teacher
    assert set(extra["post"]["student"]) == {"accuracy"} | CALIBRATION_KEYS
    assert set(on_disk["post"]["student"]) == {"accuracy"} | CALIBRATION_KEYS
    assert set(extra["post"]["student"]["per_class_recall"]) == {"entailment", "neutral", "contradiction"}
    assert "response/teacher_entropy" in on_disk["loss_components"]
    assert on_disk["best"].keys() == {"accuracy"}  # peaks on the task metric only

    # final/ scored on a data dir whose primary eval file is the mismatched one reproduces the extra entry.
    alone = write_mnli(tmp_path / "alone", {"train.tsv": 48})
    (alone / "dev_matched.tsv").write_text((mnli / "dev_mismatched.tsv").read_text())
    kept = [o for o in overrides if not o.startswith("task.data_dir=")]
    cfg = compose_cfg([*kept, f"task.data_dir={alone}", "task.extra_eval_files=[]"])
    data = build_task_data(cfg.task, AutoTokenizer.from_pretrained(run_dir / "final"), cfg.seed)
    final = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert evaluate_model(final, data, 32, progress=False) == extra["post"]["student"]

    # W&B summary: nested entries flattened to /-joined keys, None (absent-class recall) left out.
    logged: dict = {}
    fake = types.SimpleNamespace(run=types.SimpleNamespace(summary=logged), finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    finish_wandb(metrics)
    assert logged["extra_eval/dev_mismatched/post/student/accuracy"] == extra["post"]["student"]["accuracy"]
    assert logged["pre/teacher/ece"] == on_disk["pre"]["teacher"]["ece"]
    recall = on_disk["post"]["student"]["per_class_recall"]
    assert {k: logged[f"post/student/per_class_recall/{k}"] for k in recall if recall[k] is not None} == {
        k: v for k, v in recall.items() if v is not None}
    assert all(not isinstance(v, dict) and v is not None for v in logged.values())

    console = Console(record=True, width=200)
    print_summary(metrics, run_dir, console=console)
    text = console.export_text()
    assert "student (post, dev_mismatched)" in text and "teacher (pre, dev_mismatched)" in text
    assert "mean_confidence" in text and "per_class_recall" not in text
