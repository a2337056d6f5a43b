"""task.extra_eval_files: MNLI-style fixtures in GLUE's layout, read, validated and evaluated like the primary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from farlab.config import REPO_ROOT
from farlab.data import DataError, build_task_data, validate_task_config
from farlab.eval.calibration import CALIBRATION_KEYS
from farlab.eval.extra import evaluate_extra, extra_eval_report
from farlab.eval.loop import evaluate_model
from tests.conftest import glue_task

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece")
HEADER = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
LABELS = ("entailment", "neutral", "contradiction")


def write_mnli(folder: Path, files: dict[str, int]) -> Path:
    """GLUE's MNLI layout: one TSV per name with ``rows`` rows, labels cycling through the three classes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        lines = [
            f"{i}\t{i}\t{i}n\tfiction\t(a)\t(b)\t(a)\t(b)\tThe man {name} {i} sleeps.\tA person rests {i}.\t-\t"
            f"{LABELS[i % 3]}\n"
            for i in range(rows)
        ]
        (folder / name).write_text(HEADER + "".join(lines))
    return folder


def _task(data_dir: Path, **fields):
    return glue_task(name="mnli", data_dir=str(data_dir), **fields)


def _model(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=2000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_extra_files_are_read_by_stem_with_the_eval_limit(tmp_path):
    mnli = write_mnli(tmp_path, {"train.tsv": 12, "dev_matched.tsv": 6, "dev_mismatched.tsv": 9})
    data = build_task_data(_task(mnli, extra_eval_files=["dev_mismatched.tsv"]), TOKENIZER, seed=0)
    assert data.eval_split_name == "dev_matched.tsv" and len(data.eval) == 6
    extra = data.extra_eval
    assert list(extra) == ["dev_mismatched"] and extra["dev_mismatched"]["labels"] == [0, 1, 2] * 3
    limited = build_task_data(_task(mnli, extra_eval_files=["dev_mismatched.tsv"], eval_limit=4), TOKENIZER, 0)
    assert len(limited.eval) == 4 and len(limited.extra_eval["dev_mismatched"]) == 4
    assert build_task_data(_task(mnli), TOKENIZER, seed=0).extra_eval == {}


def test_extra_split_metrics_equal_a_primary_evaluation_of_that_file(tmp_path):
    mnli = write_mnli(tmp_path / "a", {"train.tsv": 12, "dev_matched.tsv": 6, "dev_mismatched.tsv": 9})
    data = build_task_data(_task(mnli, extra_eval_files=["dev_mismatched.tsv"]), TOKENIZER, seed=0)
    student, teacher = _model(0), _model(1)
    got = evaluate_extra(data, {"student": student, "teacher": teacher}, 4, "pre", progress=False)

    # Independently: a data dir whose primary eval file *is* the mismatched file.
    alone = tmp_path / "b"
    alone.mkdir()
    (alone / "train.tsv").write_text((mnli / "train.tsv").read_text())
    (alone / "dev_matched.tsv").write_text((mnli / "dev_mismatched.tsv").read_text())
    primary = build_task_data(_task(alone), TOKENIZER, seed=0)
    assert got == {"dev_mismatched": {"student": evaluate_model(student, primary, 4, progress=False),
                                      "teacher": evaluate_model(teacher, primary, 4, progress=False)}}
    assert {"accuracy"} | CALIBRATION_KEYS == set(got["dev_mismatched"]["student"])
    assert set(got["dev_mismatched"]["student"]["per_class_recall"]) == set(LABELS)

    # No teacher in process (cache/server backend, or none): only the student; post adds its own stage.
    post = evaluate_extra(data, {"student": student, "teacher": None}, 4, "post", progress=False)
    assert set(post["dev_mismatched"]) == {"student"}
    report = extra_eval_report(got, post)
    assert report == {"dev_mismatched": {"pre": got["dev_mismatched"], "post": post["dev_mismatched"]}}
    assert extra_eval_report({}, {}) == {}


@pytest.mark.parametrize(
    ("files", "extra", "pattern"),
    [
        ({}, ["dev_mismatched.tsv"],
         r"'dev_mismatched.tsv' not found in task.data_dir=.*\['dev_matched.tsv', 'train.tsv'\]\); task.extra_eval_files"),
        ({}, ["dev_matched.tsv"], "'dev_matched.tsv' is already the primary eval split"),
        ({"dev_mismatched.tsv": 2, "dev_mismatched.txt": 2}, ["dev_mismatched.tsv", "dev_mismatched.txt"],
         "names must differ without extension"),
    ],
)
def test_bad_extra_files_are_refused_before_any_data_loads(tmp_path, files, extra, pattern):
    mnli = write_mnli(tmp_path, {"train.tsv": 3, "dev_matched.tsv": 3, **files})
    with pytest.raises(DataError, match=pattern):
        validate_task_config(_task(mnli, extra_eval_files=extra))


def test_extra_files_need_a_local_data_dir():
    task = glue_task(**{"name": "mnli", "data_dir": None, "hub_name": "nyu-mll/glue",
                             "extra_eval_files": ["dev_mismatched.tsv"]})
    with pytest.raises(DataError, match=r"extra_eval_files=\['dev_mismatched.tsv'\] needs task.data_dir"):
        validate_task_config(task)


def test_mnli_yaml_declares_dev_mismatched_as_extra():
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "task" / "mnli.yaml")
    assert list(cfg.extra_eval_files) == ["dev_mismatched.tsv"]
