"""Tiny end-to-end runs: SFT and KD through the real Trainer, with every run-dir promise checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from farlab.data import build_task_data
from farlab.eval.calibration import CALIBRATION_KEYS
from farlab.eval.loop import evaluate_model
from farlab.train import execute
from tests.conftest import tiny_overrides

RUN_FILES = ("config.yaml", "run_metadata.json", "metrics.json", "final/config.json", "final/model.safetensors")
META_KEYS = {
    "status", "error", "seed", "task", "model", "loss", "teacher_strategy", "overrides", "command",
    "git_sha", "git_dirty", "host", "packages", "start_time", "end_time",
}  # fmt: skip
METRIC_KEYS = {"task", "primary_metric", "pre", "post", "transfer_gap", "train", "loss_components", "peak_memory_mb"}


def _run(compose_cfg, run_dir: Path, overrides: list[str]) -> dict:
    cfg = compose_cfg(overrides)
    return execute(cfg, run_dir, overrides)


def _capture_teacher(monkeypatch) -> dict:
    """Record the teacher a run prepares and its weights at that moment (``teacher``, ``before``)."""
    from farlab.teachers import strategies

    captured: dict = {}
    original = strategies.prepare_teacher

    def capture(ctx):
        teacher = original(ctx)
        captured["teacher"] = teacher
        captured["before"] = {k: v.clone() for k, v in teacher.state_dict().items()}
        return teacher

    monkeypatch.setattr("farlab.train.prepare_teacher", capture)
    return captured


def _check_run_dir(run_dir: Path) -> tuple[dict, dict]:
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"missing {name}"
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert META_KEYS <= set(meta) and meta["status"] == "completed" and meta["end_time"]
    assert METRIC_KEYS <= set(metrics)
    assert set(metrics["pre"]["student"]) == {"mcc", "accuracy"} | CALIBRATION_KEYS
    assert {"teacher_advantage", "student_gain", "transfer_efficiency"} <= set(metrics["transfer_gap"])
    return meta, metrics


def test_sft_run_has_no_teacher_and_final_reloads_to_the_post_metrics(compose_cfg, tmp_path, store_dir):
    run_dir = tmp_path / "sft"
    overrides = tiny_overrides(store_dir, loss="ce")
    metrics = _run(compose_cfg, run_dir, overrides)
    _, on_disk = _check_run_dir(run_dir)
    assert "teacher" not in metrics["pre"]  # SFT: the teacher is not even loaded
    assert not store_dir.exists()
    assert metrics["loss_components"].keys() == {"ce"}
    assert on_disk["train"]["global_step"] == 4

    # final/ reloads with from_pretrained and reproduces the post metrics exactly.
    cfg = compose_cfg(overrides)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    reloaded = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    assert evaluate_model(reloaded, data, 32, progress=False) == on_disk["post"]["student"]


def test_kd_frozen_sft_teacher_is_stored_reused_and_unchanged(compose_cfg, tmp_path, store_dir, caplog):
    overrides = tiny_overrides(store_dir, loss="response_kl", teacher_strategy="frozen_sft")
    first = _run(compose_cfg, tmp_path / "kd1", overrides)
    _check_run_dir(tmp_path / "kd1")
    entries = [p for p in store_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "COMPLETE").is_file()
    stored = AutoModelForSequenceClassification.from_pretrained(entries[0])
    stored_state = {k: v.clone() for k, v in stored.state_dict().items()}

    caplog.set_level("INFO")
    second = _run(compose_cfg, tmp_path / "kd2", overrides)
    assert "reusing SFT teacher from the store" in caplog.text
    assert len([p for p in store_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 1
    # Same seed twice on CPU: identical metrics, teacher SFT trained the first time, reused the second.
    assert first["pre"] == second["pre"] and first["post"] == second["post"]
    assert first["loss_components"] == second["loss_components"]
    assert {"ce", "response/raw", "response/weight", "response/weighted"} <= set(first["loss_components"])
    # The stored teacher is bitwise what the runs used and never changed.
    again = AutoModelForSequenceClassification.from_pretrained(entries[0]).state_dict()
    assert all(torch.equal(stored_state[k], again[k]) for k in stored_state)


def test_frozen_base_teacher_parameters_are_bitwise_unchanged(compose_cfg, tmp_path, store_dir, monkeypatch):
    captured = _capture_teacher(monkeypatch)
    metrics = _run(compose_cfg, tmp_path / "fb", tiny_overrides(store_dir, teacher_strategy="frozen_base"))
    after = captured["teacher"].state_dict()
    assert all(torch.equal(captured["before"][k], after[k]) for k in after)
    assert all(not p.requires_grad and p.grad is None for p in captured["teacher"].parameters())
    assert "teacher" in metrics["pre"] and "teacher" not in metrics["post"]
    assert not store_dir.exists()  # frozen_base needs no SFT teacher


def test_checkpoints_are_complete_and_rotated(compose_cfg, tmp_path, store_dir):
    run_dir = tmp_path / "ckpt"
    _run(compose_cfg, run_dir, tiny_overrides(store_dir, loss="ce", **{"train.save_total_limit": 1}))
    ckpts = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-4"]
    assert (run_dir / "checkpoint-4" / "COMPLETE").is_file()
    assert (run_dir / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (run_dir / ".staging").exists() or not any((run_dir / ".staging").iterdir())


def test_failed_run_records_status_and_error(compose_cfg, tmp_path, store_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in data loading")

    monkeypatch.setattr("farlab.train.build_task_data", boom)
    run_dir = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(compose_cfg, run_dir, tiny_overrides(store_dir, loss="ce"))
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["status"] == "failed" and "simulated crash" in meta["error"]
    assert not (run_dir / "metrics.json").exists()


def test_cotrained_teacher_changes_and_is_evaluated_before_and_after(compose_cfg, tmp_path, store_dir, monkeypatch):
    captured = _capture_teacher(monkeypatch)
    overrides = tiny_overrides(
        store_dir,
        teacher_strategy="cotrain_base",
        **{"teacher_strategy.cotrain.learning_rate": 1e-3, "teacher_strategy.cotrain.ce_weight": 0.5},
    )
    metrics = _run(compose_cfg, tmp_path / "cotrain", overrides)
    after = captured["teacher"].state_dict()
    assert any(not torch.equal(captured["before"][k], after[k]) for k in after)
    assert set(metrics["post"]) == {"student", "teacher"}
    assert "teacher_ce" in metrics["loss_components"]
    # The transfer gap uses the co-trained teacher as it ended.
    gap = metrics["transfer_gap"]
    expected = metrics["post"]["teacher"]["mcc"] - metrics["pre"]["student"]["mcc"]
    assert gap["teacher_advantage"] == pytest.approx(expected)
    # The co-trained teacher is saved beside the student in every checkpoint.
    assert (tmp_path / "cotrain" / "checkpoint-4" / "farlab_extras.safetensors").is_file()


@pytest.mark.slow
def test_wandb_offline_logs_every_loss_component_without_a_login(compose_cfg, tmp_path, store_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "wandb_run"
    overrides = tiny_overrides(store_dir, teacher_strategy="frozen_base", **{"wandb.mode": "offline"})
    _run(compose_cfg, run_dir, overrides)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = runs[0] / f"run-{runs[0].name.split('-')[-1]}.wandb"
    assert history.is_file() and history.stat().st_size > 0
    logged = history.read_bytes()
    for key in (b"loss/ce", b"loss/response/raw", b"loss/response/weighted", b"post/student/mcc"):
        assert key in logged
