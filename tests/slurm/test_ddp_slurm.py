"""One run as a 2-task SLURM job through conf/hydra/launcher/slurm.yaml (``hydra.launcher.tasks_per_node=2``):
submitit starts both tasks with srun, farlab sets the distributed environment from SLURM's variables
(farlab.distributed.export_slurm_environment) and the two tasks train one run with DDP (gloo). Its per-step losses
match one process at the same global batch (2 tasks x 4 rows = 1 x 8), within the tolerance of
tests/integration/test_distributed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farlab.atomic import is_complete
from tests.conftest import tiny_overrides
from tests.integration.test_distributed import LOSS_TOL, NO_DROPOUT
from tests.integration.test_resume import run_inprocess

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
# The job waits in the queue while other tests' jobs hold the node's CPUs, and a slow machine needs ~1 min to
# import and train: leave it plenty of time (the launcher returns as soon as the job ends).
JOB_TIMEOUT_S = 600


def overrides(store: Path, batch_size: int) -> list[str]:
    return tiny_overrides(store, **{"loss": "response_kl", "teacher_strategy": "frozen_base",
                                    "train.max_steps": STEPS, "train.batch_size": batch_size,
                                    "train.logging_steps": 1, "train.save_steps": STEPS, "train.num_threads": 1,
                                    **NO_DROPOUT})


def step_losses(run_dir: Path) -> dict[int, float]:
    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def test_two_slurm_tasks_train_one_run_with_ddp(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    launcher = [f"hydra.launcher.partition={slurm_cluster.partition}", "hydra.launcher.tasks_per_node=2",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={sweep}"]
    cmd = [sys.executable, "-m", "farlab.train", "-m", "hydra/launcher=slurm", *launcher,
           *overrides(tmp_path / "store", 4)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as err:
        for job in sweep.glob(".submitit/*"):  # this test's job only (its folder is named by the job id)
            subprocess.run(["scancel", job.name], check=False, timeout=30)
        logs = "\n".join(p.read_text()[-3000:] for p in sweep.glob(".submitit/*/*.err"))
        pytest.fail(f"the 2-task job did not finish in {JOB_TIMEOUT_S}s: {err}\n{logs}")
    logs = "\n".join(f"{p}:\n{p.read_text()[-3000:]}" for p in sorted(sweep.glob(".submitit/*/*_log.*")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs

    run_dir = sweep / "0"
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 2, meta
    assert meta["slurm"]["job_id"]
    last = run_dir / f"checkpoint-{STEPS}"
    assert is_complete(last) and {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in last.iterdir()}
    both = sorted(p.name for p in sweep.glob(".submitit/*/*_result.pkl"))
    assert len(both) == 2, f"expected one result per task, got {both}"  # both tasks ran (and returned)

    reference = tmp_path / "single"  # one process, batch 8
    run_inprocess(reference, overrides(tmp_path / "store", 8))
    want, got = step_losses(reference), step_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, abs=LOSS_TOL), f"step {step}"
