"""Preemption and resume: a run stopped by a real signal and resumed ends bitwise where an uninterrupted run ends.

The reference run co-trains the teacher (its weights are in farlab_extras), trains projections (feature loss,
32 -> 64 dims) and uses a staged loss (response, then features, then both), evaluates every 4 steps (peak metrics)
and logs every step, so a difference anywhere in the restored state (optimizer, scheduler, RNG, data position,
schedule phase, co-trained teacher, projections, callback state, run totals) shows up in the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hydra import compose, initialize_config_dir
from transformers import TrainerCallback

from farlab.config import REPO_ROOT, register_configs
from farlab.eval.calibration import CALIBRATION_KEYS
from farlab.train import execute
from farlab.trainer import checkpoints
from farlab.trainer.callbacks import PeakMetrics
from farlab.trainer.signals import PREEMPTED_EXIT_CODE, Preempted
from tests.conftest import tiny_overrides

MAX_STEPS = 10  # 64 rows / batch 8 = 8 steps per epoch: the run crosses an epoch boundary
EXTRA = {
    "loss": "staged_r_then_f",
    "teacher_strategy": "cotrain_base",
    "train.max_steps": MAX_STEPS,
    "train.save_steps": 3,
    "train.save_total_limit": 5,
    "train.logging_steps": 1,
    "train.eval_steps": 4,
    "train.num_threads": 1,
}
CLI_TIMEOUT_S = 120


def overrides(store: Path, **extra: Any) -> list[str]:
    return tiny_overrides(store, **{**EXTRA, **extra})


def run_inprocess(run_dir: Path, ovr: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ovr)
    return execute(cfg, run_dir, ovr)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_bitwise(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    diff = {k: (ta[k] - tb[k]).abs().max().item() for k in ta if not torch.equal(ta[k], tb[k])}
    assert not diff, f"{a.name}: tensors differ (max abs diff per tensor): {diff}"


def step_logs(run_dir: Path) -> dict[int, dict]:
    """Per-step training logs (loss, every component and schedule weight, grad norm, lr) of the last checkpoint."""
    state = json.loads((run_dir / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if "loss" in e}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_same_result(run_dir: Path, reference: Path) -> None:
    """Final metrics, final student, co-trained teacher + projections, and every per-step log equal the reference."""
    got, want = read_json(run_dir / "metrics.json"), read_json(reference / "metrics.json")
    for key in ("post", "loss_components", "best", "transfer_gap"):
        assert got[key] == want[key], key
    for key in ("global_step", "final_loss"):
        assert got["train"][key] == want["train"][key], key
    assert_bitwise(run_dir / "final" / "model.safetensors", reference / "final" / "model.safetensors")
    last = f"checkpoint-{MAX_STEPS}"
    assert_bitwise(run_dir / last / "farlab_extras.safetensors", reference / last / "farlab_extras.safetensors")
    got_logs, want_logs = step_logs(run_dir), step_logs(reference)
    assert sorted(got_logs) == list(range(1, MAX_STEPS + 1))
    for step, entry in want_logs.items():
        assert got_logs[step] == entry, f"step {step} logs differ"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_inprocess(run_dir, overrides(store))
    return run_dir


class SignalAt(TrainerCallback):
    """Sends a real SIGUSR1 to this process while optimizer step ``step`` runs (after its forward starts)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


# 2: mid epoch 1, between saves; 8: the epoch boundary; 9: mid epoch 2, right after a scheduled save and
# an eval step.
@pytest.mark.parametrize("stop_step", [2, 8, 9])
def test_signal_mid_run_then_resume_matches_uninterrupted(reference, store, tmp_path, monkeypatch, stop_step):
    import farlab.train

    make_trainer = farlab.train.make_trainer

    def with_signal(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.add_callback(SignalAt(stop_step))
        return trainer

    run_dir = tmp_path / "run"
    monkeypatch.setattr(farlab.train, "make_trainer", with_signal)
    with pytest.raises(Preempted) as stopped:
        run_inprocess(run_dir, overrides(store))
    monkeypatch.undo()

    assert stopped.value.step == stop_step and stopped.value.signum == signal.SIGUSR1
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "preempted" and "SIGUSR1" in meta["error"] and meta["end_time"]
    assert checkpoints.latest_complete_checkpoint(run_dir) == run_dir / f"checkpoint-{stop_step}"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "final").exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored after the run

    metrics = run_inprocess(run_dir, overrides(store))  # resume=true is the default
    assert metrics["train"]["resumed_from"] == str(run_dir / f"checkpoint-{stop_step}")
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "completed" and meta["error"] is None and meta["attempts"] == 2
    assert_same_result(run_dir, reference)


class SignalOnTrainEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("when", ["setup", "after_training"])
def test_signal_outside_the_training_loop_stops_at_once(reference, store, tmp_path, monkeypatch, when):
    """Loading, SFT-teacher training and evaluation have nothing to checkpoint and may outlast the grace period:
    a signal there stops the run at once (status preempted). The next start trains from the newest checkpoint:
    none (setup), or the one at the last step, which is loaded without training an extra step."""
    import farlab.train

    if when == "setup":
        build = farlab.train.build_task_data

        def signalled_build(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGUSR1)
            return build(*args, **kwargs)  # not reached: the handler raises

        monkeypatch.setattr(farlab.train, "build_task_data", signalled_build)
    else:
        make_trainer = farlab.train.make_trainer

        def with_signal(*args, **kwargs):
            trainer = make_trainer(*args, **kwargs)
            trainer.add_callback(SignalOnTrainEnd())
            return trainer

        monkeypatch.setattr(farlab.train, "make_trainer", with_signal)
    run_dir = tmp_path / "run"
    with pytest.raises(Preempted) as stopped:
        run_inprocess(run_dir, overrides(store))
    monkeypatch.undo()
    assert stopped.value.step is None
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "preempted" and "outside the training loop" in meta["error"]
    latest = checkpoints.latest_complete_checkpoint(run_dir)
    assert latest == (None if when == "setup" else run_dir / f"checkpoint-{MAX_STEPS}")

    metrics = run_inprocess(run_dir, overrides(store))
    assert metrics["train"]["global_step"] == MAX_STEPS  # no extra step after a last-step checkpoint
    assert_same_result(run_dir, reference)


def test_periodic_eval_records_peaks_without_changing_training(reference, store, tmp_path):
    run_dir = tmp_path / "no_eval"
    metrics = run_inprocess(run_dir, overrides(store, **{"train.eval_steps": "null"}))
    ref = read_json(reference / "metrics.json")
    # Evaluating every 4 steps leaves the trained model bitwise unchanged (the eval loop's RNG use is forked).
    assert_bitwise(run_dir / "final" / "model.safetensors", reference / "final" / "model.safetensors")
    assert metrics["post"] == ref["post"]
    # Without periodic eval the peaks are the post-training task metrics at the last step (calibration: no peaks).
    task_metrics = {k: v for k, v in metrics["post"]["student"].items() if k not in CALIBRATION_KEYS}
    assert metrics["best"] == {k: {"value": v, "step": MAX_STEPS} for k, v in task_metrics.items()}

    # With eval_steps=4: eval metrics logged at steps 4 and 8 (Trainer loggers / log_history), and the best of
    # those and the post metrics, earliest step on ties.
    history = read_json(reference / f"checkpoint-{MAX_STEPS}" / "trainer_state.json")["log_history"]
    evals = {e["step"]: e for e in history if "eval_mcc" in e}
    assert sorted(evals) == [4, 8]
    assert evals[4]["eval_ece"] >= 0  # calibration scalars are logged with the task metrics
    for name in task_metrics:
        seen = [(evals[s][f"eval_{name}"], s) for s in (4, 8)] + [(ref["post"]["student"][name], MAX_STEPS)]
        top = max(v for v, _ in seen)
        assert ref["best"][name] == {"value": top, "step": min(s for v, s in seen if v == top)}


def test_peak_metrics_direction_and_state_roundtrip():
    peak = PeakMetrics(dict, eval_steps=None)
    peak.record({"mcc": 0.1, "eval_loss": 2.0, "bleu": float("nan")}, step=1)
    peak.record({"mcc": 0.3, "eval_loss": 2.5}, step=2)
    peak.record({"mcc": 0.3, "eval_loss": 1.5}, step=3)
    assert peak.best == {"mcc": {"value": 0.3, "step": 2}, "eval_loss": {"value": 1.5, "step": 3}}
    again = PeakMetrics(dict, eval_steps=None)
    again.load_checkpoint_state(json.loads(json.dumps(peak.checkpoint_state())))
    assert again.best == peak.best and again.last_step == 3


