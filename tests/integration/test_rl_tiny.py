"""Tiny GRPO runs (tiny_llama, 16 Europarl prompts, 4 steps): the run dir, the teacher as reward and KL anchor,
the SFT warm start, SIGUSR1 preempt + resume, a NaN reward, and the collector reading the run."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import LlamaForCausalLM, TrainerCallback

import farlab.rl.run
from farlab.collect.runs import load_job
from farlab.rl.rewards import REWARDS, Reward, RewardError
from farlab.train import execute
from farlab.trainer import checkpoints
from farlab.trainer.signals import Preempted
from tests.conftest import tiny_overrides

STEPS = 4
RL = {
    "task": "europarl_en_fr",
    "model": "tiny_llama",
    "rl": "grpo",
    "task.train_limit": 16,
    "task.eval_limit": 4,
    "task.generation.max_new_tokens": 6,
    "task.max_length": 96,
    "rl.num_generations": 4,
    "rl.max_completion_length": 8,
    "train.batch_size": 8,
    "train.max_steps": STEPS,
    "train.save_steps": 2,
    "train.save_total_limit": 3,
    "train.logging_steps": 1,
    "train.num_threads": 1,
    "train.learning_rate": 0.001,
}


def run(compose_cfg, run_dir: Path, store: Path, **extra) -> dict:
    """A tiny RL run; an ``extra`` value None drops that override (e.g. a key another task family lacks)."""
    overrides = tiny_overrides(store, **{k: v for k, v in {**RL, **extra}.items() if v is not None})
    return execute(compose_cfg(overrides), run_dir, overrides)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def step_logs(run_dir: Path, timing: bool = True) -> dict[int, dict]:
    """TRL's per-step logs (rewards, KL, lengths, loss, ...), without the wall-clock step_time unless ``timing``."""
    state = read(run_dir / f"checkpoint-{STEPS}" / "trainer_state.json")
    return {e["step"]: {k: v for k, v in e.items() if timing or k != "step_time"}
            for e in state["log_history"] if "reward" in e}


def test_grpo_with_teacher_reward_anchor_and_sft_warm_start(compose_cfg, tmp_path, store_dir):
    run_dir = tmp_path / "run"
    metrics = run(compose_cfg, run_dir, store_dir, teacher_strategy="frozen_base", **{
        "rl.rewards": "[chrf,length_penalty]", "rl.reward_weights": "[1.0,0.5]", "rl.teacher_weight": 0.5,
        "rl.reference": "teacher", "rl.beta": 0.1, "rl.init": "sft"})
    # The farlab run dir and metrics.json layout.
    assert read(run_dir / "run_metadata.json")["status"] == "completed"
    assert read(run_dir / "metrics.json") == json.loads(json.dumps(metrics))
    assert set(metrics["pre"]) == {"student", "teacher"} and set(metrics["post"]["student"]) == {"bleu", "chrf", "perplexity"}
    assert metrics["transfer_gap"]["metric"] == "bleu" and metrics["train"]["global_step"] == STEPS
    assert metrics["rl"]["rewards"] == ["chrf", "length_penalty", "teacher_reverse_kl"]
    assert metrics["rl"]["weights"] == [1.0, 0.5, 0.5]
    assert (run_dir / f"checkpoint-{STEPS}" / "COMPLETE").is_file() and not (run_dir / "README.md").exists()
    assert isinstance(LlamaForCausalLM.from_pretrained(run_dir / "final"), LlamaForCausalLM)
    # TRL's per-reward logs: the teacher reward estimates minus a KL, whose analytic value (> 0) is logged too;
    # the total is the weighted sum.
    logs = step_logs(run_dir)
    assert sorted(logs) == list(range(1, STEPS + 1))
    for entry in logs.values():
        assert entry["teacher/reverse_kl"] > 0
        weighted = (entry["rewards/chrf/mean"] + 0.5 * entry["rewards/length_penalty/mean"]
                    + 0.5 * entry["rewards/teacher_reverse_kl/mean"])
        assert entry["reward"] == pytest.approx(weighted, abs=1e-5)
    # reference=teacher: GRPO's KL is to the teacher, so it is far from 0 at step 1 (to the init it is exactly 0).
    assert logs[1]["kl"] > 0.01
    # rl.init=sft: the warm-started student is in the store, complete, under its own key.
    (entry,) = [p for p in store_dir.iterdir() if "rlinit" in p.name and p.is_dir()]
    assert (entry / "COMPLETE").is_file() and (entry / "model.safetensors").is_file()
    # The collector reads the RL run: post metrics and the reward curve as train_* columns.
    job = load_job(run_dir, "run")
    assert job.metrics["post_student_chrf"] == metrics["post"]["student"]["chrf"]
    assert job.metrics["train_reward_last"] == pytest.approx(metrics["train"]["reward_last"])


class SignalAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny GRPO run (chrF)."""
    from hydra import compose, initialize_config_dir

    from farlab.config import REPO_ROOT, register_configs

    register_configs()
    root = tmp_path_factory.mktemp("rl_reference")
    overrides = tiny_overrides(root / "store", **RL)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    execute(cfg, root / "run", overrides)
    return root / "run"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """On CPU with a fixed seed TRL's sampling is restored exactly (the RNG state is in the checkpoint): the final
    student, the post metrics and every per-step log but the wall-clock step_time are bitwise equal."""
    assert read(run_dir / "metrics.json")["post"] == read(reference / "metrics.json")["post"]
    a, b = tensors(run_dir / "final" / "model.safetensors"), tensors(reference / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert step_logs(run_dir, timing=False) == step_logs(reference, timing=False)
    assert not (run_dir / f"checkpoint-{STEPS + 1}").exists()


class SignalOnTrainEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("when", [3, "after_training"])
def test_sigusr1_preempt_then_resume_matches_uninterrupted(compose_cfg, reference, tmp_path, store_dir,
                                                           monkeypatch, when):
    """A signal at step 3 checkpoints there and stops; one after training (final evaluation) stops at once. The
    resumed run ends where the uninterrupted one does, with no extra GRPO step after a last-step checkpoint."""
    base = farlab.rl.run.FarlabGRPOTrainer

    class Signalled(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(SignalAt(when) if when != "after_training" else SignalOnTrainEnd())

    run_dir = tmp_path / "run"
    monkeypatch.setattr(farlab.rl.run, "FarlabGRPOTrainer", Signalled)
    with pytest.raises(Preempted) as stopped:
        run(compose_cfg, run_dir, store_dir)
    monkeypatch.undo()
    stop_step = when if when != "after_training" else STEPS
    assert stopped.value.step == (when if when != "after_training" else None)
    assert read(run_dir / "run_metadata.json")["status"] == "preempted"
    assert checkpoints.latest_complete_checkpoint(run_dir) == run_dir / f"checkpoint-{stop_step}"

    got = run(compose_cfg, run_dir, store_dir)
    assert got["train"]["resumed_from"] == str(run_dir / f"checkpoint-{stop_step}")
    assert got["train"]["global_step"] == STEPS
    assert read(run_dir / "run_metadata.json")["attempts"] == 2
    assert_same_run(run_dir, reference)


def test_nan_reward_fails_naming_it_and_keeps_the_checkpoint(compose_cfg, tmp_path, store_dir):
    calls = []

    def toy(completion: str, reference: str) -> float:
        calls.append(1)
        return math.nan if len(calls) > 2 * 8 else 0.5  # 8 completions a step: NaN from step 3 on

    REWARDS.register("toy_nan", Reward("toy_nan", toy))
    try:
        run_dir = tmp_path / "run"
        with pytest.raises(RewardError, match="reward 'toy_nan' returned nan"):
            run(compose_cfg, run_dir, store_dir, **{"rl.rewards": "[chrf,toy_nan]"})
    finally:
        REWARDS.remove("toy_nan")
    meta = read(run_dir / "run_metadata.json")
    assert meta["status"] == "failed" and "toy_nan" in meta["error"]
    assert checkpoints.latest_complete_checkpoint(run_dir) == run_dir / "checkpoint-2"
    assert isinstance(LlamaForCausalLM.from_pretrained(run_dir / "checkpoint-2"), LlamaForCausalLM)


def test_generative_cola_with_label_match(compose_cfg, tmp_path, store_dir):
    """GLUE as generation: CoLA prompts, the label_match reward, the eval scored with CoLA's MCC/accuracy."""
    run_dir = tmp_path / "cola"
    metrics = run(compose_cfg, run_dir, store_dir, task="cola_generative", **{
        "task.train_limit": 16, "task.eval_limit": 8, "task.max_length": 48, "rl.rewards": "[label_match]",
        "task.generation.max_new_tokens": None,
        "rl.max_completion_length": 3})
    post = metrics["post"]["student"]
    assert set(post) == {"mcc", "accuracy", "unparsed_rate"} and metrics["primary_metric"] == "mcc"
    assert 0.0 <= post["unparsed_rate"] <= 1.0
    logs = step_logs(run_dir)
    assert all(e["rewards/label_match/mean"] in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
               for e in logs.values())


def test_ocr_image_prompts_tokenize_as_sft_and_train(compose_cfg, tmp_path, store_dir):
    """OCR with a tiny Qwen-VL: TRL's tokenization of the image prompt equals the SFT/eval prompt's, and GRPO runs."""
    from types import SimpleNamespace

    from trl import GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    from farlab.data import TASK_FAMILIES
    from farlab.data.base import typed_config
    from farlab.data.ocr import PROMPT_STYLES, OCRTaskConfig, VisionPromptEncoder
    from farlab.models.loading import load_tokenizer

    ovr = {"task": "ocr_uw3_lines", "model": "tiny_qwen_vl", "task.max_image_side": 128, "task.train_limit": 8,
           "task.eval_limit": 2, "task.generation.max_new_tokens": 4, "task.max_length": None,
           "rl.rewards": "[edit_similarity,exact_match]", "rl.max_completion_length": 4}
    cfg = compose_cfg(tiny_overrides(store_dir, **{k: v for k, v in {**RL, **ovr}.items() if v is not None}))
    processor = load_tokenizer(cfg.model.tokenizer, cfg.model.processor)
    data, prompts = TASK_FAMILIES.get("ocr").rl_data(cfg.task, processor, cfg.seed)
    row = prompts[0]
    fake = SimpleNamespace(processing_class=processor, _is_vlm=True, environment_factories=None, tools=None,
                           chat_template=None, chat_template_kwargs={})
    trl_ids, _, _ = GRPOTrainer._tokenize_prompts(fake, [prepare_multimodal_messages(row["prompt"], [row["image"]])])
    task = typed_config(OCRTaskConfig, cfg.task)
    encoder = VisionPromptEncoder(processor, task, PROMPT_STYLES.get(task.prompt_style)(task))
    assert list(trl_ids[0]) == encoder.prompt(data.train[0])["input_ids"][0].tolist()
    assert row["reference"] == data.train[0]["text"]

    metrics = run(compose_cfg, tmp_path / "ocr", store_dir, **ovr)
    assert set(metrics["post"]["student"]) == {"edit_similarity", "exact_match"}
    assert set(step_logs(tmp_path / "ocr")[1]) >= {"rewards/edit_similarity/mean", "rewards/exact_match/mean"}
