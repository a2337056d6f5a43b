"""Long studies in chunks: a completed run is skipped on re-launch, and keeps only what train.keep_checkpoints says.

Real tiny runs (tiny BERTs, 64 CoLA rows, 4 steps, a checkpoint every 2 steps) through ``execute()``, the code
path of ``python -m farlab.train``; the CE loss needs no teacher, so each run takes a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from farlab.errors import ConfigError, RunDirBusy
from farlab.run_record import DifferentConfigError, completed_run
from farlab.trainer import checkpoints
from farlab.trainer.signals import Preempted
from tests.conftest import tiny_overrides
from tests.integration.test_resume import SignalAt, run_inprocess
from tests.unit.test_run_lock import held_by_another_process

SKIP_LINE = "run already completed ({}): skipping; metrics from metrics.json"


def overrides(store: Path, **extra: object) -> list[str]:
    return tiny_overrides(store, **{"loss": "combined_ce", **extra})


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("checkpoint-*"))


def snapshot(run_dir: Path) -> dict[str, int]:
    """Every file under the run dir with its modification time (ns): any write shows up."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def done(tmp_path_factory, store) -> Path:
    """One completed run with every checkpoint kept (the default); tests that change it work on a copy."""
    run_dir = tmp_path_factory.mktemp("done") / "run"
    run_inprocess(run_dir, overrides(store))
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# ---- keep_checkpoints / keep_final ------------------------------------------------------------------------------


def test_keep_checkpoints_all_is_the_default(done):
    assert checkpoint_names(done) == ["checkpoint-2", "checkpoint-4"]  # save_total_limit 2: today's behaviour
    assert (done / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize(("keep", "left"), [("last", ["checkpoint-4"]), ("none", [])])
def test_keep_checkpoints_after_completion(store, tmp_path, keep, left):
    run_dir = tmp_path / "run"
    metrics = run_inprocess(run_dir, overrides(store, **{"train.keep_checkpoints": keep}))
    assert checkpoint_names(run_dir) == left
    assert not (run_dir / checkpoints.STAGING_DIR).exists()
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert read_json(run_dir / "metrics.json") == json.loads(json.dumps(metrics))
    assert read_json(run_dir / "run_metadata.json")["status"] == "completed"


def test_keep_final_false_leaves_only_metrics_and_bookkeeping(store, tmp_path, done):
    run_dir = tmp_path / "run"
    run_inprocess(run_dir, overrides(store, **{"train.keep_checkpoints": "none", "train.keep_final": "false"}))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "metrics.json", "run_metadata.json"]
    size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    full = sum(p.stat().st_size for p in done.rglob("*") if p.is_file())
    assert size < 20_000 < full  # a few KB of JSON/YAML instead of the weights (1.6 MB here, ~100s of MB for MiniLM)
    # Nothing the skip needs was removed: re-launching the same run skips it.
    assert completed_run(run_dir, _compose(overrides(store, **{"train.keep_final": "false"}))) is not None