def test_resume_false_clears_old_checkpoints(store, tmp_path, caplog):
    run_dir = tmp_path / "run"
    short = overrides(store, **{"train.max_steps": 4, "train.save_steps": 2, "train.eval_steps": "null"})
    run_inprocess(run_dir, short)
    stale = run_dir / "checkpoint-99"  # e.g. from a longer earlier run: rotation would keep it over new ones
    shutil.copytree(run_dir / "checkpoint-4", stale)
    caplog.set_level("INFO")
    metrics = run_inprocess(run_dir, [*short, "resume=false"])
    assert "resume=false: removed checkpoint-2, checkpoint-4, checkpoint-99" in caplog.text
    assert metrics["train"]["resumed_from"] is None and metrics["train"]["global_step"] == 4
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    history = read_json(run_dir / "checkpoint-4" / "trainer_state.json")["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]  # trained from step 0 again


# ---- real processes: the CLI exit code, and kill -9 in the middle of a checkpoint write ----------------------

CLI_ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(run_dir: Path, ovr: list[str], driver: list[str] | None = None) -> subprocess.Popen:
    cmd = driver or [sys.executable, "-m", "farlab.train"]
    log = open(run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (the child's)
    return subprocess.Popen(
        [*cmd, *ovr, f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=CLI_ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"farlab.train did not finish in {CLI_TIMEOUT_S}s")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def logs_of(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(run_dir.parent.glob(f"{run_dir.name}.*.log")))


DRIVER = textwrap.dedent("""
    # farlab.train with test-only slowdowns, so a test can signal or kill it at a known point:
    #   slow <seconds>        sleep after every optimizer step (timing only; the numbers do not change)
    #   hang <step> <marker>  hang half-way through the checkpoint write at <step> (model and optimizer
    #                         written, RNG and trainer state not yet) after writing <marker>
    import runpy, sys, time
    from transformers import Trainer

    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "slow":
        delay, rest = float(args[0]), args[1:]
        original_step = Trainer.training_step

        def slow_step(self, *a, **k):
            out = original_step(self, *a, **k)
            time.sleep(delay)
            return out

        Trainer.training_step = slow_step
    else:
        hang_step, marker, rest = int(args[0]), args[1], args[2:]
        original_rng = Trainer._save_rng_state

        def hang(self, output_dir):
            if self.state.global_step == hang_step:
                open(marker, "w").write(output_dir)
                time.sleep(600)
            return original_rng(self, output_dir)

        Trainer._save_rng_state = hang
    sys.argv = ["farlab.train", *rest]
    runpy.run_module("farlab.train", run_name="__main__", alter_sys=True)
""")


def driver(tmp_path: Path, *args: object) -> list[str]:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return [sys.executable, str(path), *map(str, args)]


@pytest.mark.slow
def test_cli_usr1_exits_75_and_rerun_resumes(reference, store, tmp_path):
    """A real process signalled from outside after its first checkpoint: stops after the current step, exits 75,
    and the same command in the same run dir resumes to the reference result."""
    run_dir, ovr = tmp_path / "run", overrides(store)
    proc = cli(run_dir, ovr, driver=driver(tmp_path, "slow", 0.3))
    wait_for(lambda: checkpoints.latest_complete_checkpoint(run_dir) or proc.poll() is not None, 90, "checkpoint-3")
    proc.send_signal(signal.SIGUSR1)
    rc = finish(proc)
    assert rc == PREEMPTED_EXIT_CODE, logs_of(run_dir)
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "preempted", meta
    stopped = checkpoints.latest_complete_checkpoint(run_dir)
    assert stopped is not None and 3 <= int(stopped.name.split("-")[1]) < MAX_STEPS
    assert f"after step {stopped.name.split('-')[1]} ({stopped.name} saved)" in meta["error"]
    assert "re-run the same command with hydra.run.dir" in (run_dir / "output.log").read_text()

    rc = finish(cli(run_dir, ovr))
    assert rc == 0, logs_of(run_dir)
    assert read_json(run_dir / "run_metadata.json")["status"] == "completed"
    assert "resuming from" in (run_dir / "output.log").read_text()
    assert_same_result(run_dir, reference)


@pytest.mark.slow
def test_kill9_during_checkpoint_write_resumes_from_previous_complete(reference, store, tmp_path):
    run_dir, ovr = tmp_path / "run", overrides(store)
    marker = tmp_path / "hanging"
    proc = cli(run_dir, ovr, driver=driver(tmp_path, "hang", 6, marker))
    wait_for(lambda: marker.exists() or proc.poll() is not None, 90, "the checkpoint write at step 6")
    assert proc.poll() is None, logs_of(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    staged = run_dir / checkpoints.STAGING_DIR / "checkpoint-6"
    assert Path(marker.read_text()) == staged and (staged / "optimizer.pt").is_file()
    assert not (staged / "trainer_state.json").exists() and not (run_dir / "checkpoint-6").exists()
    assert read_json(run_dir / "run_metadata.json")["status"] == "running"  # killed: no chance to record
    # Also a checkpoint renamed into place whose COMPLETE marker was never written (kill between the two).
    torn = run_dir / "checkpoint-9"
    shutil.copytree(run_dir / "checkpoint-3", torn)
    (torn / checkpoints.COMPLETE_MARKER).unlink()

    rc = finish(cli(run_dir, ovr))
    assert rc == 0, logs_of(run_dir)
    assert f"resuming from {run_dir / 'checkpoint-3'}" in (run_dir / "output.log").read_text()
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "completed" and meta["attempts"] == 2
    assert all((p / checkpoints.COMPLETE_MARKER).is_file() for p in run_dir.glob("checkpoint-*"))
    assert not any((run_dir / checkpoints.STAGING_DIR).iterdir())
    assert_same_result(run_dir, reference)
