"""Training controls in real tiny runs (issue 14): progressive unfreezing changes exactly the thawed weights, early
stopping stops at the same step and result when preempted and resumed, and the spike guard fails a run cleanly
with its last complete checkpoint usable. Preemption is a real SIGUSR1, as in test_resume.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import TrainerCallback

from farlab.losses.objective import DistillationObjective
from farlab.trainer import checkpoints
from farlab.trainer.signals import Preempted
from farlab.trainer.spike_guard import LossSpike
from farlab.trainer.unfreeze import block_index, is_embedding
from tests.conftest import tiny_overrides
from tests.integration.test_resume import assert_bitwise, run_inprocess


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


def overrides(store: Path, **extra: object) -> list[str]:
    base = {"loss": "response_kl", "teacher_strategy": "frozen_base", "train.num_threads": 1}
    return tiny_overrides(store, **{**base, **extra})


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def with_callback(monkeypatch, callback: TrainerCallback) -> None:
    import farlab.train

    make_trainer = farlab.train.make_trainer

    def patched(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(farlab.train, "make_trainer", patched)


# ---- progressive unfreezing -------------------------------------------------------------------------------------


class Snapshot(TrainerCallback):
    """The student's weights as training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.student.state_dict().items()}


def test_unfreeze_trains_only_thawed_blocks(store, tmp_path, monkeypatch):
    # tiny student: 2 blocks. Steps 1-2: blocks 0, 1 and embeddings frozen; steps 3-4: block 0 and embeddings.
    snap = Snapshot()
    with_callback(monkeypatch, snap)
    run_dir = tmp_path / "run"
    run_inprocess(run_dir, overrides(store, **{"train.unfreeze.frozen_blocks": 2, "train.unfreeze.every": 2}))
    at2, at4 = tensors(run_dir / "checkpoint-2" / "model.safetensors"), tensors(run_dir / "final" / "model.safetensors")
    changed2 = {k for k, v in at2.items() if not torch.equal(v, snap.weights[k])}
    changed4 = {k for k, v in at4.items() if not torch.equal(v, snap.weights[k])}
    blocks = {k: block_index(k) for k in at4}
    assert {blocks[k] for k in changed2} == {None} and "classifier.weight" in changed2  # head and pooler only
    assert not any(is_embedding(k) for k in changed2 | changed4)
    assert {blocks[k] for k in changed4} == {None, 1}  # block 1 thawed at step 3, block 0 never
    assert {k for k in at4 if blocks[k] == 1} <= changed4


# ---- early stopping ---------------------------------------------------------------------------------------------

# lr 1e-10: the student's predictions (and so MCC) do not change, so the first eval stays the best and patience
# 2 stops the run at the third eval (step 6) out of 12 steps; save_steps 4 means checkpoint-6 exists only because
# early stopping asks for it.
EARLY = {"train.max_steps": 12, "train.eval_steps": 2, "train.early_stopping.patience": 2, "train.save_steps": 4,
         "train.save_total_limit": 5, "train.learning_rate": 1e-10, "train.logging_steps": 1}


@pytest.fixture(scope="module")
def early_reference(tmp_path_factory, store) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("early") / "run"
    return run_dir, run_inprocess(run_dir, overrides(store, **EARLY))


def test_early_stopping_stops_and_records(early_reference):
    run_dir, metrics = early_reference
    train = metrics["train"]
    assert train["global_step"] == 6 and train["early_stopped_at_step"] == 6
    assert train["early_stopping"] == {"metric": "mcc", "patience": 2, "best_value": metrics["best"]["mcc"]["value"],
                                       "best_step": 2}
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert read_json(run_dir / "metrics.json")["train"]["early_stopped_at_step"] == 6


class SignalAt(TrainerCallback):
    def __init__(self, step: int | None) -> None:
        self.step = step  # None: when training ends

    def on_step_begin(self, args, state, control, **kwargs):
        if self.step is not None and state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("stop_step", [5, None])
