"""One run as a 2-task SLURM job through conf/hydra/launcher/slurm.yaml (``hydra.launcher.tasks_per_node=2``):
submitit starts both tasks with srun, farlab sets the distributed environment from SLURM's variables
(farlab.distributed.export_slurm_environment) and the two tasks train one run with DDP (gloo).

Mid-run the job step gets ``scancel --signal=USR1`` (what a cluster sends before the time limit): both ranks stop
after the same step with one complete checkpoint (each rank's RNG state in it), rank 0 requeues the job through
submitit, the other rank exits, and the restarted job resumes in the same run dir. Its per-step losses (before and
after the stop) and final weights match one process at the same global batch (2 tasks x 4 rows = 1 x 8), within
the tolerance of tests/integration/test_distributed.py. One job covers both the DDP equivalence and the multi-task
requeue path, to keep the suite short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farlab.atomic import is_complete
from farlab.trainer.checkpoints import latest_complete_checkpoint
from tests.conftest import tiny_overrides
from tests.integration.test_distributed import LOSS_TOL, NO_DROPOUT
from tests.integration.test_resume import run_inprocess, tensors

REPO = Path(__file__).resolve().parents[2]
# The signal must land while the job still trains: scancel goes through slurmctld, and a CI run saw a USR1 handled
# 17 steps after it was sent (tests/slurm/test_sweep_slurm.py). A checkpoint every 10 steps, the signal after the
# first, 100 steps in all: several seconds of margin on a busy machine.
STEPS, SAVE_STEPS = 100, 10
# The job waits in the queue while other tests' jobs hold the node's CPUs, a slow machine needs ~1 min to import
# and train, and the requeued job waits again: leave it plenty of time (the launcher returns once the job ends).
JOB_TIMEOUT_S = 900
WEIGHT_TOL = 1e-5  # two processes sum gradients in another order than one (measured 4e-9 after 4 steps)


def overrides(store: Path, batch_size: int) -> list[str]:
    return tiny_overrides(store, **{"loss": "response_kl", "teacher_strategy": "frozen_base",
                                    "train.max_steps": STEPS, "train.batch_size": batch_size,
                                    "train.logging_steps": 1, "train.save_steps": SAVE_STEPS,
                                    "train.save_total_limit": STEPS, "train.num_threads": 1, **NO_DROPOUT})


def step_losses(run_dir: Path) -> dict[int, float]:
    """Every logged step's loss: the resumed Trainer carries the log history of the steps before the stop."""
    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def job_logs(sweep: Path) -> str:
    return "\n".join(f"{p}:\n{p.read_text()[-3000:]}" for p in sorted(sweep.glob(".submitit/**/*_log.*")))


def cancel_jobs(sweep: Path) -> None:
    for job in sweep.glob(".submitit/*"):  # this test's job only (its folder is named by the job id)
        subprocess.run(["scancel", job.name], check=False, timeout=30)


def wait_for_checkpoint(run_dir: Path, sweep: Path, proc: subprocess.Popen) -> dict:
    """The run's metadata once it has written a complete checkpoint (so the job is mid-training)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while latest_complete_checkpoint(run_dir) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            cancel_jobs(sweep)
            out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
            pytest.fail(f"no checkpoint from the 2-task job (launcher rc={proc.poll()}):\n{out[-3000:]}"
                        f"\n{job_logs(sweep)}")
        time.sleep(0.2)
    return json.loads((run_dir / "run_metadata.json").read_text())


def test_two_slurm_tasks_train_one_run_with_ddp_and_survive_a_requeue(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    launcher = [f"hydra.launcher.partition={slurm_cluster.partition}", "hydra.launcher.tasks_per_node=2",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={sweep}"]
    cmd = [sys.executable, "-m", "farlab.train", "-m", "hydra/launcher=slurm", *launcher,
           *overrides(tmp_path / "store", 4)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = sweep / "0"
    job = wait_for_checkpoint(run_dir, sweep, proc)["slurm"]["job_id"]
    # Signal the job step (.0, submitit's srun): it reaches both tasks, as a cluster's --signal=USR1@<s> does.
    subprocess.run(["scancel", "--signal=USR1", f"{job}.0"], check=True, timeout=30)

    reference = tmp_path / "single"  # one process, batch 8, uninterrupted: computed while the job finishes
    run_inprocess(reference, overrides(tmp_path / "store", 8))
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        cancel_jobs(sweep)
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the 2-task job did not finish in {JOB_TIMEOUT_S}s:\n{out[-3000:]}\n{job_logs(sweep)}")
    assert proc.returncode == 0, out[-3000:] + job_logs(sweep)

    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 2, meta
    assert meta["attempts"] == 2 and meta["slurm"]["job_id"] == job, meta  # requeued: the same job, run dir
    log = (run_dir / "output.log").read_text()
    assert "received: saving a checkpoint at step" in log and "resuming from" in log, log[-3000:]
    rank0 = "".join(p.read_text() for p in sweep.glob(f".submitit/{job}/{job}_0_log.*"))
    assert f"Requeued job {job}" in rank0  # rank 0 requeued through submitit (its log spans both attempts)
    rank1 = "".join(p.read_text() for p in sweep.glob(f".submitit/{job}/{job}_1_log.*"))
    assert "Not checkpointing nor requeuing" in rank1 and rank1.count("rank 1 of 2") == 2  # exited, restarted
    both = sorted(p.name for p in sweep.glob(".submitit/*/*_result.pkl"))
    assert len(both) == 2, f"expected one result per task, got {both}"  # both tasks ran to the end
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stop = int(metrics["train"]["resumed_from"].rsplit("-", 1)[1])
    assert 0 < stop < STEPS  # the stop landed mid-training, and the job resumed from it
    stopped = run_dir / f"checkpoint-{stop}"  # one complete checkpoint, written by both ranks at the same step
    assert is_complete(stopped) and {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in stopped.iterdir()}

    want, got = step_losses(reference), step_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, abs=LOSS_TOL), f"step {step}"
    ta, tb = (tensors(d / "final" / "model.safetensors") for d in (reference, run_dir))
    assert ta.keys() == tb.keys()
    worst = max((ta[k] - tb[k]).abs().max().item() for k in ta)
    assert worst < WEIGHT_TOL, worst
