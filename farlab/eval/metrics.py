"""Task metrics, one place per metric.

Classification metrics come from scikit-learn, BLEU/chrF from sacrebleu, edit distance from
rapidfuzz (``evaluate.load`` would fetch metric scripts from the hub, which we cannot reach).
Every metric takes ``(predictions, references)``: label ids for classifiers, strings for generation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sacrebleu
from rapidfuzz.distance import Levenshtein
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from farlab.registry import Registry

MetricFn = Callable[[Sequence[Any], Sequence[Any]], float]
METRICS: Registry[MetricFn] = Registry("metric")


def _ids(values: Sequence[Any]) -> np.ndarray:
    return np.asarray(values)


METRICS.add("accuracy", lambda p, r: float(accuracy_score(_ids(r), _ids(p))))
METRICS.add("f1", lambda p, r: float(f1_score(_ids(r), _ids(p), average="binary", zero_division=0)))
METRICS.add("macro_f1", lambda p, r: float(f1_score(_ids(r), _ids(p), average="macro", zero_division=0)))
METRICS.add("mcc", lambda p, r: float(matthews_corrcoef(_ids(r), _ids(p))))
METRICS.add("bleu", lambda p, r: float(sacrebleu.corpus_bleu(list(p), [list(r)]).score))
METRICS.add("chrf", lambda p, r: float(sacrebleu.corpus_chrf(list(p), [list(r)]).score))


@METRICS.register("rougeL")
def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 x 100 (Google's ``rouge-score`` package, with its stemmer)."""
    from rouge_score import rouge_scorer  # local: only generation tasks that ask for it need the package

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return 100.0 * float(np.mean(scores)) if scores else 0.0


# Likelihood metrics (language-model tasks): predictions are (summed NLL in nats, token count) per example and
# references are unused; both are per token over the whole split, not means of per-example values.
def _token_nll(predictions: Sequence[Any], _references: Sequence[Any]) -> float:
    total = np.asarray(predictions, dtype=np.float64).reshape(-1, 2).sum(axis=0)
    return float(total[0] / max(total[1], 1.0))


METRICS.add("nll", _token_nll)
METRICS.add("perplexity", lambda p, r: float(np.exp(_token_nll(p, r))))
LIKELIHOOD_METRICS = ("nll", "perplexity")
# Metrics a single example cannot carry: MCC of one row is 0 whatever it holds, binary/macro F1 of one row is 0 or
# 1 by class, not by correctness. Per-example comparisons (workbench disagree) leave them out.
CORPUS_ONLY_METRICS = ("f1", "macro_f1", "mcc")


@METRICS.register("edit_similarity")
def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of 1 - Levenshtein(p, r) / max(len(p), len(r)); two empty strings count as identical."""
    scores = [Levenshtein.normalized_similarity(p, r) for p, r in zip(predictions, references, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


@METRICS.register("exact_match")
def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
    hits = [p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def answer_word(text: str) -> str:
    """The answer word of a generated label (a verbalised class, e.g. "Acceptable." -> "acceptable"): the first
    word, lower-cased, punctuation dropped; "" when there is none."""
    match = re.search(r"\w+", text.lower())
    return match.group(0) if match else ""


# Metrics reported on a 0-100 scale (sacrebleu's BLEU and chrF, ROUGE-L x 100). Every other metric's range counts
# as 1: the 0-1 scores, and NLL (nats) and perplexity, which have no upper bound, by their unit.
PERCENT_METRICS = ("bleu", "chrf", "rougeL")


def metric_range(metric: str) -> float:
    """The span of a metric's scale (``bleu`` or ``post_student_bleu`` -> 100), for thresholds stated as shares."""
    return 100.0 if metric.split("_")[-1] in PERCENT_METRICS else 1.0


def compute_metrics(names: Sequence[str], predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
    return {name: METRICS.get(name)(predictions, references) for name in names}


# Metric-name parts whose metric is better when smaller (the best value is the minimum); everything else is
# maximised. A fact about metrics, so the trainer's peak tracking and the results collector share it.
LOWER_IS_BETTER = ("loss", "nll", "perplexity", "ppl", "error", "wer", "cer", "ter", "runtime", "memory")


def lower_is_better(metric: str) -> bool:
    """Whether the best value of this metric (e.g. ``eval_loss``, ``post_student_mcc``) is its minimum."""
    return any(token in LOWER_IS_BETTER for token in metric.lower().split("_"))
