"""Transfer sets: unlabelled GLUE rows chosen by a seeded ratio, and a trainer whose CE never sees them while
every distillation term does (gradients checked against hand-computed KL and CE)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import DataError, build_task_data, validate_task_config
from farlab.losses.objective import build_objective
from farlab.losses.plan import LossPlan
from farlab.models.loading import Head, build_model, model_shape
from farlab.run_record import config_differences
from farlab.trainer.pair import DistillationModule, gold_rows
from tests.conftest import glue_task

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece")
WORDS = ["good", "bad", "fine", "awful", "great", "dull", "nice", "poor"]


@pytest.fixture
def sst2_dir(tmp_path: Path) -> Path:
    """60 labelled training rows (some duplicated sentences) and a dev file, in SST-2's layout."""
    rows = [f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} film {i % 50}\t{i % 2}" for i in range(60)]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    return tmp_path


def _data(sst2_dir: Path, seed: int = 0, **transfer):
    task = glue_task(name="sst2", data_dir=str(sst2_dir), train_limit=10, transfer=transfer)
    validate_task_config(task)
    return build_task_data(task, TOKENIZER, seed)


def _texts(dataset) -> list[str]:
    return [TOKENIZER.decode(ids, skip_special_tokens=True) for ids in dataset["input_ids"]]


def test_rest_of_the_split_at_a_ratio_is_seeded_unlabelled_and_disjoint(sst2_dir):
    data = _data(sst2_dir, source="rest", ratio=0.8)
    flags = data.train["transfer"]
    assert flags == [0] * 10 + [1] * 40  # ratio 0.8 next to 10 labelled rows: 10 * 0.8 / 0.2 = 40
    assert sum(flags) / len(flags) == 0.8
    assert data.train["labels"][10:] == [-100] * 40 and -100 not in data.train["labels"][:10]
    assert data.train["example_id"] == list(range(50)) and data.info["transfer_rows"] == 40
    assert data.sft_train["input_ids"] == data.train["input_ids"][:10]  # the SFT teacher sees labelled rows only
    plain = _data(sst2_dir)
    assert "transfer" not in plain.train.column_names and data.train["input_ids"][:10] == plain.train["input_ids"]
    everything = Counter(_texts(build_task_data(glue_task(name="sst2", data_dir=str(sst2_dir)), TOKENIZER, 0).train))
    used = Counter(_texts(data.train))
    assert not used - everything  # labelled + transfer rows never use a training row twice
    assert _data(sst2_dir, source="rest", ratio=0.8).train["input_ids"] == data.train["input_ids"]
    assert _data(sst2_dir, seed=1, source="rest", ratio=0.8).train["input_ids"][10:] != data.train["input_ids"][10:]
    assert _data(sst2_dir, source="rest").info["transfer_rows"] == 50  # ratio null: every other row


def test_a_ratio_beyond_the_available_rows_is_refused_with_the_counts(sst2_dir):
    with pytest.raises(DataError, match=r"needs 90 transfer rows next to 10 labelled ones, but .* has 50 \(ratio at "
                                        r"most 0.8333"):
        _data(sst2_dir, source="rest", ratio=0.9)
    with pytest.raises(DataError, match=r"task.transfer.ratio=1.0 must be in \(0, 1\)"):
        _data(sst2_dir, source="rest", ratio=1.0)
    with pytest.raises(DataError, match=r"unknown task.transfer.source 'rst'.*did you mean 'rest'"):
        _data(sst2_dir, source="rst")
    with pytest.raises(DataError, match=r"task.transfer.file=None not found"):
        _data(sst2_dir, source="file")


def test_a_file_of_texts_without_labels(sst2_dir, tmp_path):
    unlabelled = tmp_path / "reviews.txt"
    unlabelled.write_text("an unlabelled review\nanother one\n\nthird text\n")
    data = _data(sst2_dir, source="file", file=str(unlabelled), text_columns=[0], header=False)
    assert _texts(data.train)[10:] != [] and sorted(_texts(data.train)[10:]) == sorted(
        ["an unlabelled review", "another one", "third text"])
    assert data.train["transfer"][10:] == [1, 1, 1]


