"""``model.pad_token`` on a Llama-3-style tokenizer that ships without a pad token (built locally, no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from farlab.data import build_task_data
from farlab.errors import ConfigError, DataError
from farlab.models.loading import build_student, head_for, load_tokenizer
from farlab.validate import validate_config
from tests.lookalikes import llama3_tokenizer

TRANSLATION = ["task=europarl_en_fr", "model=tiny_llama", "task.train_limit=8", "task.eval_limit=2",
               "task.max_length=128", "train.progress_bar=false"]


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama3_tokenizer(tmp_path_factory.mktemp("llama3_tok"))


def _pair(llama3_dir: Path, pad: str | None) -> list[str]:
    """tiny_llama on the Llama-3-style tokenizer: both models have exactly the tokenizer's 1030 rows (as Llama 3's
    embeddings have exactly its 128,256 tokens), no pad id, Llama 3's bos/eos and tied embeddings."""
    vocab = len(AutoTokenizer.from_pretrained(llama3_dir))
    overrides = [f"model.tokenizer={llama3_dir}", f"model.pad_token={'null' if pad is None else pad}"]
    for role in ("teacher", "student"):
        fields = {"vocab_size": vocab, "pad_token_id": "null", "bos_token_id": 1024, "eos_token_id": 1025,
                  "tie_word_embeddings": "true"}
        overrides += [f"++model.{role}.config.{k}={v}" for k, v in fields.items()]
    return TRANSLATION + overrides


def test_the_look_alike_has_no_pad_token_and_translation_names_the_option(llama3_dir, compose_cfg):
    tokenizer = load_tokenizer(str(llama3_dir))
    assert tokenizer.pad_token is None and tokenizer.eos_token == "<|end_of_text|>"
    cfg = compose_cfg(_pair(llama3_dir, None))
    with pytest.raises(DataError, match=r"model.pad_token=eos.*<\|pad\|>"):
        build_task_data(cfg.task, tokenizer, cfg.seed)


def test_eos_pads_with_eos_and_adds_no_token(llama3_dir):
    plain = load_tokenizer(str(llama3_dir))
    tokenizer = load_tokenizer(str(llama3_dir), pad_token="eos")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1025
    assert len(tokenizer) == len(plain)


def test_an_existing_token_is_reused_not_added(llama3_dir):
    tokenizer = load_tokenizer(str(llama3_dir), pad_token="<|eot_id|>")
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>") == 1028
    assert len(tokenizer) == 1030


def test_a_new_pad_token_resizes_teacher_and_student_alike_and_trains(llama3_dir, compose_cfg):
    cfg = compose_cfg(_pair(llama3_dir, "'<|pad|>'"))
    validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer, pad_token=cfg.model.pad_token)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer)) == ("<|pad|>", 1030, 1031)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    student, teacher = build_student(cfg, head_for(data), tokenizer, None, need_base_teacher=True)
    for model in (teacher, student):
        assert model.get_input_embeddings().num_embeddings == 1031
        assert model.get_output_embeddings().out_features == 1031
        assert model.config.pad_token_id == 1030 and model.config.vocab_size == 1031
    # the old rows are the weights the same seeded build has without the new token (eos padding: no resize)
    eos_cfg = compose_cfg(_pair(llama3_dir, "eos"))
    eos_student, eos_teacher = build_student(eos_cfg, head_for(data), load_tokenizer(
        cfg.model.tokenizer, pad_token="eos"), None, need_base_teacher=True)
    for resized, plain in ((teacher, eos_teacher), (student, eos_student)):
        assert plain.get_input_embeddings().num_embeddings == 1030
        assert torch.equal(resized.get_input_embeddings().weight[:1030], plain.get_input_embeddings().weight)
        assert torch.isfinite(resized.get_input_embeddings().weight[1030]).all()
    batch = data.collator([data.train[i] for i in range(8)])
    assert (batch["input_ids"] == 1030).any()  # padding happened, with the new id
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    t_out, s_out = teacher(**inputs), student(**inputs)
    assert t_out.logits.shape[-1] == s_out.logits.shape[-1] == 1031
    assert torch.isfinite(s_out.loss) and torch.isfinite(t_out.loss)


def test_a_run_with_a_new_pad_token_trains_end_to_end(llama3_dir, compose_cfg, tmp_path):
    from farlab.train import execute

    overrides = [*_pair(llama3_dir, "'<|pad|>'"), "loss=response_kl", "teacher_strategy=frozen_sft",
                 "teacher_strategy.recipe.max_steps=1", "teacher_strategy.recipe.batch_size=4", "train.max_steps=1",
                 "train.batch_size=4", "task.generation.max_new_tokens=2", "task.eval_limit=1", "train.num_threads=2",
                 f"teacher_strategy.store_dir={tmp_path / 'store'}"]
    metrics = execute(compose_cfg(overrides), tmp_path / "run", overrides)
    assert set(metrics["post"]["student"]) == {"bleu", "chrf", "perplexity"}
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert saved.pad_token == "<|pad|>" and len(saved) == 1031
    # the entry folder (the store also keeps a sibling <entry>.lock file)
    entry = next(p for p in (tmp_path / "store").glob("europarl_en_fr-*") if p.is_dir())
    assert '"pad_token": "<|pad|>"' in (entry / "store_key.json").read_text()


def test_a_blank_pad_token_is_refused(compose_cfg):
    cfg = compose_cfg(["model=tiny_llama", "task=europarl_en_fr", "model.pad_token=' '"])
    with pytest.raises(ConfigError, match="model.pad_token"):
        validate_config(cfg)
