"""The eval loop of causal text decoders: per-token NLL on the target tokens, and generations, each when asked.

Likelihood metrics (NLL, perplexity) cover the tokens the loss trains on (labels != -100: a translation's target,
the responses of an instruction task, every real token of a text block). Generation metrics (BLEU, chrF,
ROUGE-L, exact match) come from greedy/beam generations of the eval prompts. Each pass runs only when the task
lists one of its metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from farlab.eval.loop import generate_texts
from farlab.eval.metrics import CORPUS_ONLY_METRICS, LIKELIHOOD_METRICS, compute_metrics
from farlab.eval.predictions import TextPredictions

if TYPE_CHECKING:
    from farlab.data.base import TaskData


def generation_metrics(metrics: list[str]) -> list[str]:
    """The task's metrics that need generated text (everything but the likelihood metrics)."""
    return [m for m in metrics if m not in LIKELIHOOD_METRICS]


def per_example_metrics(metrics: list[str]) -> list[str]:
    """The task's text metrics that mean something on one generation; ``accuracy`` when none does (it compares
    what the task kind compares: the label id read from the answer, or the whole text)."""
    return [m for m in generation_metrics(metrics) if m not in CORPUS_ONLY_METRICS] or ["accuracy"]


def likelihood_metrics(metrics: list[str]) -> list[str]:
    """The task's metrics computed from the target tokens' NLL (teacher-forced, no generation)."""
    return [m for m in metrics if m in LIKELIHOOD_METRICS]


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (nats, float64) and target-token count per row; position t predicts label t + 1."""
    shift_logits, shift_labels = logits[:, :-1].double(), labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.clamp_min(0), reduction="none")
    target = shift_labels != -100
    return (nll * target).sum(dim=1), target.sum(dim=1)


@torch.no_grad()
def predict_lm(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> tuple[TextPredictions, list[Any]]:
    """(:class:`TextPredictions`, the reference texts) on ``data.eval``."""
    pairs = target_nll(model, data, batch_size, desc, progress) if likelihood_metrics(data.metrics) else None
    texts, references = None, list(data.eval["reference"]) if "reference" in data.eval.column_names else []
    if generation_metrics(data.metrics):
        texts, references = generate_texts(model, data, batch_size, f"{desc} (generate)", progress)
    return TextPredictions(texts=texts, nll=pairs), references


def target_nll(model: torch.nn.Module, data: TaskData, batch_size: int, desc: str,
               progress: bool) -> list[tuple[float, int]]:
    """(summed NLL, target-token count) per eval row: the teacher-forced target given its prompt."""
    device = next(model.parameters()).device
    columns = ["input_ids", "attention_mask", "labels"]
    loader = DataLoader(data.eval.select_columns(columns), batch_size=batch_size, shuffle=False,
                        collate_fn=data.collator)
    pairs: list[tuple[float, int]] = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items() if k in columns}
        labels = batch.pop("labels")
        sums, counts = sequence_nll(model(**batch).logits, labels)
        pairs += list(zip(sums.tolist(), counts.tolist(), strict=True))
    return pairs


def score_lm(data: TaskData, predictions: TextPredictions, references: list[Any]) -> dict[str, Any]:
    """Every metric the task lists: likelihood ones from the NLLs, the rest from the generations. A listed metric
    whose input the predictor did not produce is an error, not a silently missing score."""
    likelihood, generation = likelihood_metrics(data.metrics), generation_metrics(data.metrics)
    parts = (("target NLLs", predictions.nll, likelihood), ("generations", predictions.texts, generation))
    produced = " and ".join(name for name, part, _ in parts if part is not None) or "nothing"
    for needed, part, metrics in parts:
        if metrics and part is None:
            raise ValueError(f"task {data.name!r} lists {metrics}, which need {needed}, but its predictor "
                             f"produced none (a {data.kind!r} model predicts {produced})")
    scores: dict[str, Any] = {}
    if likelihood:
        scores.update(compute_metrics(likelihood, predictions.nll, [None] * len(predictions.nll)))
    if generation:
        scores.update(compute_metrics(generation, predictions.texts, references))
    return scores
