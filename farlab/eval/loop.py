"""The direct evaluation loop: a plain forward pass over a dataset, no nested Trainer.

A nested Trainer would bring its own logging, callbacks and state; evaluating teacher and student
before and after training is a loop of forwards and an argmax, so it stays that simple.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from farlab.data.base import TaskData
from farlab.eval.metrics import compute_metrics


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Argmax predictions and gold labels of ``model`` on the task's evaluation split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(data.eval, batch_size=batch_size, shuffle=False, collate_fn=data.collator)
    preds, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        gold = batch.pop("labels")
        logits = model(**batch).logits
        preds.append(logits.argmax(dim=-1).cpu().numpy())
        labels.append(gold.cpu().numpy())
    model.train(was_training)
    return np.concatenate(preds), np.concatenate(labels)


def evaluate_model(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> dict[str, Any]:
    preds, labels = predict_labels(model, data, batch_size, desc=desc, progress=progress)
    return compute_metrics(data.metrics, preds, labels)
