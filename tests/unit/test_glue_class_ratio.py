"""task.class_ratio: a seeded imbalanced training set, on the real shipped SST-2/CoLA files and small TSVs."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import DataError, build_task_data, validate_task_config
from farlab.data.glue import class_ratio_subset, read_glue_tsv
from tests.conftest import SHARED_DATA, glue_layout, glue_task

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece")
SST2 = read_glue_tsv(SHARED_DATA / "sst2" / "train.tsv", glue_layout("sst2"))  # 29,780 neg (0) / 37,569 pos (1)


_task = glue_task


def _counts(rows) -> list[int]:
    c = Counter(label for _, label in rows)
    return [c[0], c[1]]


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        # negatives run out first: N = floor(29780 / 0.9) = 33088; 0.9 N = 29779.2, 0.1 N = 3308.8 -> 29779 + 3309
        ([0.9, 0.1], [29779, 3309]),
        # positives run out first: N = floor(37569 / 0.9) = 41743; 0.1 N = 4174.3, 0.9 N = 37568.7 -> 4174 + 37569
        ([0.1, 0.9], [4174, 37569]),
    ],
)
def test_real_sst2_keeps_the_largest_set_with_the_ratio(ratio, expected):
    assert _counts(SST2) == [29780, 37569]
    kept = class_ratio_subset(SST2, ratio, seed=0)
    assert _counts(kept) == expected
    assert set(kept) <= set(SST2)


def test_seeded_deterministic_and_nested_under_train_limit():
    first = class_ratio_subset(SST2, [0.9, 0.1], seed=1, limit=1000)
    again = class_ratio_subset(SST2, [0.9, 0.1], seed=1, limit=1000)
    other = class_ratio_subset(SST2, [0.9, 0.1], seed=2, limit=1000)
    assert first == again and first != other
    assert _counts(first) == _counts(other) == [900, 100]  # train_limit caps the total; the ratio holds exactly
    smaller = class_ratio_subset(SST2, [0.9, 0.1], seed=1, limit=300)
    assert _counts(smaller) == [270, 30] and set(smaller) <= set(first)
    # Kept rows stay in file order (unique rows here: SST-2 repeats some sentences).
    rows = [((f"s{i}",), int(i % 3 == 0)) for i in range(300)]
    kept = [int(text[0][1:]) for text, _ in class_ratio_subset(rows, [0.5, 0.5], seed=1)]
    assert kept == sorted(kept) and len(kept) == 200


def test_real_cola_build_reports_counts_and_leaves_eval_untouched(caplog):
    base = {"name": "cola", "data_dir": str(SHARED_DATA / "cola"), "train_limit": 200}
    caplog.set_level(logging.INFO, logger="farlab.data.glue")
    imbalanced = build_task_data(_task(**base, class_ratio=[0.7, 0.3]), TOKENIZER, seed=0)
    plain = build_task_data(_task(**base), TOKENIZER, seed=0)
    assert imbalanced.info["train_class_counts"] == {"0": 140, "1": 60}
    assert Counter(imbalanced.train["labels"]) == {0: 140, 1: 60}
    assert "task.class_ratio=[0.7, 0.3]: 200 training rows of 8551 (0: 140 of 2528, 70.0%, 1: 60 of 6023" in caplog.text
    assert imbalanced.eval["input_ids"] == plain.eval["input_ids"] and len(imbalanced.eval) == 527


def test_limit_above_what_the_ratio_allows_keeps_the_maximum(tmp_path):
    lines = ["sentence\tlabel"] + [f"good {i} \t1" for i in range(30)] + [f"bad {i} \t0" for i in range(10)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine \t1\nawful \t0\n")
    task = _task(name="sst2", data_dir=str(tmp_path), class_ratio=[0.2, 0.8], train_limit=1000)
    data = build_task_data(task, TOKENIZER, seed=0)
    # positives run out first: N = floor(30 / 0.8) = 37 -> 0.2 N = 7.4, 0.8 N = 29.6 -> 7 + 30
    assert data.info["train_class_counts"] == {"0": 7, "1": 30}
    assert data.eval["labels"] == [1, 0]


@pytest.mark.parametrize(
    ("ratio", "pattern"),
    [
        ([0.5, 0.3, 0.2], r"class_ratio=\[0.5, 0.3, 0.2\] has 3 entries, the task has 2 labels"),
        ([1.0, 0.0], r"class_ratio=\[1.0, 0.0\] needs every fraction > 0"),
        ([0.9, 0.05], r"class_ratio=\[0.9, 0.05\] sums to 0.95, not 1"),
    ],
)
def test_bad_ratio_is_refused_before_any_data_loads(ratio, pattern):
    task = _task(name="cola", data_dir=str(SHARED_DATA / "cola"), class_ratio=ratio)
    with pytest.raises(DataError, match=pattern) as err:
        validate_task_config(task)
    assert "['0', '1']" in str(err.value)  # names the labels, in the order the fractions follow


def test_ratio_within_tolerance_is_accepted_and_a_missing_class_is_named():
    validate_task_config(_task(name="cola", data_dir=str(SHARED_DATA / "cola"), class_ratio=[0.7, 0.3 + 1e-9]))
    only_positive = [row for row in SST2[:50] if row[1] == 1]
    with pytest.raises(DataError, match=r"no training rows of label\(s\) \['0'\]"):
        class_ratio_subset(only_positive, [0.5, 0.5], seed=0, labels=("0", "1"))
