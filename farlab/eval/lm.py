"""The eval loop of language-model tasks: per-token NLL on the target tokens, and generations when asked.

Instruction and plain-text tasks report perplexity over the tokens the loss trains on (labels != -100: the
responses of an instruction task, every real token of a text block). Generation metrics (chrF, ROUGE-L, exact
match) are computed only when the task lists one, from greedy/beam generations of the eval prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from farlab.eval.loop import generate_texts
from farlab.eval.metrics import LIKELIHOOD_METRICS, compute_metrics

if TYPE_CHECKING:
    from farlab.data.base import TaskData


def generation_metrics(metrics: list[str]) -> list[str]:
    """The task's metrics that need generated text (everything but the likelihood metrics)."""
    return [m for m in metrics if m not in LIKELIHOOD_METRICS]


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (nats, float64) and target-token count per row; position t predicts label t + 1."""
    shift_logits, shift_labels = logits[:, :-1].double(), labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.clamp_min(0), reduction="none")
    target = shift_labels != -100
    return (nll * target).sum(dim=1), target.sum(dim=1)


@torch.no_grad()
def predict_lm(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> tuple[dict[str, Any], list[Any]]:
    """``({"nll": [(sum, tokens), ...], "texts": generations or None}, references)`` on ``data.eval``."""
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
    texts, references = None, []
    if generation_metrics(data.metrics):
        texts, references = generate_texts(model, data, batch_size, f"{desc} (generate)", progress)
    return {"nll": pairs, "texts": texts}, references


def score_lm(data: TaskData, predictions: dict[str, Any], references: list[Any]) -> dict[str, Any]:
    likelihood = [m for m in data.metrics if m in LIKELIHOOD_METRICS]
    scores = compute_metrics(likelihood, predictions["nll"], [None] * len(predictions["nll"]))
    if predictions["texts"] is not None:
        scores.update(compute_metrics(generation_metrics(data.metrics), predictions["texts"], references))
    return scores
