"""The workbench's small rules against hand-computed values: headft diagnosis, probe emergence, reliability bins,
head training on separable features, seeded subsets, layer checks and disagree's per-example scoring."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from farlab.eval.calibration import expected_calibration_error
from farlab.workbench.headft import diagnose, train_head
from farlab.workbench.loading import WorkbenchError, check_layers, seeded_subset
from farlab.workbench.outputs import reliability_bins
from farlab.workbench.probe import emergence_depth


def test_headft_diagnosis_rule_and_threshold():
    # teacher 0.50, student 0.20: gap 0.30; head-only 0.38 closes 0.18 / 0.30 = 60% -> alignment
    verdict, closed = diagnose(0.50, 0.20, 0.38)
    assert closed == pytest.approx(0.6) and verdict.startswith("alignment") and "60%" in verdict
    verdict, closed = diagnose(0.50, 0.20, 0.29)  # 0.09 / 0.30 = 30% -> capacity
    assert closed == pytest.approx(0.3) and verdict.startswith("capacity")
    assert diagnose(0.50, 0.20, 0.35)[0].startswith("alignment")  # exactly 50% counts as most of the gap
    verdict, closed = diagnose(0.30, 0.35, 0.40)
    assert closed is None and verdict.startswith("no gap")


def test_emergence_depth_is_the_first_layer_at_ninety_percent_of_the_best():
    # best 0.50 -> threshold 0.45: depth 0.5 is the first with >= 0.45
    assert emergence_depth([(0.0, 0.1), (0.25, 0.4), (0.5, 0.46), (0.75, 0.5), (1.0, 0.3)]) == 0.5
    assert emergence_depth([(0.0, 0.0), (1.0, -0.1)]) is None  # nothing learned anywhere
    assert emergence_depth([]) is None


def test_reliability_bins_by_hand_and_consistent_with_the_ece():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    bins = reliability_bins(probs, labels, 5)  # bins (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]
    filled = {b["bin"]: b for b in bins if b["count"]}
    assert set(filled) == {2, 3, 4}
    assert filled[2]["count"] == 1 and filled[2]["accuracy"] == 1.0 and filled[2]["confidence"] == 0.55
    assert filled[3]["count"] == 2 and filled[3]["accuracy"] == 0.5  # 0.8 lies in (0.6, 0.8], 0.7 too
    assert filled[3]["confidence"] == pytest.approx(0.75)
    assert filled[4]["count"] == 1 and filled[4]["accuracy"] == 1.0
    ece = sum(b["count"] / 4 * abs(b["accuracy"] - b["confidence"]) for b in filled.values())
    assert ece == pytest.approx(expected_calibration_error(probs, labels, n_bins=5))


def test_head_training_separates_separable_features():
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(0, 2, size=200))
    x = torch.tensor(rng.normal(size=(200, 6)), dtype=torch.float32)
    x[:, 0] += 3.0 * (2 * y.float() - 1)  # class signal on one feature
    head = torch.nn.Linear(6, 2)
    torch.nn.init.zeros_(head.weight)  # a fresh head starts near zero (BERT: N(0, 0.02)), as _fresh_head does
    recipe = {"epochs": 20, "batch_size": 16, "learning_rate": 1e-2, "weight_decay": 0.0, "warmup_ratio": 0.1}
    trained = train_head(head, x, y, recipe, seed=0)
    accuracy = (trained(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.95


def test_seeded_subset_is_sorted_reproducible_and_bounded():
    a, b = seeded_subset(100, 10, seed=3), seeded_subset(100, 10, seed=3)
    assert np.array_equal(a, b) and len(a) == 10 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, seeded_subset(100, 10, seed=4))
    assert np.array_equal(seeded_subset(5, None, 0), np.arange(5))
    assert np.array_equal(seeded_subset(5, 50, 0), np.arange(5))


def test_a_layer_out_of_range_names_the_option_and_the_valid_range():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=16))
    assert check_layers(None, model, "student", "--student-layers") == [0, 1, 2]
    assert check_layers([2, 0, 2], model, "student", "--student-layers") == [0, 2]
    with pytest.raises(WorkbenchError, match=r"--student-layers: layer 3 is out of range .*valid 0\.\.2"):
        check_layers([1, 3], model, "student", "--student-layers")


def _disagree_on_texts(tmp_path, kind, teacher, student, references, label_names, metrics):
    """workbench disagree's generation branch on given teacher/student texts, scored by the real ``kind``."""
    import datasets

    from farlab.data.base import TaskData
    from farlab.eval.predictions import TextPredictions
    from farlab.workbench.disagree import _generation

    n = len(references)
    data = TaskData(name="t", kind=kind, train=datasets.Dataset.from_dict({"x": []}),
                    eval=datasets.Dataset.from_dict({"input_ids": [[i] for i in range(n)]}), collator=None,
                    label_names=label_names, metrics=metrics, primary_metric=metrics[0])
    ctx = types.SimpleNamespace(label="test", run_dir=tmp_path)
    return _generation(ctx, data, np.arange(n), TextPredictions(texts=teacher), TextPredictions(texts=student),
                       references, n, tmp_path)