def test_new_task_options_do_not_break_skipping_runs_stored_before_them():
    stored = {"task": {"name": "cola", "train_limit": 64}}
    new = {"task": {"name": "cola", "train_limit": 64, "targets": "gold",
                    "transfer": {"source": None, "file": None, "ratio": None}}}
    assert config_differences(stored, new) == []
    assert config_differences(stored, {"task": {**new["task"], "targets": "teacher"}}) == [
        "task.targets: (absent) -> 'teacher'"]


# --------------------------------------------------------------------------------------------------
# The trainer: CE never sees a transfer row; their gradients come from the distillation terms alone
# --------------------------------------------------------------------------------------------------

T = 2.0


@pytest.fixture
def pair(compose_cfg):
    cfg = compose_cfg(["model=tiny_bert", "task=cola", "loss=response_kl", f"loss.temperature={T}", "loss.alpha=0.7"])
    head = Head(AutoModelForSequenceClassification, {"num_labels": 2})
    torch.manual_seed(0)
    student, teacher = build_model(cfg.model.student, head, None), build_model(cfg.model.teacher, head, None)
    plan = LossPlan.from_config(cfg.loss)
    objective = build_objective(plan, cfg.layer_map, cfg.projection, model_shape(student), model_shape(teacher))
    module = DistillationModule(student, teacher, objective, kind="classification")
    module.train()
    student.eval()  # no dropout: the reference forwards below must see the same logits
    return module


def _batch(transfer: list[int]) -> dict[str, torch.Tensor]:
    enc = TOKENIZER(["good film", "bad plot here", "fine", "awful awful movie"], padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor([1, 0, 1, 0]), "example_id": torch.arange(4),
            "transfer": torch.tensor(transfer)}


def _kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """T^2 KL(p_t || p_s) at temperature T, mean over rows (hand-written reference)."""
    p_t = F.softmax(teacher_logits / T, -1)
    return (T * T * (p_t * (F.log_softmax(teacher_logits / T, -1) - F.log_softmax(student_logits / T, -1))).sum(-1)).mean()


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_ce_sees_only_the_gold_rows_of_a_mixed_batch(pair):
    batch = _batch([0, 1, 0, 1])
    total, parts = pair(**batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        s, t = pair.student(**inputs).logits, pair.teacher(**inputs).logits
    gold = torch.tensor([True, False, True, False])
    expected_ce = F.cross_entropy(s[gold], batch["labels"][gold])
    assert parts["ce"] == pytest.approx(float(expected_ce), abs=1e-6)
    assert parts["response/raw"] == pytest.approx(float(_kd(s, t)), abs=1e-6)  # KD on every row
    assert float(total.detach()) == pytest.approx(float(expected_ce + 0.7 * _kd(s, t)), abs=1e-6)
    flipped = {**batch, "labels": torch.tensor([1, 1, 1, 1])}  # transfer rows' labels are never read
    assert float(pair(**flipped)[0].detach()) == pytest.approx(float(total.detach()), abs=1e-7)
    assert gold_rows(batch)["labels"].tolist() == [1, -100, 1, -100] and batch["labels"].tolist() == [1, 0, 1, 0]


def test_a_batch_of_transfer_rows_has_zero_ce_and_the_gradient_of_the_distillation_term_alone(pair):
    batch = _batch([1, 1, 1, 1])
    total, parts = pair(**batch)
    assert parts["ce"] == 0.0
    total.backward()
    got = _grads(pair.student)
    pair.zero_grad(set_to_none=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t = pair.teacher(**inputs).logits
    (0.7 * _kd(pair.student(**inputs).logits, t)).backward()
    want = _grads(pair.student)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    pair.zero_grad(set_to_none=True)
    assert gold_rows(_batch([0, 0, 0, 0]))["labels"].tolist() == [1, 0, 1, 0]
