"""Plain-text language modelling from files: .txt documents, or a text column of JSONL/CSV/TSV rows.

Each document is tokenized and ends with eos; documents are packed greedily into blocks of ``block_size``
tokens without being cut at a block boundary: a document that does not fit in the current block starts the
next one (the rest is padding, label -100), and only a document longer than a whole block is cut into
block-sized pieces. Splits are made per document (a seeded fraction when no eval files are given), so no
document is in both. Metric: perplexity over the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
from omegaconf import DictConfig

from farlab.data.base import TaskData, check_eval_settings, metric_fields, typed_config
from farlab.data.files import check_sources, hub_records, read_many, seeded_limit, split_or_load
from farlab.data.translation import CausalLMCollator
from farlab.errors import DataError
from farlab.eval.lm import generation_metrics


@dataclass
class TextTaskConfig:
    name: str = "text"
    family: str = "text"
    train_files: list[str] = field(default_factory=list)  # paths or globs: .txt (one document each), .jsonl, .csv
    eval_files: list[str] = field(default_factory=list)  # empty: a seeded validation_fraction of the documents
    hub_name: str | None = None  # online machines: a datasets name (train_files: [])
    hub_config: str | None = None
    file_format: str = "auto"
    text_column: str = "text"  # the document column of .jsonl/.csv rows (.txt files are read whole)
    block_size: int = 128
    validation_fraction: float = 0.1
    train_limit: int | None = None  # blocks
    eval_limit: int | None = None  # blocks
    metrics: list[str] = field(default_factory=lambda: ["perplexity", "nll"])
    primary_metric: str | None = None


class TextHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_config(TextTaskConfig, task_cfg)
        check_eval_settings(list(cfg.metrics), cfg.primary_metric)
        generating = generation_metrics(list(cfg.metrics))
        if generating:
            raise DataError(f"task {cfg.name!r} (plain text) has no prompts to generate from: drop {generating} "
                            "from task.metrics (valid: perplexity, nll)")
        if cfg.block_size < 8:
            raise DataError(f"task.block_size={cfg.block_size} is too small (>= 8)")
        check_sources(list(cfg.train_files), cfg.hub_name, cfg.file_format)
        if cfg.eval_files:
            check_sources(list(cfg.eval_files), None, cfg.file_format)

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> TaskData:
        cfg = typed_config(TextTaskConfig, task_cfg)
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise DataError("the tokenizer needs eos and pad tokens for text data (set tokenizer.pad_token)")
        train_docs = self._documents(cfg, list(cfg.train_files))
        eval_docs = self._documents(cfg, list(cfg.eval_files)) if cfg.eval_files else None
        splits = split_or_load(train_docs, eval_docs, cfg.validation_fraction, seed, "eval_files")
        packed = lambda docs: pack(_tokenize(docs, tokenizer), cfg.block_size, tokenizer.pad_token_id)  # noqa: E731
        blocks = {name: seeded_limit(packed(docs), limit, seed)
                  for name, docs, limit in (("train", splits.train, cfg.train_limit),
                                            ("eval", splits.eval, cfg.eval_limit))}
        return TaskData(
            name=cfg.name,
            kind="causal_lm",
            train=datasets.Dataset.from_list([{**b, "example_id": i} for i, b in enumerate(blocks["train"])]),
            eval=datasets.Dataset.from_list(blocks["eval"]),
            collator=CausalLMCollator(tokenizer.pad_token_id),
            label_names=[],
            **metric_fields(cfg),
            eval_split_name=splits.eval_name,
            tokenizer=tokenizer,
            info={"documents": {"train": len(splits.train), "eval": len(splits.eval)},
                  "blocks": {k: len(v) for k, v in blocks.items()}},
        )

    @staticmethod
    def _documents(cfg: TextTaskConfig, patterns: list[str]) -> list[str]:
        records = read_many(patterns, cfg.file_format) if patterns else hub_records(cfg.hub_name, cfg.hub_config,
                                                                                    "train")
        column = "text" if all(r.source.endswith(".txt") for r in records) else cfg.text_column
        return [str(r.get(column)) for r in records]


def _tokenize(documents: list[str], tokenizer: Any) -> list[list[int]]:
    return [ids + [tokenizer.eos_token_id]
            for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]


def pack(documents: list[list[int]], block_size: int, pad_id: int) -> list[dict[str, list[int]]]:
    """Greedy packing into ``block_size`` blocks without cutting a document at a block boundary (see module doc);
    ``documents`` are token ids, each already ending with eos.

    Every block is exactly ``block_size`` long; padding has attention 0 and label -100.
    """
    pieces = [doc[i : i + block_size] for doc in documents for i in range(0, len(doc), block_size)]
    blocks, current = [], []
    for piece in pieces:
        if current and len(current) + len(piece) > block_size:
            blocks.append(current)
            current = []
        current = current + piece
    if current:
        blocks.append(current)
    return [{"input_ids": b + [pad_id] * (block_size - len(b)),
             "attention_mask": [1] * len(b) + [0] * (block_size - len(b)),
             "labels": b + [-100] * (block_size - len(b))} for b in blocks]


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("text", TextHandler())
