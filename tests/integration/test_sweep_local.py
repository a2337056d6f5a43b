"""The FAR factorial as a real sweep through ``hydra/launcher=local`` (submitit_local, one process per job): a slice
of 3 losses that turns each of F, A and R both on and off (frozen_base teacher), one job preempted with submitit's
own signal (USR2) mid-run, then ``farlab.collect`` on the sweep dir.

Helpers here are shared with tests/slurm/test_sweep_slurm.py, which runs the whole 8-loss grid through SLURM. The
slice keeps this test's cost down: each job is a fresh interpreter (~6 s of imports) on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farlab import collect
from farlab.trainer import checkpoints
from tests.integration.test_resume import assert_bitwise, run_inprocess
from tests.unit.test_run_lock import held_by_another_process

LOSSES = (
    "combined_ce",
    "combined_f",
    "combined_a",
    "combined_r",
    "combined_fa",
    "combined_fr",
    "combined_ar",
    "combined_far",
)
LOCAL_LOSSES = ("combined_fa", "combined_r", "combined_far")  # F, A and R each present and absent
STRATEGY = "frozen_base"
SWEEP_TIMEOUT_S = 400
MAX_STEPS = 40  # long enough (2-8 s of training on a 2-core box) to be signalled after its first checkpoint (step 4)


def fixed_overrides(store: Path, max_steps: int = MAX_STEPS) -> dict[str, object]:
    """Tiny, CPU-cheap settings shared by every job of the sweep (and by the in-process reference run)."""
    return {
        "task": "cola", "model": "tiny_bert", "task.train_limit": 64, "task.eval_limit": 48,
        "train.max_steps": max_steps, "train.batch_size": 8, "train.eval_batch_size": 48,
        "train.logging_steps": 4, "train.save_steps": 4, "train.eval_steps": 12, "train.progress_bar": False,
        "train.num_threads": 1, "teacher_strategy.store_dir": str(store), "wandb.mode": "disabled",
    }  # fmt: skip


def sweep_command(launcher: str, fixed: dict[str, object], extra: list[str] = ()) -> list[str]:
    """``python -m farlab.train -m +experiment=far_factorial`` with one strategy: far_factorial's 8 losses, or the
    slice a ``loss=..`` in ``extra`` asks for.

    The fixed keys are left out of the job dir names, which stay far_factorial's ``loss=..,seed=..,teacher_strategy=..``.
    """
    keys = ",".join(["experiment", *fixed])
    return [
        sys.executable,
        "-m",
        "farlab.train",
        "-m",
        "+experiment=far_factorial",
        f"hydra/launcher={launcher}",
        f"teacher_strategy={STRATEGY}",
        *(f"{k}={v}" for k, v in fixed.items()),
        f"hydra.job.config.override_dirname.exclude_keys=[{keys}]",
        *extra,
    ]


def job_name(loss: str, seed: int = 42) -> str:
    return f"loss={loss},seed={seed},teacher_strategy={STRATEGY}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, proc: subprocess.Popen) -> object:
    """Poll ``predicate`` until truthy; fail (with the launcher's output) on timeout or if the launcher exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
            pytest.fail(f"gave up waiting for {what} (launcher rc={proc.poll()}):\n{out[-4000:]}")
        time.sleep(0.1)


def the_sweep_dir(root: Path) -> Path | None:
    """far_factorial's multirun/<date>/<time> under ``root`` (exactly one)."""
    found = sorted(p for p in root.glob("multirun/*/*") if p.is_dir())
    return found[0] if len(found) == 1 else None


def start_sweep(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_sweep(proc: subprocess.Popen, timeout_s: float = SWEEP_TIMEOUT_S) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"sweep did not finish in {timeout_s}s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"sweep failed (rc={proc.returncode}):\n{out[-6000:]}"
    return out


def check_sweep(root: Path, preempted_loss: str, reference: Path, losses: tuple[str, ...] = LOSSES) -> Path:
    """Every job of ``losses`` completed in its far_factorial-named dir, the preempted one resumed in its own dir to
    the same result as an uninterrupted run, and the collector tabulates them all. Returns the sweep dir."""
    sweep = the_sweep_dir(root)
    assert sweep is not None, f"expected one multirun/<date>/<time> under {root}: {list(root.glob('multirun/*/*'))}"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "run_metadata.json").is_file())
    assert jobs == sorted(job_name(loss) for loss in losses)  # a requeued job made no second dir
    for loss in losses:
        meta = read_json(sweep / job_name(loss) / "run_metadata.json")
        assert meta["status"] == "completed", (loss, meta["error"])
        assert meta["attempts"] == (2 if loss == preempted_loss else 1), loss

    job = sweep / job_name(preempted_loss)
    log = (job / "output.log").read_text()
    assert "received: saving a checkpoint at step" in log and "resuming from" in log
    got, want = read_json(job / "metrics.json"), read_json(reference / "metrics.json")
    assert 0 < int(got["train"]["resumed_from"].rsplit("-", 1)[1]) < got["train"]["global_step"]
    for key in ("post", "best", "loss_components"):
        assert got[key] == want[key], key
    assert got["train"]["final_loss"] == want["train"]["final_loss"]
    assert_bitwise(job / "final" / "model.safetensors", reference / "final" / "model.safetensors")

    # Each loss trained the components its name promises (F feature, A attention, R response).
    for loss in losses:
        parts = read_json(sweep / job_name(loss) / "metrics.json")["loss_components"]
        letters = loss.removeprefix("combined_").replace("ce", "")
        for letter, part in (("f", "feature/raw"), ("a", "attention/raw"), ("r", "response/raw")):
            assert (part in parts) == (letter in letters), (loss, sorted(parts))

    summary = collect.collect([str(sweep)], plots=False)
    assert summary.skipped == []
    rows = sorted((r.loss, r.teacher_strategy, r.flags["F"], r.flags["A"], r.flags["R"]) for r in summary.runs)
    want_rows = sorted(
        (loss, STRATEGY, int("f" in loss[9:]), int("a" in loss[9:]), int("r" in loss[9:])) for loss in losses
    )
    assert rows == want_rows
    assert (sweep / "results.csv").is_file() and (sweep / "results.md").is_file()
    return sweep


