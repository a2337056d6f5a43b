"""GLUE as generation: the verbaliser's checks and the scoring of generated answers, by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from farlab.data.glue import GlueLayout, GlueTaskConfig
from farlab.data.glue_generation import score_verbalised, verbaliser_problems
from farlab.eval.metrics import answer_word
from farlab.eval.predictions import TextPredictions


def test_answers_become_label_ids_and_unparsed_answers_count_as_wrong():
    data = SimpleNamespace(label_names=["unacceptable", "acceptable"], metrics=["mcc", "accuracy"])
    predictions = ["Acceptable, clearly", "unacceptable.", "maybe", "UNACCEPTABLE"]
    references = ["acceptable", "unacceptable", "acceptable", "unacceptable"]
    # ids: refs [1, 0, 1, 0]; preds [1, 0, wrong -> 0, 0]: TP 1, TN 2, FN 1, FP 0.
    got = score_verbalised(data, TextPredictions(texts=predictions), references)
    assert got["accuracy"] == 0.75 and got["unparsed_rate"] == 0.25
    assert got["mcc"] == pytest.approx((1 * 2 - 0 * 1) / math.sqrt((1 + 0) * (1 + 1) * (2 + 0) * (2 + 1)))


def test_verbaliser_problems():
    layout = GlueLayout(text_columns=[3], label_column=1, labels=["0", "1"], header=False)
    ok = GlueTaskConfig(name="cola", layout=layout, label_words=["unacceptable", "acceptable"])
    assert verbaliser_problems(ok) == []
    (missing,) = verbaliser_problems(GlueTaskConfig(name="cola", layout=layout))
    assert "needs task.label_words" in missing and "['0', '1']" in missing
    same = GlueTaskConfig(name="cola", layout=layout, label_words=["Yes", "yes!"])
    assert "must be distinct" in verbaliser_problems(same)[0]
    bad = GlueTaskConfig(name="cola", layout=layout, label_words=["no", "yes"], prompt_template="{sentence}?")
    assert "must contain {text}" in verbaliser_problems(bad)[0]
    assert answer_word("  Yes, it is") == "yes" and answer_word("...") == ""