def preempt_at_step_3(run_dir: Path, ovr: list[str], monkeypatch) -> None:
    import farlab.train

    make_trainer = farlab.train.make_trainer

    def with_signal(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.add_callback(SignalAt(3))
        return trainer

    monkeypatch.setattr(farlab.train, "make_trainer", with_signal)
    with pytest.raises(Preempted):
        run_inprocess(run_dir, ovr)
    monkeypatch.undo()
    assert read_json(run_dir / "run_metadata.json")["status"] == "preempted"


def test_a_preempted_run_keeps_its_checkpoints_until_it_completes(store, tmp_path, monkeypatch):
    run_dir, ovr = tmp_path / "run", overrides(store, **{"train.keep_checkpoints": "none"})
    preempt_at_step_3(run_dir, ovr, monkeypatch)
    assert checkpoint_names(run_dir) == ["checkpoint-2", "checkpoint-3"]  # what the requeued job resumes from

    metrics = run_inprocess(run_dir, ovr)
    assert metrics["train"]["resumed_from"] == str(run_dir / "checkpoint-3")
    assert metrics["train"]["global_step"] == 4 and checkpoint_names(run_dir) == []


def test_a_run_dir_another_live_process_holds_is_left_untouched(store, tmp_path, monkeypatch):
    """A double submission: the second process must neither resume nor restart what the first is training."""
    run_dir, ovr = tmp_path / "run", overrides(store)
    preempt_at_step_3(run_dir, ovr, monkeypatch)  # resumable: without the lock a second process would train it
    with held_by_another_process(run_dir) as holder:
        before = snapshot(run_dir)
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid} "):
            run_inprocess(run_dir, ovr)
        assert snapshot(run_dir) == before
    metrics = run_inprocess(run_dir, ovr)  # once the holder is gone, the same command resumes it
    assert metrics["train"]["resumed_from"] == str(run_dir / "checkpoint-3")
    assert read_json(run_dir / "run_metadata.json")["status"] == "completed"


@pytest.mark.parametrize("value", ["lats", "some"])
def test_invalid_keep_checkpoints_is_refused_before_anything_runs(store, tmp_path, value):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        run_inprocess(run_dir, overrides(store, **{"train.keep_checkpoints": value}))
    assert f"unknown train.keep_checkpoints '{value}'; valid: all, last, none" in str(err.value)
    assert ("did you mean 'last'?" in str(err.value)) == (value == "lats")
    assert not run_dir.exists()


# ---- skipping completed runs ------------------------------------------------------------------------------------


def _compose(ovr: list[str]):
    from hydra import compose, initialize_config_dir

    from farlab.config import REPO_ROOT, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=ovr)


def test_relaunch_of_a_completed_run_skips_it(store, done, monkeypatch, caplog):
    import farlab.train

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run was trained again")

    before, stored = snapshot(done), read_json(done / "metrics.json")
    monkeypatch.setattr(farlab.train, "run", no_training)
    caplog.set_level(logging.INFO)
    # Irrelevant keys may differ: threads, progress bar, W&B.
    again = overrides(store, **{"train.num_threads": 1, "train.progress_bar": "true", "wandb.mode": "offline"})
    metrics = run_inprocess(done, again)

    assert metrics == stored
    assert metrics["post"]["student"][metrics["primary_metric"]] == stored["post"]["student"]["mcc"]
    assert SKIP_LINE.format(done) in caplog.text
    assert "resuming from" not in caplog.text and "removed" not in caplog.text
    assert snapshot(done) == before  # no new checkpoint, metrics, metadata (attempts stays 1) or final weights
    assert read_json(done / "run_metadata.json")["attempts"] == 1


def test_a_skipped_run_drops_what_this_launch_does_not_keep(store, done, tmp_path, monkeypatch, caplog):
    """Re-launching a completed sweep with keep_checkpoints=none cleans it up, still without training."""
    import farlab.train

    run_dir = copy_of(done, tmp_path)
    monkeypatch.setattr(farlab.train, "run", lambda *a, **k: pytest.fail("must not run"))
    caplog.set_level(logging.INFO)
    metrics = run_inprocess(run_dir, overrides(store, **{"train.keep_checkpoints": "none"}))
    assert metrics == read_json(done / "metrics.json") and SKIP_LINE.format(run_dir) in caplog.text
    assert checkpoint_names(run_dir) == [] and (run_dir / "final" / "model.safetensors").is_file()


def test_a_different_config_in_a_completed_run_dir_is_refused(store, done, monkeypatch):
    import farlab.train

    monkeypatch.setattr(farlab.train, "run", lambda *a, **k: pytest.fail("must not run"))
    before = snapshot(done)
    with pytest.raises(ConfigError) as err:
        run_inprocess(done, overrides(store, **{"task.train_limit": 32, "train.learning_rate": 1e-4}))
    msg = str(err.value)
    assert f"run dir {done} holds a completed run of a different config (2 keys differ" in msg
    assert "task.train_limit: 64 -> 32" in msg and "train.learning_rate: 5e-05 -> 0.0001" in msg
    assert "rerun=true" in msg
    assert snapshot(done) == before