def wait_for_checkpoint(root: Path, loss: str, proc: subprocess.Popen) -> dict:
    """The job's run_metadata once it has written a complete checkpoint (so it is mid-training)."""

    def ready() -> dict | None:
        sweep = the_sweep_dir(root)
        job = sweep / job_name(loss) if sweep else None
        if job is None or checkpoints.latest_complete_checkpoint(job) is None:
            return None
        return read_json(job / "run_metadata.json")

    return wait_until(ready, SWEEP_TIMEOUT_S, f"a checkpoint of {loss}", proc)  # type: ignore[return-value]


@pytest.mark.slow
def test_far_sweep_through_submitit_local_with_a_preempted_job(tmp_path: Path) -> None:
    store = tmp_path / "store"
    fixed = fixed_overrides(store)
    proc = start_sweep(sweep_command("local", fixed, [f"loss={','.join(LOCAL_LOSSES)}"]), cwd=tmp_path)

    target = "combined_far"
    meta = wait_for_checkpoint(tmp_path, target, proc)
    os.kill(meta["pid"], signal.SIGUSR2)  # submitit's preemption signal; farlab saves first, then submitit requeues

    reference = tmp_path / "reference"  # the uninterrupted run, computed while the sweep finishes
    ovr = [f"{k}={v}" for k, v in fixed.items()] + [f"loss={target}", f"teacher_strategy={STRATEGY}", "seed=42"]
    run_inprocess(reference, ovr)

    finish_sweep(proc)
    sweep = check_sweep(tmp_path, target, reference, LOCAL_LOSSES)
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs  # submitit's own requeue path ran (local: restart with exit 144)


@pytest.mark.slow
def test_ce_runs_once_and_a_relaunch_skips_completed_jobs(tmp_path: Path) -> None:
    """far_factorial's grid sliced to 2 losses x 2 strategies through the local launcher: 3 jobs (CE once, named
    after the first strategy), run dirs keep no checkpoints; the same sweep again (same sweep dir) skips all 3."""
    fixed = {**fixed_overrides(tmp_path / "store", max_steps=4), "train.eval_steps": "null"}
    sweep = tmp_path / "sweep"
    grid = ["loss=combined_ce,combined_r", "teacher_strategy=frozen_base,cotrain_base", f"hydra.sweep.dir={sweep}"]
    cmd = [c for c in sweep_command("local", fixed, grid) if c != f"teacher_strategy={STRATEGY}"]

    out = finish_sweep(start_sweep(cmd, cwd=tmp_path))
    assert "1 of 4 jobs dropped as duplicates" in out, out[-3000:]
    assert "dropped loss=combined_ce teacher_strategy=cotrain_base (same experiment as " \
           "loss=combined_ce teacher_strategy=frozen_base)" in out
    names = {
        "loss=combined_ce,seed=42,teacher_strategy=frozen_base",
        "loss=combined_r,seed=42,teacher_strategy=frozen_base",
        "loss=combined_r,seed=42,teacher_strategy=cotrain_base",
    }
    jobs = {p.name: p for p in sweep.iterdir() if (p / "run_metadata.json").is_file()}
    assert set(jobs) == names
    for job in jobs.values():
        assert read_json(job / "run_metadata.json")["status"] == "completed"
        assert not list(job.glob("checkpoint-*")) and (job / "final" / "model.safetensors").is_file()
    first = {name: (job / "metrics.json").read_bytes() for name, job in jobs.items()}
    logs = {name: (job / "output.log").read_text() for name, job in jobs.items()}

    # The same sweep again, in the same sweep dir. Through the basic launcher (one process instead of three): the
    # skip happens in each job's execute(), whichever launcher started it.
    again = [c if c != "hydra/launcher=local" else "hydra/launcher=basic" for c in cmd]
    out = finish_sweep(start_sweep(again, cwd=tmp_path))
    assert "1 of 4 jobs dropped as duplicates" in out
    for name, job in jobs.items():
        new_lines = (job / "output.log").read_text()[len(logs[name]):]
        assert f"run already completed ({job}): skipping; metrics from metrics.json" in new_lines, new_lines
        assert "task cola:" not in new_lines and "resuming from" not in new_lines  # nothing loaded or trained
        assert (job / "metrics.json").read_bytes() == first[name]
        assert read_json(job / "run_metadata.json")["attempts"] == 1

    # Once more while another live process holds one job's run dir (a double submission): that job fails at once and
    # leaves it untouched, the others are still skipped, and the sweep exits non-zero with the reason.
    held = jobs["loss=combined_r,seed=42,teacher_strategy=cotrain_base"]
    logs = {name: (job / "output.log").read_text() for name, job in jobs.items()}
    with held_by_another_process(held) as holder:
        proc = start_sweep(again, cwd=tmp_path)
        out, _ = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    assert proc.returncode != 0 and f"RunDirBusy: run dir {held} is in use by another live process (pid {holder.pid} " \
        in out, out[-3000:]
    for name, job in jobs.items():
        new_lines = (job / "output.log").read_text()[len(logs[name]):]
        assert ("skipping" in new_lines) == (job != held), (name, new_lines)
        assert (job / "metrics.json").read_bytes() == first[name]
