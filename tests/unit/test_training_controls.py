"""Training controls (issue 14): progressive unfreezing, early stopping, the divergence-spike guard, and their
validation. Hand-computed schedules and means; real BERT parameter names; a real AdamW step."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification, TrainerControl, TrainerState, TrainingArguments

from farlab.config import TrainConfig, WandbConfig
from farlab.errors import ConfigError
from farlab.trainer.callbacks import PeakMetrics
from farlab.trainer.early_stop import EarlyStopping
from farlab.trainer.fit import train_problems
from farlab.trainer.spike_guard import LossSpike, SpikeGuard, watched_parts
from farlab.trainer.unfreeze import ProgressiveUnfreeze, block_index, frozen_block_count, is_embedding


def tiny_bert(layers: int = 4) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg)


def pattern(model: torch.nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


# ---- progressive unfreezing -------------------------------------------------------------------------------------


def test_schedule_is_a_pure_function_of_the_step():
    # 3 blocks frozen, one thaws every 10 steps: 3 for steps 0-9, 2 for 10-19, 1 for 20-29, then none.
    got = [frozen_block_count(s, 3, 10) for s in (0, 9, 10, 19, 20, 29, 30, 1000)]
    assert got == [3, 3, 2, 2, 1, 1, 0, 0]
    assert [frozen_block_count(s, 2, None) for s in (0, 10**6)] == [2, 2]  # every=null: frozen all run
    assert frozen_block_count(5, 0, 1) == 0


def test_block_and_embedding_names_across_architectures():
    assert block_index("bert.encoder.layer.3.output.dense.weight") == 3
    assert block_index("model.layers.11.self_attn.q_proj.weight") == 11
    assert block_index("transformer.h.0.attn.c_attn.weight") == 0
    assert block_index("base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.default.weight") == 1
    assert block_index("classifier.weight") is None and block_index("bert.pooler.dense.weight") is None
    assert is_embedding("bert.embeddings.LayerNorm.weight") and is_embedding("model.embed_tokens.weight")
    assert is_embedding("transformer.wte.weight") and is_embedding("transformer.wpe.weight")
    assert not is_embedding("bert.encoder.layer.0.output.dense.weight") and not is_embedding("lm_head.weight")


def test_lower_blocks_and_embeddings_frozen_then_thawed_top_down():
    model = tiny_bert(4)
    cb = ProgressiveUnfreeze(model, frozen_blocks=2, every=5)
    cb.apply(0)
    grad = pattern(model)
    for name, on in grad.items():
        block = block_index(name)
        frozen = (block is not None and block < 2) or name.startswith("bert.embeddings.")
        assert on is not frozen, name
    assert grad["classifier.weight"] and grad["bert.pooler.dense.weight"]
    cb.apply(5)  # block 1 thaws first (top-most frozen), block 0 and embeddings stay frozen
    grad = pattern(model)
    assert grad["bert.encoder.layer.1.attention.self.query.weight"]
    assert not grad["bert.encoder.layer.0.attention.self.query.weight"]
    assert not grad["bert.embeddings.word_embeddings.weight"]
    cb.apply(10)
    assert all(pattern(model).values())
    cb.apply(0)
    cb.restore()  # what on_train_end does
    assert all(pattern(model).values())


def test_embeddings_false_keeps_embeddings_trainable():
    model = tiny_bert(2)
    ProgressiveUnfreeze(model, frozen_blocks=1, every=None, embeddings=False).apply(123)
    grad = pattern(model)
    assert grad["bert.embeddings.word_embeddings.weight"]
    assert not grad["bert.encoder.layer.0.output.dense.weight"] and grad["bert.encoder.layer.1.output.dense.weight"]


def test_resume_mid_schedule_reproduces_the_requires_grad_pattern():
    steps = range(40)
    uninterrupted = tiny_bert(4)
    cb = ProgressiveUnfreeze(uninterrupted, frozen_blocks=4, every=7)
    seen = []
    for s in steps:
        cb.apply(s)
        seen.append(pattern(uninterrupted))
    resumed = tiny_bert(4)  # a fresh process after a checkpoint at step 17: no unfreeze state was saved
    cb2 = ProgressiveUnfreeze(resumed, frozen_blocks=4, every=7)
    again = []
    for s in steps[17:]:
        cb2.apply(s)
        again.append(pattern(resumed))
    assert again == seen[17:]
    assert len({tuple(p.values()) for p in seen}) == 5  # 4, 3, 2, 1, 0 frozen blocks: five distinct patterns


def test_parameters_that_were_not_trainable_stay_frozen():
    model = tiny_bert(2)
    model.bert.encoder.layer[1].output.dense.weight.requires_grad_(False)  # e.g. a LoRA base weight
    cb = ProgressiveUnfreeze(model, frozen_blocks=2, every=1)
    for s in (0, 1, 2):
        cb.apply(s)
        assert not model.bert.encoder.layer[1].output.dense.weight.requires_grad
    cb.restore()
    assert not model.bert.encoder.layer[1].output.dense.weight.requires_grad


def test_more_frozen_blocks_than_the_student_has_is_refused():
    with pytest.raises(ConfigError, match=r"frozen_blocks=5 but the student has 4 transformer blocks"):
        ProgressiveUnfreeze(tiny_bert(4), frozen_blocks=5, every=1)


def test_frozen_parameters_stay_in_adamw_and_thaw_into_it():
    """The optimizer is built over every parameter before the first freeze (as the Trainer does); AdamW with weight
    decay leaves a frozen block bitwise unchanged and trains it once thawed."""
    model = tiny_bert(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    cb = ProgressiveUnfreeze(model, frozen_blocks=1, every=2)
    x, y = torch.randint(0, 50, (4, 6)), torch.tensor([0, 1, 0, 1])
    w0 = model.bert.encoder.layer[0].output.dense.weight
    w1 = model.bert.encoder.layer[1].output.dense.weight
    emb = model.bert.embeddings.word_embeddings.weight
    before = {k: v.detach().clone() for k, v in {"w0": w0, "w1": w1, "emb": emb}.items()}
    for step in range(2):
        cb.apply(step)
        model(input_ids=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert torch.equal(w0, before["w0"]) and torch.equal(emb, before["emb"])  # frozen: not even weight decay
    assert not torch.equal(w1, before["w1"])
    cb.apply(2)  # thawed: the same optimizer now updates it
    model(input_ids=x, labels=y).loss.backward()
    opt.step()
    assert not torch.equal(w0, before["w0"]) and not torch.equal(emb, before["emb"])


# ---- spike guard ------------------------------------------------------------------------------------------------


def test_running_mean_by_hand_and_spike_message():
    guard = SpikeGuard(factor=3.0, warmup_steps=2, decay=0.5)
    guard.on_train_loss(2.0, {"ce": 1.0, "response/raw": 2.0, "response/weight": 1.0}, global_step=0)
    guard.on_train_loss(2.0, {"ce": 3.0, "response/raw": 4.0, "response/weight": 1.0}, global_step=1)
    assert guard.means == {"ce": 2.0, "response/raw": 3.0}  # 0.5 * 1 + 0.5 * 3, 0.5 * 2 + 0.5 * 4
    guard.on_train_loss(9.0, {"ce": 6.0, "response/raw": 9.0}, global_step=2)  # 6 = 3 x 2: not above
    assert guard.means == {"ce": 4.0, "response/raw": 6.0}
    with pytest.raises(LossSpike, match=r"loss spike at step 4: response/raw = 18.5 is above "
                                        r"train.spike_guard.factor=3 x its running mean 6; .*before its first"):
        guard.on_train_loss(20.0, {"ce": 4.0, "response/raw": 18.5}, global_step=3)


def test_warmup_disarms_the_factor_but_not_the_non_finite_check():
    guard = SpikeGuard(factor=2.0, warmup_steps=5)
    guard.on_train_loss(1.0, {"ce": 1.0}, global_step=0)
    guard.on_train_loss(100.0, {"ce": 100.0}, global_step=4)  # step 5 of a 5-step warmup: not armed yet
    with pytest.raises(LossSpike, match=r"non-finite loss at step 1: response/raw = nan"):
        SpikeGuard(factor=2.0, warmup_steps=5).on_train_loss(float("nan"), {"ce": 1.0, "response/raw": float("nan")}, 0)
    with pytest.raises(LossSpike, match=r"non-finite loss at step 3: loss = inf"):
        SpikeGuard(factor=2.0).on_train_loss(float("inf"), {"ce": 1.0}, 2)


def test_zero_means_not_computed_and_state_survives_a_checkpoint():
    parts = {"ce": 1.0, "feature/raw": 0.0, "feature/weight": 0.0, "response/raw": 2.0, "response/teacher_entropy": 9.0}
    assert watched_parts(parts) == {"ce": 1.0, "response/raw": 2.0}
    guard = SpikeGuard(factor=4.0, warmup_steps=0)
    guard.on_train_loss(3.0, parts, 0)
    guard.on_train_loss(3.0, {**parts, "feature/raw": 5.0, "feature/weight": 1.0}, 1)  # switched on: starts a mean
    again = SpikeGuard(factor=4.0, warmup_steps=0)
    again.load_checkpoint_state(json.loads(json.dumps(guard.checkpoint_state())))
    assert again.means == guard.means == {"ce": 1.0, "response/raw": 2.0, "feature/raw": 5.0}


# ---- early stopping ---------------------------------------------------------------------------------------------


def drive(values: list[float], metric: str, patience: int, start: int = 0, state: dict | None = None):
    """Periodic evals every 2 steps returning ``values`` in turn, from eval number ``start``."""
    it = iter(values[start:])
    peak = PeakMetrics(lambda: {metric: next(it)}, eval_steps=2)
    early = EarlyStopping(peak, metric, patience)
    if state is not None:
        early.load_checkpoint_state(json.loads(json.dumps(state)))
    args = TrainingArguments(output_dir="/tmp/unused", save_strategy="steps", report_to=[], use_cpu=True)
    stops = []
    for step in range(2 * start + 1, 2 * len(values) + 1):
        control = TrainerControl()
        peak.on_step_end(args, TrainerState(global_step=step), control)
        if control.should_training_stop:
            assert control.should_save  # the decision goes into a checkpoint
            stops.append(step)
            break
    return early, stops


def test_stops_after_patience_evals_without_a_new_best():
    # mcc (higher is better): best 0.3 at step 4; 0.3 (tie), 0.25 do not improve -> patience 2 stops at step 8.
    early, stops = drive([0.1, 0.3, 0.3, 0.25, 0.9], "mcc", patience=2)
    assert stops == [8] and early.stopped_at == 8 and (early.best_value, early.best_step) == (0.3, 4)
    assert early.report() == {"early_stopped_at_step": 8, "early_stopping": {
        "metric": "mcc", "patience": 2, "best_value": 0.3, "best_step": 4}}
    # eval_loss is lower-is-better: 2.0, 1.5 (best), 1.7, 1.6 -> stops at step 8
    early, stops = drive([2.0, 1.5, 1.7, 1.6, 1.0], "eval_loss", patience=2)
    assert stops == [8] and early.best_step == 4
    early, stops = drive([0.1, 0.2, 0.3, 0.4], "mcc", patience=1)  # always improving: never stops
    assert stops == [] and early.stopped_at is None and early.report()["early_stopped_at_step"] is None


def test_counters_survive_a_checkpoint_mid_patience():
    values = [0.1, 0.3, 0.2, 0.2, 0.2, 0.2]
    full, stops = drive(values, "mcc", patience=3)
    assert stops == [10]
    first, _ = drive(values[:3], "mcc", patience=3)  # preempted after the eval at step 6
    assert first.bad_evals == 1
    resumed, stops = drive(values, "mcc", patience=3, start=3, state=first.checkpoint_state())
    assert stops == [10] and resumed.checkpoint_state() == full.checkpoint_state()


def test_nan_metric_counts_as_no_improvement():
    early, stops = drive([0.5, float("nan"), float("nan")], "mcc", patience=2)
    assert stops == [6] and early.best_step == 2


# ---- validation -------------------------------------------------------------------------------------------------


def problems(**train: object) -> list[str]:
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), train)
    return train_problems(cfg, OmegaConf.structured(WandbConfig))


def test_defaults_are_valid_and_off():
    assert problems() == []
    tr = TrainConfig()
    assert tr.unfreeze.frozen_blocks == 0 and tr.early_stopping.patience is None and tr.spike_guard.factor is None


@pytest.mark.parametrize(("train", "message"), [
    ({"unfreeze": {"frozen_blocks": -1}}, "train.unfreeze.frozen_blocks=-1 must be >= 0"),
    ({"unfreeze": {"frozen_blocks": 2, "every": 0}}, "train.unfreeze.every=0 must be >= 1"),
    ({"early_stopping": {"patience": 0}, "eval_steps": 5}, "train.early_stopping.patience=0 must be >= 1"),
    ({"early_stopping": {"patience": 3}},
     "train.early_stopping.patience=3 needs the periodic evaluation it watches: set train.eval_steps >= 1 (got None)"),
    ({"spike_guard": {"factor": 1.0}}, "train.spike_guard.factor=1.0 must be > 1"),
    ({"spike_guard": {"factor": 5.0, "warmup_steps": -2}}, "train.spike_guard.warmup_steps=-2 must be >= 0"),
    ({"spike_guard": {"decay": 1.0}}, "train.spike_guard.decay=1.0 must be in [0, 1)"),
])
def test_bad_values_are_named(train, message):
    found = problems(**train)
    assert len(found) == 1 and found[0].startswith(message), found