def test_early_stopping_is_honoured_across_resume(early_reference, store, tmp_path, monkeypatch, stop_step):
    """Preempted mid-patience (step 5: one eval without improvement so far) the resumed run stops at step 6 too;
    preempted after stopping (post-eval not done) the resumed run trains no further step."""
    reference, ref_metrics = early_reference
    run_dir = tmp_path / "run"
    with_callback(monkeypatch, SignalAt(stop_step))
    with pytest.raises(Preempted):
        run_inprocess(run_dir, overrides(store, **EARLY))
    monkeypatch.undo()
    resumed_from = run_dir / f"checkpoint-{stop_step or 6}"
    assert checkpoints.latest_complete_checkpoint(run_dir) == resumed_from

    metrics = run_inprocess(run_dir, overrides(store, **EARLY))
    assert metrics["train"]["resumed_from"] == str(resumed_from)
    for key in ("global_step", "early_stopped_at_step", "early_stopping", "final_loss"):
        assert metrics["train"][key] == ref_metrics["train"][key], key
    assert metrics["post"] == ref_metrics["post"] and metrics["best"] == ref_metrics["best"]
    assert not (run_dir / "checkpoint-8").exists()
    assert_bitwise(run_dir / "final" / "model.safetensors", reference / "final" / "model.safetensors")


# ---- spike guard ------------------------------------------------------------------------------------------------

GUARD = {"train.max_steps": 8, "train.spike_guard.factor": 3, "train.spike_guard.warmup_steps": 2,
         "train.save_steps": 2, "train.save_total_limit": 5}


def inject(monkeypatch, at_step: int, how: str) -> None:
    """From optimizer step ``at_step + 1`` on, the response term is 50x larger (``spike``) or NaN (``nan``)."""
    forward = DistillationObjective.forward

    def faulty(self, batch, ce, step=0, max_steps=1):
        total, parts = forward(self, batch, ce, step, max_steps)
        if self.training and step >= at_step:
            scale = 50.0 if how == "spike" else float("nan")
            total = total + (scale - 1.0) * self.alpha * parts["response/raw"]
            parts["response/raw"] *= scale
        return total, parts

    monkeypatch.setattr(DistillationObjective, "forward", faulty)


def test_spike_stops_cleanly_and_the_last_checkpoint_resumes(store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    inject(monkeypatch, at_step=4, how="spike")
    with pytest.raises(LossSpike, match=r"loss spike at step 5: response/raw = .* above train.spike_guard.factor=3 x"):
        run_inprocess(run_dir, overrides(store, **GUARD))
    monkeypatch.undo()
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "failed" and meta["error"].startswith("LossSpike: loss spike at step 5: response/raw")
    assert meta["error"].endswith(f"the last complete checkpoint is {run_dir / 'checkpoint-4'}")
    assert checkpoints.latest_complete_checkpoint(run_dir) == run_dir / "checkpoint-4"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list((run_dir / checkpoints.STAGING_DIR).glob("*")) and not (run_dir / "metrics.json").exists()

    metrics = run_inprocess(run_dir, overrides(store, **GUARD))  # the same run, launched again: resumes
    assert metrics["train"]["resumed_from"] == str(run_dir / "checkpoint-4") and metrics["train"]["global_step"] == 8
    assert read_json(run_dir / "run_metadata.json")["status"] == "completed"


def test_nan_loss_stops_at_once(store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    inject(monkeypatch, at_step=0, how="nan")
    with pytest.raises(LossSpike, match=r"non-finite loss at step 1: response/raw = nan"):
        run_inprocess(run_dir, overrides(store, **GUARD))
    meta = read_json(run_dir / "run_metadata.json")
    assert meta["status"] == "failed" and "before its first checkpoint" in meta["error"]
    assert checkpoints.latest_complete_checkpoint(run_dir) is None


# ---- runs written before these fields existed -------------------------------------------------------------------


def test_a_completed_run_from_before_new_fields_is_still_skipped(early_reference, store, tmp_path):
    """A run dir completed before train.unfreeze/spike_guard and the response's mix existed: re-launching the same
    experiment skips it (the new fields are at their defaults); a new field set to another value is refused."""
    import shutil

    import yaml

    from farlab.errors import ConfigError

    run_dir = tmp_path / "old"
    shutil.copytree(early_reference[0], run_dir)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("unfreeze", "spike_guard"):
        del stored["train"][key]
    del stored["loss"]["components"]["response"]["mix"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored))
    attempts = read_json(run_dir / "run_metadata.json")["attempts"]
    assert run_inprocess(run_dir, overrides(store, **EARLY)) == read_json(run_dir / "metrics.json")
    assert read_json(run_dir / "run_metadata.json")["attempts"] == attempts  # skipped, not trained
    del stored["train"]["early_stopping"]  # the run had patience 2; the schema default is null
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError, match=r"train.early_stopping.patience: None -> 2"):
        run_inprocess(run_dir, overrides(store, **EARLY))
