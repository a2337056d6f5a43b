"""Text classification from your own CSV/TSV/JSONL: a text column, an optional pair column, any label set.

Labels are strings (JSON numbers and booleans are read as their text). ``task.labels`` fixes the class order;
when empty, the labels seen in the training file are sorted (numerically when they all are integers). The
model's config stores the mapping (``id2label``/``label2id``, see ``farlab.data.kinds.classifier_fields``), so a
saved student names its classes. An eval label never seen in training is refused with its file and line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from farlab.data.base import TaskData, check_eval_settings, metric_fields, typed_config
from farlab.data.files import Record, check_sources, hub_records, read_records, seeded_limit, split_or_load
from farlab.errors import DataError


@dataclass
class TextClassificationTaskConfig:
    name: str = "text_classification"
    family: str = "text_classification"
    train_file: str | None = None  # .csv / .tsv (with a header) or .jsonl / .json
    eval_file: str | None = None  # null: a seeded validation_fraction of train
    hub_name: str | None = None  # online machines: a datasets name (train_file: null)
    hub_config: str | None = None
    file_format: str = "auto"
    text_column: str = "text"
    pair_column: str | None = None  # second sentence of a pair task (NLI, paraphrase)
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # class order; empty: sorted labels of the training file
    max_length: int = 128
    validation_fraction: float = 0.1
    train_limit: int | None = None
    eval_limit: int | None = None
    metrics: list[str] = field(default_factory=lambda: ["accuracy", "macro_f1"])
    primary_metric: str | None = None


Example = tuple[tuple[str, ...], str, str]  # (texts, raw label, where)


class TextClassificationHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_config(TextClassificationTaskConfig, task_cfg)
        check_eval_settings(list(cfg.metrics), cfg.primary_metric)
        if cfg.max_length < 8:
            raise DataError(f"task.max_length={cfg.max_length} is too small (>= 8)")
        if len(set(cfg.labels)) != len(cfg.labels):
            raise DataError(f"task.labels={list(cfg.labels)} repeats a label")
        check_sources([cfg.train_file] if cfg.train_file else [], cfg.hub_name, cfg.file_format)
        if cfg.eval_file:
            check_sources([cfg.eval_file], None, cfg.file_format)

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> TaskData:
        cfg = typed_config(TextClassificationTaskConfig, task_cfg)
        records = read_records(cfg.train_file, cfg.file_format) if cfg.train_file else hub_records(
            cfg.hub_name, cfg.hub_config, "train")
        train = [example(r, cfg) for r in records]
        given = [example(r, cfg) for r in read_records(cfg.eval_file, cfg.file_format)] if cfg.eval_file else None
        labels = label_set(train, list(cfg.labels))
        splits = split_or_load(train, given, cfg.validation_fraction, seed,
                               Path(cfg.eval_file).name if cfg.eval_file else "eval")
        check_eval_labels(splits.eval, labels, [e[1] for e in splits.train])
        train_ex = seeded_limit(splits.train, cfg.train_limit, seed)
        eval_ex = seeded_limit(splits.eval, cfg.eval_limit, seed)
        ids = {label: i for i, label in enumerate(labels)}
        return TaskData(
            name=cfg.name,
            kind="classification",
            train=_tokenize(train_ex, ids, tokenizer, cfg.max_length).add_column(
                "example_id", list(range(len(train_ex)))),
            eval=_tokenize(eval_ex, ids, tokenizer, cfg.max_length),
            collator=DataCollatorWithPadding(tokenizer),
            label_names=labels,
            **metric_fields(cfg),
            eval_split_name=splits.eval_name,
            tokenizer=tokenizer,
            info={"train_rows": len(train_ex), "eval_rows": len(eval_ex),
                  "train_class_counts": dict(Counter(e[1] for e in train_ex))},
        )


def example(record: Record, cfg: TextClassificationTaskConfig) -> Example:
    texts = (str(record.get(cfg.text_column)),)
    if cfg.pair_column:
        texts += (str(record.get(cfg.pair_column)),)
    label = record.get(cfg.label_column)
    label = str(label).lower() if isinstance(label, bool) else str(label).strip()
    return texts, label, record.where


def label_set(train: list[Example], fixed: list[str]) -> list[str]:
    """``fixed`` (checked against the training labels), or the training labels sorted."""
    if fixed:
        for _, label, where in train:
            if label not in fixed:
                raise DataError(f"{where}: label {label!r} is not in task.labels={fixed}")
        return fixed
    seen = sorted({label for _, label, _ in train})
    if len(seen) < 2:
        raise DataError(f"the training data has {len(seen)} label(s) {seen}: classification needs at least two")
    if all(_is_int(s) for s in seen):
        seen.sort(key=int)
    return seen


def check_eval_labels(eval_ex: list[Example], labels: list[str], train_labels: list[str]) -> None:
    """Every eval label must be a class the model can predict, and one the training data has."""
    seen = set(train_labels)
    for _, label, where in eval_ex:
        if label not in seen:
            raise DataError(f"{where}: eval label {label!r} never occurs in the training data "
                            f"(training labels: {sorted(seen)}; classes: {labels})")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _tokenize(examples: list[Example], ids: dict[str, int], tokenizer: Any, max_length: int) -> datasets.Dataset:
    columns: dict[str, list] = {"text": [e[0][0] for e in examples], "labels": [ids[e[1]] for e in examples]}
    if len(examples[0][0]) > 1:
        columns["text_pair"] = [e[0][1] for e in examples]
    raw = datasets.Dataset.from_dict(columns)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], batch.get("text_pair"), truncation=True, max_length=max_length)

    return raw.map(encode, batched=True, remove_columns=[c for c in raw.column_names if c != "labels"],
                   desc="tokenize")


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("text_classification", TextClassificationHandler())
