"""Translation data: real Europarl files, prompt masking, and masks that keep the prompt out of every loss."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import DataError, build_task_data, validate_task_config
from farlab.data.kinds import TASK_KINDS
from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.objective import ModelShape, build_objective
from tests.conftest import SHARED_DATA, load_group

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
EUROPARL = SHARED_DATA / "europarl_en_fr"


def _task(**fields):
    base = {
        "name": "europarl_en_fr",
        "family": "translation",
        "source_file": str(EUROPARL / "europarl-v7.fr-en.first3000.en"),
        "target_file": str(EUROPARL / "europarl-v7.fr-en.first3000.fr"),
    }
    return OmegaConf.create({**base, **fields})


def test_real_europarl_drops_empty_pairs_and_splits_by_seed():
    data = build_task_data(_task(), TOKENIZER, seed=1)
    assert data.info["dropped_empty_pairs"] == 6
    sizes = data.info["split_sizes"]
    lines = zip(*(open(EUROPARL / f"europarl-v7.fr-en.first3000.{x}", encoding="utf-8").read().splitlines() for x in ("en", "fr")))
    unique = {(s.strip(), t.strip()) for s, t in lines if s.strip() and t.strip()}
    assert data.info["dropped_duplicate_pairs"] == 3000 - 6 - len(unique) > 0
    assert sum(sizes.values()) == len(unique)
    assert sizes["validation"] == round(len(unique) * 0.05) == len(data.eval)
    again = build_task_data(_task(), TOKENIZER, seed=1)
    other = build_task_data(_task(), TOKENIZER, seed=2)
    assert data.eval["reference"] == again.eval["reference"] != other.eval["reference"]


def test_labels_mask_the_prompt_and_keep_target_plus_eos():
    data = build_task_data(_task(train_limit=5), TOKENIZER, seed=0)
    for example in data.train:
        ids, labels = example["input_ids"], example["labels"]
        n_prompt = sum(1 for label in labels if label == -100)
        assert n_prompt > 0 and all(label == -100 for label in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]
        assert ids[-1] == TOKENIZER.eos_token_id
        prompt_text = TOKENIZER.decode(ids[:n_prompt], skip_special_tokens=True)
        assert prompt_text.startswith("Translate English to French.") and prompt_text.endswith("French:")


def test_test_split_is_selectable_and_disjoint_from_validation():
    val = build_task_data(_task(), TOKENIZER, seed=0)
    test = build_task_data(_task(eval_split="test"), TOKENIZER, seed=0)
    pairs = lambda d: set(zip(d.eval["source"], d.eval["reference"]))  # noqa: E731
    assert pairs(val).isdisjoint(pairs(test)) and len(pairs(test)) == len(test.eval)


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"prompt_template": "Translate: {sentence}"}, r"has no \{source\} field"),
        ({"eval_split": "dev"}, r"unknown task.eval_split 'dev'"),
        ({"source_file": "/nope.en"}, r"task.source_file='/nope.en' not found"),
        ({"metrics": ["blue"]}, r"unknown metric 'blue'.*did you mean 'bleu'"),
    ],
)
def test_bad_translation_configs(fields, pattern):
    with pytest.raises(DataError, match=pattern):
        validate_task_config(_task(**fields))


def test_misaligned_files_are_refused(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.fr").write_text("un\ndeux\n")
    with pytest.raises(DataError, match="misaligned parallel files.*3 lines.*2"):
        validate_task_config(_task(source_file=str(tmp_path / "a.en"), target_file=str(tmp_path / "a.fr")))


def test_empty_split_after_filtering_is_refused(tmp_path):
    (tmp_path / "a.en").write_text("one\n\n")
    (tmp_path / "a.fr").write_text("\ndeux\n")
    with pytest.raises(DataError, match="empty split after dropping 2 pairs"):
        build_task_data(_task(source_file=str(tmp_path / "a.en"), target_file=str(tmp_path / "a.fr")), TOKENIZER, 0)


def test_changing_teacher_outputs_at_prompt_positions_leaves_every_term_unchanged():
    """Prompt masking holds for response and feature terms: only target positions reach the loss."""
    torch.manual_seed(0)
    labels = torch.tensor([[-100, -100, -100, 7, 8, 2, -100], [-100, -100, 5, 6, 2, -100, -100]])
    batch = {"labels": labels, "attention_mask": (labels != -100).long() | torch.tensor([[1] * 7, [1] * 5 + [0] * 2])}
    token_mask, response_mask = TASK_KINDS.get("causal_lm").masks(batch)
    assert response_mask[0].tolist() == [0, 0, 1, 1, 1, 0, 0]  # logit t predicts token t+1
    assert token_mask[1].tolist() == [0, 0, 1, 1, 1, 0, 0]

    loss_cfg = load_group("loss", "combined_fr")
    layer_map = OmegaConf.create({"strategy": "uniform"})
    projection = OmegaConf.create({"type": "linear", "layernorm": False})
    objective = build_objective(loss_cfg, layer_map, projection, ModelShape(2, 8, 2), ModelShape(4, 16, 4))
    B, T, V = 2, 7, 11

    def views(teacher_logits, teacher_hidden):
        student = ModelView(logits=torch.randn(B, T, V, generator=torch.Generator().manual_seed(1)),
                            hidden_states=tuple(torch.randn(B, T, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)))  # fmt: skip
        teacher = ModelView(logits=teacher_logits, hidden_states=teacher_hidden)
        return DistillBatch(student, teacher, token_mask=token_mask, response_mask=response_mask)

    t_logits = torch.randn(B, T, V)
    t_hidden = tuple(torch.randn(B, T, 16) for _ in range(5))
    base, _ = objective(views(t_logits, t_hidden), torch.tensor(1.0))

    prompt = (response_mask == 0) & (token_mask == 0)
    moved_logits = t_logits.clone()
    moved_logits[prompt] = torch.randn_like(moved_logits[prompt]) * 50.0
    moved_hidden = tuple(h.clone().masked_fill(prompt[..., None], 9.0) for h in t_hidden)
    same, _ = objective(views(moved_logits, moved_hidden), torch.tensor(1.0))
    assert torch.equal(base, same)

    target_logits = t_logits.clone()
    target_logits[0, 3, 0] += 5.0  # one entry: a constant shift would not change the softmax
    changed, _ = objective(views(target_logits, t_hidden), torch.tensor(1.0))
    assert not torch.equal(base, changed)


# A ChatML-style template, as instruct models ship; the tiny tokenizer has none of its own.
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_wraps_the_prompt_and_the_mask_still_covers_it():
    chat_tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    chat_tokenizer.chat_template = CHATML
    data = build_task_data(_task(train_limit=3, use_chat_template=True), chat_tokenizer, seed=0)
    for example in data.train:
        ids, labels = example["input_ids"], example["labels"]
        n_prompt = sum(1 for label in labels if label == -100)
        prompt_text = chat_tokenizer.decode(ids[:n_prompt])
        assert prompt_text.replace(" ", "").startswith("<|user|>Translate")
        assert prompt_text.replace(" ", "").endswith("<|end|><|assistant|>")
        assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == chat_tokenizer.eos_token_id
    plain = build_task_data(_task(train_limit=3), TOKENIZER, seed=0)
    assert all(len(c["input_ids"]) > len(p["input_ids"]) for c, p in zip(data.train, plain.train, strict=True))


def test_chat_template_without_one_on_the_tokenizer_is_refused_early():
    with pytest.raises(DataError, match="use_chat_template=true.*no chat template"):
        build_task_data(_task(train_limit=3, use_chat_template=True), TOKENIZER, seed=0)


def test_an_empty_metric_list_is_refused_by_name():
    with pytest.raises(DataError, match="task.metrics is empty; choose at least one of: .*bleu"):
        validate_task_config(_task(metrics=[]))


def test_perplexity_is_the_reference_targets_and_needs_no_generation(monkeypatch):
    """Perplexity of a translation task: exp(mean NLL of the reference target tokens given the prompt), over the
    whole split; HF's own per-row loss is the independent reference. With no generation metric listed, nothing is
    generated."""
    import math

    from transformers import LlamaConfig, LlamaForCausalLM

    import farlab.eval.lm
    from farlab.eval.loop import evaluate_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).eval()
    data = build_task_data(_task(eval_limit=3, metrics=["perplexity"], primary_metric="perplexity"), TOKENIZER, seed=0)
    monkeypatch.setattr(farlab.eval.lm, "generate_texts", lambda *a, **k: pytest.fail("generated"))
    scores = evaluate_model(model, data, batch_size=2, progress=False)
    total = tokens = 0.0
    with torch.no_grad():
        for row in data.eval:
            labels = torch.tensor([row["labels"]])
            n = int((labels[0, 1:] != -100).sum())  # the shifted targets HF's loss averages over
            total += model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss.item() * n
            tokens += n
    assert set(scores) == {"perplexity"}
    assert math.isclose(scores["perplexity"], math.exp(total / tokens), rel_tol=1e-5)