def test_disagree_scores_glue_as_generation_per_example_on_label_ids(tmp_path):
    """Per example, the verbalised kind's own reading (first word -> label id; unparsed = wrong) and accuracy, not
    MCC (0 on any single row) nor raw-text equality ("Acceptable." is the label acceptable)."""
    import farlab.data.glue_generation  # noqa: F401  (registers the verbalised_label kind)

    refs = ["acceptable", "unacceptable", "acceptable"]
    teacher = ["Acceptable.", "unacceptable", "acceptable because"]  # all three right
    student = ["unacceptable", "Unacceptable!", "maybe"]  # wrong, right, unparsed
    summary, payload = _disagree_on_texts(tmp_path, "verbalised_label", teacher, student, refs,
                                          label_names=["unacceptable", "acceptable"], metrics=["mcc", "accuracy"])

    by_row = {e["row"]: e for e in payload["worst_examples"]}
    assert [by_row[r]["delta"] for r in range(3)] == [-1.0, 0.0, -1.0]  # accuracy per row: student - teacher
    assert [by_row[r]["teacher_accuracy"] for r in range(3)] == [1.0, 1.0, 1.0]
    assert by_row[2]["student_unparsed_rate"] == 1.0 and "teacher_mcc" not in by_row[0]
    assert summary["mean_delta"] == pytest.approx(-2 / 3) and summary["share_student_worse"] == pytest.approx(2 / 3)
    # The corpus scores keep every listed metric: student ids [0, 0, 0] (the unparsed answer counts as the wrong
    # class) against [1, 0, 1] -> accuracy 1/3, MCC 0 (one predicted class); the teacher is exact.
    assert payload["evaluations"]["teacher"]["mcc"] == pytest.approx(1.0)
    assert payload["evaluations"]["student"]["accuracy"] == pytest.approx(1 / 3)
    assert payload["evaluations"]["student"]["mcc"] == 0.0


def test_disagree_scores_vision_answers_per_example(tmp_path):
    """The vision kind's predictor and scorer speak TextPredictions like the text decoders', so disagree (which
    reads ``.texts``) works on OCR runs; per-example edit similarity by hand."""
    from farlab.data.kinds import TASK_KINDS
    from farlab.eval.loop import generate_from_images

    assert TASK_KINDS.get("vision_lm").predict is generate_from_images  # which returns TextPredictions
    _, payload = _disagree_on_texts(tmp_path, "vision_lm", ["abcd", "xy"], ["abcx", "xy"], ["abcd", "xy"],
                                    label_names=[], metrics=["edit_similarity", "exact_match"])
    by_row = {e["row"]: e for e in payload["worst_examples"]}
    assert by_row[0]["delta"] == pytest.approx(-0.25)  # one substitution in four characters
    assert by_row[1]["delta"] == 0.0 and by_row[0]["student_exact_match"] == 0.0
    assert payload["evaluations"]["student"]["edit_similarity"] == pytest.approx(0.875)