def test_the_same_data_reached_from_another_checkout_is_the_same_experiment(store, done, tmp_path):
    """A sweep re-run from another worktree (``<repo>/../shared/data``) still skips; other data does not."""
    run_dir = copy_of(done, tmp_path)
    stored = OmegaConf.load(run_dir / "config.yaml")
    data = Path(stored.task.data_dir)
    detour = tmp_path / "checkout"
    detour.mkdir()
    stored.task.data_dir = f"{detour}/../{os.path.relpath(data, tmp_path)}"  # a path that goes via another folder
    assert stored.task.data_dir != str(data) and os.path.realpath(stored.task.data_dir) == os.path.realpath(data)
    OmegaConf.save(stored, run_dir / "config.yaml")
    assert completed_run(run_dir, _compose(overrides(store))) is not None

    other = Path(shutil.copytree(data, tmp_path / "other_cola"))
    with pytest.raises(DifferentConfigError) as err:
        completed_run(run_dir, _compose(overrides(store, **{"task.data_dir": str(other)})))
    assert err.value.diffs == [f"task.data_dir: {str(stored.task.data_dir)!r} -> {str(other)!r}"]


def test_rerun_true_runs_a_completed_run_again(store, done, tmp_path, caplog):
    """rerun=true with the default resume=true: restarts from the last-step checkpoint, so it only re-evaluates."""
    run_dir = copy_of(done, tmp_path)
    caplog.set_level(logging.INFO)
    metrics = run_inprocess(run_dir, [*overrides(store), "rerun=true"])
    assert SKIP_LINE.format(run_dir) not in caplog.text
    assert f"resuming from {run_dir / 'checkpoint-4'}" in caplog.text
    assert metrics["post"] == read_json(done / "metrics.json")["post"]
    assert read_json(run_dir / "run_metadata.json")["attempts"] == 2


def test_resume_false_trains_a_completed_run_again_from_scratch(store, done, tmp_path, caplog):
    run_dir = copy_of(done, tmp_path)
    caplog.set_level(logging.INFO)
    metrics = run_inprocess(run_dir, [*overrides(store), "resume=false"])
    assert SKIP_LINE.format(run_dir) not in caplog.text
    assert "resume=false: removed checkpoint-2, checkpoint-4" in caplog.text
    assert metrics["train"]["resumed_from"] is None and metrics["train"]["global_step"] == 4
    assert metrics["post"] == read_json(done / "metrics.json")["post"]  # same seed, same result
    assert read_json(run_dir / "run_metadata.json")["attempts"] == 2


@pytest.mark.parametrize("state", ["preempted", "failed", "running"])
def test_only_completed_runs_are_skipped(store, done, tmp_path, state):
    run_dir = copy_of(done, tmp_path)
    meta = read_json(run_dir / "run_metadata.json")
    (run_dir / "run_metadata.json").write_text(json.dumps({**meta, "status": state}))
    assert completed_run(run_dir, _compose(overrides(store))) is None


@pytest.mark.parametrize("damage", ["missing", "truncated", "no primary metric"])
def test_completed_without_valid_metrics_runs_again(store, done, tmp_path, caplog, damage):
    run_dir = copy_of(done, tmp_path)
    path = run_dir / "metrics.json"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_text(path.read_text()[:40])
    else:
        metrics = read_json(path)
        del metrics["post"]["student"]["mcc"]
        path.write_text(json.dumps(metrics))
    assert completed_run(run_dir, _compose(overrides(store))) is None
    assert "says completed but has no valid metrics.json: running it again" in caplog.text
