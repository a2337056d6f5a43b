"""Data-parallel training across processes: real ``torchrun --nproc_per_node=2`` jobs (gloo on CPU).

farlab's ``train.batch_size`` is per process, as in the Trainer: 2 processes x 4 rows is the same global batch as
1 process x 8 rows, and gives the same losses (DDP averages the gradients of the two halves). The pair has no
dropout here, so the comparison tests the data split and the gradient averaging, not two random streams.
The KD run trains its SFT teacher first, so the store's build across ranks is exercised too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from farlab.atomic import is_complete
from farlab.trainer import checkpoints
from farlab.trainer.signals import PREEMPTED_EXIT_CODE
from tests.conftest import tiny_overrides
from tests.integration.test_resume import run_inprocess

PROBE = Path(__file__).with_name("ddp_probe.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 6
NO_DROPOUT = {f"++model.{side}.config.{p}": 0.0 for side in ("teacher", "student")
              for p in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
# Float sums in another order (two half-batches averaged by all-reduce): measured 6e-8 (losses), 4e-9 (weights).
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5
TIMEOUT_S = 300


def overrides(store: Path, batch_size: int) -> list[str]:
    return tiny_overrides(store, **{
        "loss": "response_kl", "teacher_strategy": "frozen_sft",
        "train.max_steps": STEPS, "train.batch_size": batch_size, "train.logging_steps": 1, "train.save_steps": 3,
        "teacher_strategy.recipe.batch_size": batch_size, "train.num_threads": 1, **NO_DROPOUT})


def launch(nproc: int, run_dir: Path, ovr: list[str], probe: Path, signal_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "FARLAB_PROBE_DIR": str(probe),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    if signal_at:
        env["FARLAB_PROBE_SIGNAL"] = signal_at
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", str(PROBE)]
    return subprocess.run([*cmd, *ovr, f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def events(probe: Path, rank: int) -> list[str]:
    path = probe / f"rank{rank}.jsonl"
    return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.is_file() else []


def step_losses(run_dir: Path) -> dict[int, float]:
    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run_dir / "final" / "model.safetensors"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def check(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """One process, batch 8 (in this process: no launcher)."""
    root = tmp_path_factory.mktemp("single")
    run_inprocess(root / "run", overrides(root / "store", 8))
    return root / "run"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """Two processes, batch 4 each."""
    root = tmp_path_factory.mktemp("ddp")
    check(launch(2, root / "run", overrides(root / "store", 4), root / "probe"))
    return root


def test_two_processes_match_one_process_at_the_same_global_batch(single, ddp):
    run_dir = ddp / "run"
    want, got = step_losses(single), step_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, abs=LOSS_TOL), f"step {step}"
    a, b = weights(single), weights(run_dir)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_TOL
    m1, m2 = read_json(single / "metrics.json"), read_json(run_dir / "metrics.json")
    assert m2["post"]["student"]["accuracy"] == m1["post"]["student"]["accuracy"]
    assert m2["train"]["final_loss"] == pytest.approx(m1["train"]["final_loss"], abs=LOSS_TOL)  # summed over ranks
    assert m2["loss_components"].keys() == m1["loss_components"].keys()
    assert m2["train"]["tokens_per_s"] > 0
    assert read_json(run_dir / "run_metadata.json")["world_size"] == 2
    assert read_json(single / "run_metadata.json")["world_size"] == 1


def test_rank_zero_alone_writes_the_run_dir_and_evaluates(ddp):
    rank0, rank1 = events(ddp / "probe", 0), events(ddp / "probe", 1)
    assert rank0.count("start") == 1 and rank0.count("write_metrics") == 1 and rank0.count("finish") == 1
    assert rank0.count("evaluate_model") == 3  # pre student, pre teacher, post student: once each
    assert rank0.count("export_student") == 1 and rank0.count("print_summary") == 1
    assert rank1 == []  # nothing written, nothing evaluated
    run_dir = ddp / "run"
    assert read_json(run_dir / "run_metadata.json")["status"] == "completed"
    last = run_dir / f"checkpoint-{STEPS}"
    assert is_complete(last)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in last.iterdir()}  # each rank's RNG
    store = ddp / "store"
    entries = [p for p in store.iterdir() if p.is_dir()]
    assert len(entries) == 1 and is_complete(entries[0])  # one SFT teacher, trained by both ranks
    assert not list(store.glob(".*staging*"))


def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_resume_continues(ddp, tmp_path):
    stop_step = 2
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    ovr = overrides(ddp / "store", 4)  # the store holds the SFT teacher already: reused by both ranks
    stopped = launch(2, run_dir, ovr, probe, signal_at=f"1:{stop_step}")
    assert stopped.returncode != 0  # torchrun reports its workers' exit code 75
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in stopped.stderr, stopped.stderr[-4000:]
    assert "signal" in events(probe, 1) and "signal" not in events(probe, 0)
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "preempted" and f"after step {stop_step}" in meta["error"]
    assert checkpoints.latest_complete_checkpoint(run_dir) == run_dir / f"checkpoint-{stop_step}"
    assert [p.name for p in run_dir.glob("checkpoint-*")] == [f"checkpoint-{stop_step}"]
    assert not (run_dir / "metrics.json").exists()

    check(launch(2, run_dir, ovr, probe))
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["train"]["resumed_from"] == str(run_dir / f"checkpoint-{stop_step}")
    assert read_json(run_dir / "run_metadata.json")["attempts"] == 2
    reference = ddp / "run"  # the uninterrupted 2-process run: resuming restores every rank's state exactly
    assert step_losses(run_dir) == step_losses(reference)
    a, b = weights(reference), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
