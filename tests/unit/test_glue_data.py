"""GLUE TSV reading on real shipped files and on small files in GLUE's exact layouts."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import DataError, build_task_data, validate_task_config
from farlab.data.glue import read_glue_tsv
from tests.conftest import SHARED_DATA, glue_layout, glue_task

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece")


_task = glue_task


def test_real_cola_counts_match_sources_md():
    train = read_glue_tsv(SHARED_DATA / "cola" / "train.tsv", glue_layout("cola"))
    dev = read_glue_tsv(SHARED_DATA / "cola" / "dev.tsv", glue_layout("cola"))
    assert len(train) == 8551 and sum(label for _, label in train) == 6023
    assert len(dev) == 527 and sum(label for _, label in dev) == 365


def test_sst2_without_dev_gets_a_seeded_split_of_train():
    cfg = _task(name="sst2", data_dir=str(SHARED_DATA / "sst2"), validation_fraction=0.01, train_limit=200)
    first = build_task_data(cfg, TOKENIZER, seed=3)
    again = build_task_data(cfg, TOKENIZER, seed=3)
    other = build_task_data(cfg, TOKENIZER, seed=4)
    assert len(first.eval) == round(67349 * 0.01)
    assert first.eval["input_ids"] == again.eval["input_ids"]
    assert first.eval["input_ids"] != other.eval["input_ids"]
    assert first.eval_split_name.startswith("train[")


def test_data_dir_with_dev_tsv_uses_it(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nvery good \t1\nbad \t0\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    data = build_task_data(_task(name="sst2", data_dir=str(tmp_path)), TOKENIZER, seed=0)
    assert data.eval_split_name == "dev.tsv" and len(data.eval) == 1 and len(data.train) == 2


def test_mnli_and_qqp_pairs_in_glue_layout(tmp_path):
    mnli = tmp_path / "mnli"
    mnli.mkdir()
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
    row = "0\t1\t1n\tfiction\t(a)\t(b)\t(a)\t(b)\tA man sleeps.\tA person rests.\tentailment\t{}\n"
    (mnli / "train.tsv").write_text(header + row.format("entailment") + row.format("contradiction"))
    (mnli / "dev_matched.tsv").write_text(header + row.format("neutral"))
    data = build_task_data(_task(name="mnli", data_dir=str(mnli)), TOKENIZER, seed=0)
    assert data.label_names == ["entailment", "neutral", "contradiction"]
    assert data.train["labels"] == [0, 2] and data.eval["labels"] == [1]
    assert 1 in data.train[0]["token_type_ids"]  # the pair is encoded as two segments

    qqp = tmp_path / "qqp"
    qqp.mkdir()
    (qqp / "train.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tHow?\tWhy?\t0\n")
    (qqp / "dev.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n2\t3\t4\tWho?\tWho?\t1\n")
    data = build_task_data(_task(name="qqp", data_dir=str(qqp)), TOKENIZER, seed=0)
    assert data.metrics == ["accuracy", "f1"] and data.eval["labels"] == [1]


def test_label_outside_label_set_names_file_line_and_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("src\t1\t\tgood.\nsrc\t2\t*\tbad.\n")
    with pytest.raises(DataError, match=r"train.tsv:2: label '2' is not in the task's label set \['0', '1'\]"):
        build_task_data(_task(name="cola", data_dir=str(tmp_path)), TOKENIZER, seed=0)


def test_malformed_row_is_refused(tmp_path):
    (tmp_path / "train.tsv").write_text("src\t1\t\tgood.\nonly-one-field\n")
    with pytest.raises(DataError, match=r"train.tsv:2: expected at least 4 tab-separated fields, got 1"):
        build_task_data(_task(name="cola", data_dir=str(tmp_path)), TOKENIZER, seed=0)


def test_missing_train_file_is_refused_before_models_load(tmp_path: Path):
    with pytest.raises(DataError, match=r"training file .*train.tsv not found"):
        validate_task_config(_task(name="cola", data_dir=str(tmp_path / "nowhere")))


def test_unknown_task_key_and_unknown_glue_task():
    with pytest.raises(DataError, match="max_lenght"):
        validate_task_config(_task(name="cola", data_dir="x", max_lenght=3))
    with pytest.raises(DataError, match=r"task 'colaa': task.layout needs text_columns, label_column, labels"):
        validate_task_config(_task(name="colaa", data_dir="x", metrics=["mcc"]))
