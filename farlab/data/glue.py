"""GLUE classification tasks read from local TSVs in GLUE's own layout.

Everything about one task (its TSV column layout, label set, standard metrics, data dir, lengths, limits) lives in
``conf/task/<name>.yaml`` checked against :class:`GlueTaskConfig`: a new task in GLUE's format is one YAML file.

Two options shape the splits beyond the files: ``task.class_ratio`` subsamples the *training* rows per class
to a seeded imbalanced set (:func:`class_ratio_subset`), and ``task.extra_eval_files`` evaluates more files of
the data dir next to the primary eval split (``TaskData.extra_eval``, see :mod:`farlab.eval.extra`).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from farlab.data.base import TaskData, check_eval_settings, metric_fields, typed_config
from farlab.errors import DataError
from farlab.registry import Registry, unknown_choice_message

csv.field_size_limit(sys.maxsize)
log = logging.getLogger(__name__)
RATIO_TOLERANCE = 1e-6


@dataclass
class GlueLayout:
    """Where a GLUE-style TSV keeps its columns: part of each task's YAML (``task.layout``), so a new task in
    GLUE's format is one YAML file. Columns are header names, or 0-based indices when ``header`` is false."""

    text_columns: list[Any] = field(default_factory=list)  # one (single sentence) or two (pair) columns
    label_column: Any = None
    labels: list[str] = field(default_factory=list)  # raw label strings in class-id order
    header: bool = True
    eval_files: list[str] = field(default_factory=lambda: ["dev.tsv"])  # first one that exists is the eval split
    train_file: str = "train.tsv"


@dataclass
class TransferConfig:
    """A transfer set: training inputs without gold labels (Hinton et al.'s transfer set; DistilBERT, TinyBERT).

    On its rows only the distillation terms apply; CE is masked (farlab.trainer.pair). Rows carry ``labels=-100``
    and ``transfer=1``; they join the training split after the labelled rows, so a teacher cache covers them."""

    source: str | None = None  # null = off | rest (training rows train_limit/class_ratio left out) | file
    file: str | None = None  # source=file: a TSV (or one text per line with text_columns=[0], header=false)
    text_columns: list[Any] | None = None  # null = task.layout.text_columns
    header: bool | None = None  # null = task.layout.header
    # Fraction of the training set that are transfer rows (so of each shuffled batch, in expectation):
    # round(n_labelled * ratio / (1 - ratio)) seeded rows; null = every available row.
    ratio: float | None = None


@dataclass
class GlueTaskConfig:
    name: str = "cola"
    family: str = "glue"
    glue_task: str = "${.name}"  # the subset name on the hub (hub_name)
    layout: GlueLayout = field(default_factory=GlueLayout)
    data_dir: str | None = None  # local folder in GLUE's layout
    hub_name: str | None = None  # e.g. "nyu-mll/glue"; used only when data_dir is null (online machines)
    max_length: int = 128
    train_limit: int | None = None  # keep a seeded random subset of this many training rows
    # Seeded imbalanced training set: one fraction per label in the layout's label order, e.g. [0.9, 0.1] keeps
    # 90% label 0; as many rows as the ratio allows, at most train_limit. Eval splits are untouched.
    class_ratio: list[float] | None = None
    eval_limit: int | None = None
    validation_fraction: float = 0.1  # held out of train when the data dir has no dev split
    metrics: list[str] = field(default_factory=list)  # the task YAML states its standard metrics
    primary_metric: str | None = None  # null = the first of metrics
    # More eval files in data_dir, each evaluated like the primary split (metrics.json "extra_eval", by stem)
    extra_eval_files: list[str] = field(default_factory=list)  # e.g. [dev_mismatched.tsv] for MNLI
    # GLUE as generation (rl=grpo; farlab.data.glue_generation): one answer word per label (class-id order), and
    # the prompt around the text ({text}; {text_b} for pairs). Classification runs ignore both.
    label_words: list[str] | None = None
    prompt_template: str = "{text}\nAnswer:"
    transfer: TransferConfig = field(default_factory=TransferConfig)  # inputs without labels: distillation only


def typed_task_config(task_cfg: DictConfig) -> GlueTaskConfig:
    return typed_config(GlueTaskConfig, task_cfg)


class GlueHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_task_config(task_cfg)
        layout = self._layout(cfg)
        check_eval_settings(list(cfg.metrics), cfg.primary_metric)
        if not 0 < cfg.validation_fraction < 1:
            raise DataError(f"task.validation_fraction={cfg.validation_fraction} must be in (0, 1)")
        if cfg.max_length < 8:
            raise DataError(f"task.max_length={cfg.max_length} is too small (>= 8)")
        if cfg.class_ratio is not None:
            check_class_ratio(cfg.class_ratio, layout.labels)
        if cfg.data_dir is None:
            if cfg.hub_name is None:
                raise DataError(f"task {cfg.name!r}: set task.data_dir (a local GLUE folder) or task.hub_name")
            if cfg.extra_eval_files:
                raise DataError(f"task.extra_eval_files={list(cfg.extra_eval_files)} needs task.data_dir (local "
                                f"files); task {cfg.name!r} reads the hub ({cfg.hub_name})")
            transfer_problems(cfg.transfer)
            return
        data_dir = Path(cfg.data_dir)
        train = data_dir / layout.train_file
        if not train.is_file():
            raise DataError(
                f"task {cfg.name!r}: training file {train} not found; task.data_dir={cfg.data_dir} must hold "
                f"{layout.train_file} in GLUE's layout (eval split: {' or '.join(layout.eval_files)}, optional)"
            )
        _check_extra_files(cfg, layout, data_dir)
        transfer_problems(cfg.transfer)

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> TaskData:
        cfg = typed_task_config(task_cfg)
        layout = self._layout(cfg)
        train_rows, eval_rows, eval_name, all_train = self.rows(cfg, layout, seed)
        transfer = transfer_rows(cfg, layout, all_train, train_rows, seed)
        extra = {
            Path(name).stem: _tokenize(
                _seeded_subset(read_glue_tsv(Path(cfg.data_dir) / name, layout), cfg.eval_limit, seed),
                tokenizer,
                cfg.max_length,
            )
            for name in cfg.extra_eval_files
        }
        # example_id: the row's index, so a teacher cache can look the row up (models never see it)
        labelled = _tokenize(train_rows, tokenizer, cfg.max_length).add_column("example_id", list(range(len(train_rows))))
        train = labelled
        if transfer:
            flag = [0] * len(train_rows) + [1] * len(transfer)
            train = _tokenize(train_rows + transfer, tokenizer, cfg.max_length).add_column(
                "example_id", list(range(len(flag)))).add_column("transfer", flag)
        return TaskData(
            name=cfg.name,
            kind="classification",
            train=train,
            sft_train=labelled if transfer else None,  # an SFT teacher learns from the labelled rows only
            eval=_tokenize(eval_rows, tokenizer, cfg.max_length),
            collator=DataCollatorWithPadding(tokenizer),
            label_names=list(layout.labels),
            **metric_fields(cfg),
            eval_split_name=eval_name,
            tokenizer=tokenizer,
            info={
                "train_rows": len(train_rows),
                "eval_rows": len(eval_rows),
                "train_class_counts": _class_counts(train_rows, layout.labels),
                "transfer_rows": len(transfer),
            },
            extra_eval=extra,
        )

    def rows(self, cfg: GlueTaskConfig, layout: GlueLayout,
             seed: int) -> tuple[list[Row], list[Row], str, list[Row]]:
        """The run's train rows (limit or class ratio applied), eval rows (limit applied), eval split name, and
        the whole training split (what a transfer set draws its unused rows from)."""
        all_train, eval_rows, eval_name = self._load_rows(cfg, layout, seed)
        if cfg.class_ratio is None:
            train_rows = _seeded_subset(all_train, cfg.train_limit, seed)
        else:
            train_rows = class_ratio_subset(all_train, cfg.class_ratio, seed, cfg.train_limit, layout.labels)
        eval_rows = _seeded_subset(eval_rows, cfg.eval_limit, seed)
        if not train_rows or not eval_rows:
            raise DataError(f"task {cfg.name!r}: empty split (train {len(train_rows)}, eval {len(eval_rows)} rows)")
        return train_rows, eval_rows, eval_name, all_train

    def rl_problems(self, task_cfg: DictConfig) -> list[str]:
        from farlab.data.glue_generation import verbaliser_problems  # local: glue_generation imports this module

        return verbaliser_problems(typed_task_config(task_cfg))

    def rl_data(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> tuple[TaskData, datasets.Dataset]:
        """GLUE as generation (farlab.data.glue_generation): eval data scored by the verbaliser, and RL prompts."""
        from farlab.data.glue_generation import verbalised_task

        return verbalised_task(self, typed_task_config(task_cfg), tokenizer, seed)

    @staticmethod
    def _layout(cfg: GlueTaskConfig) -> GlueLayout:
        layout = cfg.layout
        missing = [k for k, empty in (("text_columns", not layout.text_columns),
                                      ("label_column", layout.label_column is None), ("labels", not layout.labels))
                   if empty]
        if missing:
            raise DataError(f"task {cfg.name!r}: task.layout needs {', '.join(missing)} (where the TSV keeps its "
                            "text and label columns; see conf/task/cola.yaml)")
        if len(layout.text_columns) > 2:
            raise DataError(f"task {cfg.name!r}: task.layout.text_columns={list(layout.text_columns)}: one column, "
                            "or two for sentence pairs")
        return layout

    def _load_rows(self, cfg: GlueTaskConfig, layout: GlueLayout, seed: int) -> tuple[list, list, str]:
        if cfg.data_dir is None:
            return _load_hub_rows(cfg, layout)
        data_dir = Path(cfg.data_dir)
        train_rows = read_glue_tsv(data_dir / layout.train_file, layout)
        for name in layout.eval_files:
            if (data_dir / name).is_file():
                return train_rows, read_glue_tsv(data_dir / name, layout), name
        # No dev split shipped (e.g. SST-2 here): carve a seeded validation split out of train.
        shuffled = train_rows[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, int(round(len(shuffled) * cfg.validation_fraction)))
        return shuffled[n_eval:], shuffled[:n_eval], f"train[{cfg.validation_fraction:.0%} seeded split]"


Row = tuple[tuple[str, ...], int]


def read_glue_tsv(path: Path, layout: GlueLayout) -> list[Row]:
    """Read one GLUE TSV into (texts, label id) rows, refusing malformed lines with their line number."""
    rows: list[Row] = []
    label_ids = {label: i for i, label in enumerate(layout.labels)}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = next(reader, None) if layout.header else None
        columns = [_column_index(col, header, path) for col in (*layout.text_columns, layout.label_column)]
        for line_no, fields in enumerate(reader, start=2 if layout.header else 1):
            if not fields:
                continue
            if len(fields) <= max(columns):
                raise DataError(f"{path}:{line_no}: expected at least {max(columns) + 1} tab-separated fields, got {len(fields)}")
            *texts, raw_label = (fields[c].strip() for c in columns)
            if raw_label not in label_ids:
                raise DataError(
                    f"{path}:{line_no}: label {raw_label!r} is not in the task's label set {list(layout.labels)}"
                )
            rows.append((tuple(texts), label_ids[raw_label]))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _column_index(column: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}: header has no column {column!r} (header: {header})")
    return header.index(column)


def check_class_ratio(ratio: list[float], labels: tuple[str, ...] | list[str]) -> None:
    """One fraction per label, each > 0, summing to 1 (within :data:`RATIO_TOLERANCE`)."""
    ratio = list(ratio)
    problem = None
    if len(ratio) != len(labels):
        problem = f"has {len(ratio)} entries, the task has {len(labels)} labels"
    elif any(not r > 0 for r in ratio):
        problem = "needs every fraction > 0"
    elif abs(sum(ratio) - 1.0) > RATIO_TOLERANCE:
        problem = f"sums to {sum(ratio):.6g}, not 1"
    if problem:
        raise DataError(f"task.class_ratio={ratio} {problem}: give one fraction per label in the order "
                        f"{list(labels)}, each > 0, summing to 1 (e.g. {[round(1 / len(labels), 4)] * len(labels)})")


def class_ratio_subset(
    rows: list[Row], ratio: list[float], seed: int, limit: int | None = None, labels: tuple[str, ...] = ()
) -> list[Row]:
    """The largest seeded subset of ``rows`` whose class fractions are ``ratio`` (label-id order), at most
    ``limit`` rows.

    Size: ``N = min_k floor(n_k / r_k)`` (the class that runs out first decides), capped at ``limit``; class k keeps
    ``r_k * N`` rows rounded by largest remainder so the counts sum to N. Which rows: a per-class shuffle with
    ``random.Random(seed)``, so a smaller ``limit`` keeps a subset of a larger one's rows. Kept rows stay in file
    order.
    """
    labels = tuple(labels) or tuple(str(k) for k in range(len(ratio)))
    check_class_ratio(ratio, labels)
    by_class: list[list[int]] = [[] for _ in ratio]
    for i, (_, label) in enumerate(rows):
        by_class[label].append(i)
    available = [len(ix) for ix in by_class]
    if 0 in available:
        empty = [labels[k] for k, n in enumerate(available) if n == 0]
        raise DataError(f"task.class_ratio={list(ratio)}: no training rows of label(s) {empty} to sample from")
    total = min(math.floor(n / r + 1e-9) for n, r in zip(available, ratio))
    if limit is not None:
        total = min(total, limit)
    counts = _apportion(total, ratio)
    rng = random.Random(seed)
    keep: list[int] = []
    for ix, count in zip(by_class, counts):
        ix = ix[:]
        rng.shuffle(ix)
        keep += ix[:count]
    log.info(
        "task.class_ratio=%s: %d training rows of %d (%s)", list(ratio), total, len(rows),
        ", ".join(f"{label}: {c} of {n}, {c / max(total, 1):.1%}" for label, c, n in zip(labels, counts, available)),
    )
    return [rows[i] for i in sorted(keep)]


def _apportion(total: int, ratio: list[float]) -> list[int]:
    """Integer counts summing to ``total`` closest to ``ratio * total`` (largest remainder; ties to lower ids).

    No class exceeds its rows: ``total <= n_k / r_k`` gives ``r_k * total <= n_k``, and only a class whose quota is
    fractional (so strictly below the integer ``n_k``) gets rounded up."""
    quotas = [r * total for r in ratio]
    counts = [math.floor(q + 1e-9) for q in quotas]
    by_remainder = sorted(range(len(ratio)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def _class_counts(rows: list[Row], labels: tuple[str, ...]) -> dict[str, int]:
    counts = [0] * len(labels)
    for _, label in rows:
        counts[label] += 1
    return dict(zip(labels, counts))


# --------------------------------------------------------------------------------------------------
# Transfer sets
# --------------------------------------------------------------------------------------------------

NO_LABEL = -100  # the label of a transfer row: ignored by every CE (and masked explicitly by the trainer)


def transfer_problems(transfer: TransferConfig) -> None:
    """Cheap checks of ``task.transfer`` (files exist, a known source, a ratio in (0, 1))."""
    if transfer.source is None:
        return
    if transfer.source not in TRANSFER_SOURCES:
        raise DataError(unknown_choice_message("task.transfer.source", transfer.source, TRANSFER_SOURCES.names()))
    if transfer.ratio is not None and not 0 < transfer.ratio < 1:
        raise DataError(f"task.transfer.ratio={transfer.ratio} must be in (0, 1) (the fraction of training rows "
                        "that are transfer rows) or null (every available row)")
    if transfer.source == "file" and (transfer.file is None or not Path(transfer.file).is_file()):
        raise DataError(f"task.transfer.file={transfer.file!r} not found (task.transfer.source=file reads it)")


def _rest(cfg: GlueTaskConfig, layout: GlueLayout, all_train: list[Row], labelled: list[Row]) -> list[Row]:
    """The training rows not kept as labelled ones (a multiset difference: duplicate sentences count apart)."""
    left = Counter(labelled)
    rest = []
    for row in all_train:
        if left[row]:
            left[row] -= 1
        else:
            rest.append(row)
    return rest


def _file(cfg: GlueTaskConfig, layout: GlueLayout, all_train: list[Row], labelled: list[Row]) -> list[Row]:
    """Texts of a TSV file (columns: task.transfer.text_columns or the task's); no label column is read."""
    transfer = cfg.transfer
    columns = list(transfer.text_columns or layout.text_columns)
    header = layout.header if transfer.header is None else transfer.header
    path = Path(str(transfer.file))
    rows: list[Row] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = next(reader, None) if header else None
        index = [_column_index(c, names, path) for c in columns]
        for line_no, fields in enumerate(reader, start=2 if header else 1):
            if not fields:
                continue
            if len(fields) <= max(index):
                raise DataError(f"{path}:{line_no}: expected at least {max(index) + 1} tab-separated fields, "
                                f"got {len(fields)} (task.transfer.text_columns={columns})")
            rows.append((tuple(fields[c].strip() for c in index), NO_LABEL))
    if len(columns) != len(layout.text_columns):
        raise DataError(f"task.transfer.text_columns={columns}: task {cfg.name!r} takes "
                        f"{len(layout.text_columns)} text column(s)")
    return rows


TRANSFER_SOURCES: Registry[Callable[[GlueTaskConfig, GlueLayout, list[Row], list[Row]], list[Row]]] = Registry(
    "task.transfer.source")
TRANSFER_SOURCES.add("rest", _rest)
TRANSFER_SOURCES.add("file", _file)


def transfer_rows(cfg: GlueTaskConfig, layout: GlueLayout, all_train: list[Row], labelled: list[Row],
                  seed: int) -> list[Row]:
    """The transfer set's rows (label :data:`NO_LABEL`): a seeded choice sized by ``task.transfer.ratio``."""
    transfer = cfg.transfer
    if transfer.source is None:
        return []
    pool = [(texts, NO_LABEL) for texts, _ in TRANSFER_SOURCES.get(transfer.source)(cfg, layout, all_train, labelled)]
    random.Random(seed + 1).shuffle(pool)  # seeded; + 1: not the permutation that picked the labelled rows
    wanted = len(pool) if transfer.ratio is None else round(len(labelled) * transfer.ratio / (1 - transfer.ratio))
    if wanted > len(pool):
        most = len(pool) / (len(pool) + len(labelled))
        raise DataError(f"task.transfer.ratio={transfer.ratio} needs {wanted} transfer rows next to {len(labelled)} "
                        f"labelled ones, but task.transfer.source={transfer.source} has {len(pool)} (ratio at most "
                        f"{most:.4f}; null = all of them)")
    if not wanted:
        raise DataError(f"task.transfer.source={transfer.source} gives no transfer rows for task {cfg.name!r}")
    log.info("task.transfer: %d %s rows without labels next to %d labelled (%.1f%% of training rows)", wanted,
             transfer.source, len(labelled), 100 * wanted / (wanted + len(labelled)))
    return pool[:wanted]


def _check_extra_files(cfg: GlueTaskConfig, layout: GlueLayout, data_dir: Path) -> None:
    """Extra eval files exist, differ from the primary eval file, and have distinct names (their metrics key)."""
    primary = next((name for name in layout.eval_files if (data_dir / name).is_file()), None)
    stems = [Path(name).stem for name in cfg.extra_eval_files]
    for name in cfg.extra_eval_files:
        if not (data_dir / name).is_file():
            found = sorted(p.name for p in data_dir.glob("*.tsv"))
            raise DataError(f"task.extra_eval_files: {name!r} not found in task.data_dir={data_dir} (there: {found}); "
                            "task.extra_eval_files=[] evaluates the primary split only")
        if name == primary:
            raise DataError(f"task.extra_eval_files: {name!r} is already the primary eval split of task {cfg.name!r}")
    if len(set(stems)) != len(stems):
        raise DataError(f"task.extra_eval_files={list(cfg.extra_eval_files)}: names must differ without extension "
                        "(the stem is their key in metrics.json)")


def _seeded_subset(rows: list[Row], limit: int | None, seed: int) -> list[Row]:
    if limit is None or limit >= len(rows):
        return rows
    picked = rows[:]
    random.Random(seed).shuffle(picked)
    return picked[:limit]


def _tokenize(rows: list[Row], tokenizer: Any, max_length: int) -> datasets.Dataset:
    columns: dict[str, list] = {"text": [r[0][0] for r in rows], "labels": [r[1] for r in rows]}
    if len(rows[0][0]) > 1:
        columns["text_pair"] = [r[0][1] for r in rows]
    raw = datasets.Dataset.from_dict(columns)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], batch.get("text_pair"), truncation=True, max_length=max_length)

    drop = [c for c in raw.column_names if c != "labels"]
    return raw.map(encode, batched=True, remove_columns=drop, desc="tokenize")


def _load_hub_rows(cfg: GlueTaskConfig, layout: GlueLayout) -> tuple[list, list, str]:
    """Online machines only: read the task from the datasets hub (not exercised by the tests)."""
    ds = datasets.load_dataset(cfg.hub_name, cfg.glue_task)
    text_cols = [c for c in ds["train"].column_names if c not in ("label", "idx")]

    def rows(split: datasets.Dataset) -> list[Row]:
        return [(tuple(str(ex[c]) for c in text_cols), int(ex["label"])) for ex in split]

    eval_split = "validation_matched" if "validation_matched" in ds else "validation"
    return rows(ds["train"]), rows(ds[eval_split]), eval_split


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("glue", GlueHandler())
