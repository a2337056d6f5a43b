"""Parsers, label masks and packing of the bring-your-own-data families (instruction, text, text_classification)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from farlab.config import REPO_ROOT
from farlab.data import build_task_data, validate_task_config
from farlab.data.files import Record, read_records, split_or_load
from farlab.data.instruction import InstructionColumns, Renderer, to_conversation
from farlab.data.kinds import TASK_KINDS
from farlab.data.text import pack
from farlab.errors import DataError
from farlab.eval.lm import sequence_nll
from farlab.eval.metrics import METRICS
from farlab.eval.transfer import transfer_gap

DATA = REPO_ROOT / "tests" / "data"
BPE = REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr"
WORDPIECE = REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece"
# A ChatML-style template (Qwen's layout) to exercise the chat-template path with the local tokenizer.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def bpe():
    return AutoTokenizer.from_pretrained(BPE)


@pytest.fixture(scope="module")
def chat_bpe():
    tok = AutoTokenizer.from_pretrained(BPE)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------ files


def test_bad_files_name_file_and_line(tmp_path):
    bad_json = _write(tmp_path, "a.jsonl", '{"x": 1}\n\n{"x": 2\n')
    with pytest.raises(DataError, match=r"a\.jsonl:3: not valid JSON"):
        read_records(bad_json)
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        read_records(_write(tmp_path, "empty.jsonl", "\n  \n"))
    with pytest.raises(DataError, match=r"unknown file format '\.parquet'.*\.jsonl"):
        read_records(_write(tmp_path, "d.parquet", "x"))
    with pytest.raises(DataError, match=r"b\.csv:3: 3 fields, the header has 2"):
        read_records(_write(tmp_path, "b.csv", "text,label\nok,1\nnot,ok,1\n"))
    records = read_records(_write(tmp_path, "c.tsv", "text\tlabel\nhello, world\tpos\n"))
    assert records[0].data == {"text": "hello, world", "label": "pos"} and records[0].where.endswith("c.tsv:2")
    with pytest.raises(DataError, match=r"c\.tsv:2: record has no column 'sentence'"):
        records[0].get("sentence")


def test_seeded_split_is_reproducible_and_disjoint():
    items = list(range(50))
    a, b = split_or_load(items, None, 0.2, seed=3), split_or_load(items, None, 0.2, seed=3)
    assert a.eval == b.eval and len(a.eval) == 10 and not set(a.eval) & set(a.train)
    assert sorted(a.train + a.eval) == items
    assert split_or_load(items, None, 0.2, seed=4).eval != a.eval


# ------------------------------------------------------------------------------------------ instruction


def _labelled_text(tok, row) -> str:
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])


def test_alpaca_loss_covers_the_response_and_eos_only(bpe):
    record = Record({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}, "f", 1)
    turns = to_conversation(record, "alpaca", InstructionColumns())
    row = Renderer(bpe, None).encode(turns, 128)
    assert _labelled_text(bpe, row) == "Bonjour</s>"
    assert bpe.decode(row["input_ids"]).startswith("<s>### Instruction:\nTranslate to French.\n\nGood morning")


def test_multi_turn_chat_template_trains_assistant_turns_only(chat_bpe):
    record = Record({"messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Salut"},
                                  {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Merci"}]},
                    "f", 1)
    renderer = Renderer(chat_bpe, None)
    assert renderer.uses_template
    turns = to_conversation(record, "messages", InstructionColumns())
    row = renderer.encode(turns, 256)
    assert _labelled_text(chat_bpe, row) == "Salut<|im_end|>Merci<|im_end|>"
    ev = renderer.eval_example(turns, 256)
    assert chat_bpe.decode(ev["prompt_ids"]).endswith("Thanks<|im_end|>\n<|im_start|>assistant\n")
    assert ev["reference"] == "Merci"


def test_conversation_without_assistant_turn_is_refused():
    record = Record({"messages": [{"role": "user", "content": "Hi"}]}, "chat.jsonl", 7)
    with pytest.raises(DataError, match=r"chat\.jsonl:7: conversation has no assistant turn"):
        to_conversation(record, "messages", InstructionColumns())


def test_instruction_task_from_files(bpe, tmp_path):
    task = OmegaConf.create({"name": "chat", "family": "instruction", "train_file": str(DATA / "europarl_chat.jsonl"),
                             "max_length": 160, "metrics": ["perplexity"]})
    validate_task_config(task)
    data = build_task_data(task, bpe, seed=1)
    assert data.info["format"] == "messages" and data.kind == "causal_lm"
    assert len(data.train) + len(data.eval) == 80 and data.eval_split_name == "train[10% seeded split]"
    bad = _write(tmp_path, "bad.jsonl", '{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: record has no column 'output'"):
        build_task_data(OmegaConf.merge(task, {"train_file": bad}), bpe, seed=1)
    with pytest.raises(DataError, match="unknown task.format"):
        validate_task_config(OmegaConf.merge(task, {"format": "sharegpt"}))


# ------------------------------------------------------------------------------------------------- text


def test_packing_keeps_documents_whole_unless_longer_than_a_block():
    docs = [[1, 2, 9], [3, 4, 5, 9], [6, 7, 8, 10, 11, 12, 13, 9]]  # 9 = eos
    blocks = pack(docs, block_size=5, pad_id=0)
    assert [b["input_ids"] for b in blocks] == [[1, 2, 9, 0, 0], [3, 4, 5, 9, 0], [6, 7, 8, 10, 11], [12, 13, 9, 0, 0]]
    assert blocks[0]["labels"] == [1, 2, 9, -100, -100] and blocks[0]["attention_mask"] == [1, 1, 1, 0, 0]
    assert [b["input_ids"] for b in pack([[1, 9], [2, 9], [3, 4, 9]], 5, 0)] == [[1, 9, 2, 9, 0], [3, 4, 9, 0, 0]]


def test_text_refuses_generation_metrics():
    task = OmegaConf.create({"name": "t", "family": "text", "train_files": [str(DATA / "europarl_docs" / "*.txt")],
                             "metrics": ["perplexity", "chrf"]})
    with pytest.raises(DataError, match=r"no prompts to generate from: drop \['chrf'\]"):
        validate_task_config(task)


# ---------------------------------------------------------------------------------------- classification


def test_classification_labels_and_unseen_eval_label(tmp_path):
    tok = AutoTokenizer.from_pretrained(WORDPIECE)
    train = _write(tmp_path, "train.jsonl", "".join(f'{{"t": "s{i}", "y": {i % 3 * 5}}}\n' for i in range(12)))
    task = OmegaConf.create({"name": "c", "family": "text_classification", "train_file": train,
                             "text_column": "t", "label_column": "y"})
    data = build_task_data(task, tok, seed=0)
    assert data.label_names == ["0", "5", "10"]  # integers sort numerically
    head = TASK_KINDS.get(data.kind).head(data)
    assert head.config_fields["id2label"] == {0: "0", 1: "5", 2: "10"}
    dev = _write(tmp_path, "dev.jsonl", '{"t": "a", "y": 5}\n{"t": "b", "y": 7}\n')
    with pytest.raises(DataError, match=r"dev\.jsonl:2: eval label '7' never occurs in the training data"):
        build_task_data(OmegaConf.merge(task, {"eval_file": dev}), tok, seed=0)
    with pytest.raises(DataError, match=r"train\.jsonl:2: label '5' is not in task.labels"):
        build_task_data(OmegaConf.merge(task, {"labels": ["0", "10"]}), tok, seed=0)


# ----------------------------------------------------------------------------------------------- metrics


def test_sequence_nll_matches_the_model_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    ids = torch.randint(3, 50, (1, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        total, count = sequence_nll(out.logits, labels)
    assert count.item() == 5
    assert math.isclose(total.item() / count.item(), out.loss.item(), rel_tol=1e-5)


def test_likelihood_metrics_and_lower_is_better_transfer_gap():
    pairs = [(2.0, 1), (4.0, 3)]  # 6 nats over 4 tokens
    assert METRICS.get("nll")(pairs, [None, None]) == 1.5
    assert math.isclose(METRICS.get("perplexity")(pairs, [None, None]), math.exp(1.5))
    assert METRICS.get("rougeL")(["the cat sat"], ["the cat sat"]) == 100.0
    assert math.isclose(METRICS.get("rougeL")(["the cat"], ["the cat sat down"]), 100 * 2 * (1 * 0.5) / 1.5)
    gap = transfer_gap("perplexity", teacher=10.0, student_pre=30.0, student_post=20.0)
    assert gap["teacher_advantage"] == 20.0 and gap["student_gain"] == 10.0 and gap["transfer_efficiency"] == 0.5


def test_prompt_completion_and_system_prompt(bpe):
    record = Record({"prompt": "Summarise: the cat sat on the mat.", "completion": "A cat sat."}, "s.jsonl", 1)
    turns = to_conversation(record, "prompt_completion", InstructionColumns(), system_prompt="Be short.")
    assert [t["role"] for t in turns] == ["system", "user", "assistant"]
    row = Renderer(bpe, False).encode(turns, 128)
    assert _labelled_text(bpe, row) == "A cat sat.</s>"


def test_text_from_a_jsonl_column_and_a_missing_column(bpe, tmp_path):
    docs = _write(tmp_path, "docs.jsonl", "".join(f'{{"body": "document {i} " }}\n' for i in range(10)))
    task = OmegaConf.create({"name": "t", "family": "text", "train_files": [docs], "text_column": "body",
                             "block_size": 16})
    data = build_task_data(task, bpe, seed=0)
    assert data.info["documents"] == {"train": 9, "eval": 1}
    first = data.train[0]
    assert bpe.decode([i for i, m in zip(first["input_ids"], first["attention_mask"], strict=True) if m]).count(
        "</s>") >= 2  # short documents share a block, each ending with eos
    with pytest.raises(DataError, match=r"docs\.jsonl:1: record has no column 'text'"):
        build_task_data(OmegaConf.merge(task, {"text_column": "text"}), bpe, seed=0)
