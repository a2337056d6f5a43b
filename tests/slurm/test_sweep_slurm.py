"""The FAR factorial sweep (8 jobs, tiny BERTs) as one SLURM job array through conf/hydra/launcher/slurm.yaml, with
one task sent ``scancel --signal=USR1`` mid-run: it checkpoints, requeues itself through submitit, restarts in the
same run dir, resumes and ends bitwise where an uninterrupted run ends. Then ``farlab.collect`` on the sweep dir.

No ``hydra.sweep.dir`` is passed: the sweep dir is far_factorial's ``multirun/${now:...}`` (under the test's cwd), so
a requeued task that re-resolved the timestamp would write a second sweep dir and fail the test.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from farlab.trainer import checkpoints
from tests.integration.test_resume import assert_bitwise, run_inprocess
from tests.integration.test_sweep_local import (
    LOSSES,
    STRATEGY,
    check_sweep,
    finish_sweep,
    fixed_overrides,
    job_name,
    read_json,
    start_sweep,
    sweep_command,
    wait_for_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
# combined_f is array task 0: it starts in the first wave, so its requeue wait (~15 s) overlaps the other tasks.
TARGET = "combined_f"
# The signal must land while the job still trains. scancel goes through slurmctld: a CI run saw its USR1 handled
# 17 steps after the first checkpoint (step 4) of a 24-step job. 100 steps leave several seconds of margin.
MAX_STEPS = 100


@pytest.mark.slow
def test_far_sweep_on_slurm_with_usr1_preemption(slurm_cluster, tmp_path: Path) -> None:
    fixed = fixed_overrides(tmp_path / "store", max_steps=MAX_STEPS)
    launcher = [f"hydra.launcher.partition={slurm_cluster.partition}", "hydra.launcher.timeout_min=15"]
    proc = start_sweep(sweep_command("slurm", fixed, launcher), cwd=tmp_path)

    meta = wait_for_checkpoint(tmp_path, TARGET, proc)
    slurm = meta["slurm"]
    task = f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    # What a cluster sends before the time limit with --signal=USR1@<s>; submitit alone would not survive it.
    # Signal the task's step (.0, submitit's srun): on Slurm 22.05 `scancel --signal=USR1 <array>_<task>` delivers
    # the signal but, while other tasks of the array are pending, answers "Job can not be altered now" and re-sends
    # it every few seconds for ~30 s, which would also hit the requeued task once it restarts.
    subprocess.run(["scancel", "--signal=USR1", f"{task}.0"], check=True, timeout=30)

    reference = tmp_path / "reference"  # the uninterrupted run, computed while the array finishes
    ovr = [f"{k}={v}" for k, v in fixed.items()] + [f"loss={TARGET}", f"teacher_strategy={STRATEGY}", "seed=42"]
    run_inprocess(reference, ovr)

    finish_sweep(proc)
    sweep = check_sweep(tmp_path, TARGET, reference)

    metas = {loss: read_json(sweep / job_name(loss) / "run_metadata.json") for loss in LOSSES}
    assert {m["slurm"]["array_job_id"] for m in metas.values()} == {slurm["array_job_id"]}  # one array
    assert sorted(int(m["slurm"]["array_task_id"]) for m in metas.values()) == list(range(len(LOSSES)))
    assert metas[TARGET]["slurm"] == slurm  # the requeued task: same SLURM ids, same run dir
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").rglob(f"{task}_0_log.*"))
    assert f"Requeued job {task}" in submitit_log


SBATCH = """#!/bin/bash
#SBATCH --partition={partition}
#SBATCH --cpus-per-task=1
#SBATCH --time=15
#SBATCH --open-mode=append
#SBATCH --output={out}/slurm-%j.out
# The run dir is named after the job id, which survives a requeue, so the restarted job resumes in it.
srun {python} -m farlab.train {overrides} hydra.run.dir={out}/run-$SLURM_JOB_ID
"""


@pytest.mark.slow
def test_plain_sbatch_job_requeues_itself_on_usr1(slurm_cluster, tmp_path: Path) -> None:
    """Without submitit: farlab requeues its own job with `scontrol requeue` and resumes after the restart."""
    fixed = fixed_overrides(tmp_path / "store", max_steps=MAX_STEPS)
    ovr = [f"{k}={v}" for k, v in fixed.items()] + [f"loss={TARGET}", f"teacher_strategy={STRATEGY}"]
    script = tmp_path / "job.sh"
    script.write_text(
        SBATCH.format(partition=slurm_cluster.partition, out=tmp_path, python=sys.executable, overrides=" ".join(ovr))
    )
    job = subprocess.run(
        ["sbatch", "--parsable", str(script)], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    run_dir = tmp_path / f"run-{job}"
    try:
        wait(lambda: checkpoints.latest_complete_checkpoint(run_dir), 120, "a checkpoint", tmp_path)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        reference = tmp_path / "reference"
        run_inprocess(reference, ovr)
        wait(lambda: not squeue(job), 150, "the job to end", tmp_path)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30, check=False)  # a no-op once it ended

    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "completed" and meta["attempts"] == 2, (meta, slurm_log(tmp_path))
    assert meta["slurm"]["job_id"] == job
    log = (run_dir / "output.log").read_text()
    assert f"requeueing SLURM job {job}" in log and "resuming from" in log
    got, want = read_json(run_dir / "metrics.json"), read_json(reference / "metrics.json")
    assert got["post"] == want["post"] and got["loss_components"] == want["loss_components"]
    assert_bitwise(run_dir / "final" / "model.safetensors", reference / "final" / "model.safetensors")


def squeue(job: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()


def slurm_log(root: Path) -> str:
    return "".join(p.read_text()[-3000:] for p in root.glob("slurm-*.out"))


def wait(predicate, timeout_s: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}:\n{slurm_log(root)}")
        time.sleep(0.2)
