"""Hidden states of a model on a dataset, pooled per example (CLS and mean) and kept per token.

Layer ``i`` is ``hidden_states[i]`` (0 = embeddings, i = block i), farlab's layer index space everywhere.
Teacher and student read the same collated batches (as in training), so rows and tokens line up across models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from farlab.data.base import TaskData


@dataclass
class LayerFeatures:
    """Per layer: ``cls`` [n, d] (first token), ``mean`` [n, d] (mean over real tokens), ``tokens`` [m, d]."""

    cls: dict[int, np.ndarray]
    mean: dict[int, np.ndarray]
    tokens: dict[int, np.ndarray]

    def pooled(self, pooling: str) -> dict[int, np.ndarray]:
        return {"cls": self.cls, "mean": self.mean, "token": self.tokens}[pooling]


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The forward's inputs of a collated batch (labels dropped: no loss is needed)."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def input_rows(data: TaskData, split: str):
    """The split's rows that a forward can read (``input_ids``): eval for classifiers; generation tasks keep
    prompts only in eval, so their train split (prompt + target) is used."""
    dataset = getattr(data, split)
    if "input_ids" not in dataset.column_names:
        dataset = data.train
    return dataset


def by_length(data: TaskData, split: str, rows: np.ndarray) -> np.ndarray:
    """``rows`` reordered by input length (stable): batches of similar lengths carry little padding, which makes
    the forwards 2-3x faster on short-sentence tasks. Every result keeps this order (labels are read in it too)."""
    lengths = np.array([len(ids) for ids in input_rows(data, split).select(rows.tolist())["input_ids"]])
    return rows[np.argsort(lengths, kind="stable")]


@torch.no_grad()
def hidden_features(model: torch.nn.Module, data: TaskData, rows: np.ndarray, layers: list[int], split: str,
                    batch_size: int, desc: str, keep_tokens: bool = False, progress: bool = True) -> LayerFeatures:
    """Pooled hidden states of ``layers`` on ``rows`` of a split (float32 numpy, on the CPU)."""
    dataset = input_rows(data, split).select(rows.tolist())
    keep = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    loader = DataLoader(dataset.select_columns(keep), batch_size=batch_size, shuffle=False,
                        collate_fn=data.collator)
    device = next(model.parameters()).device
    cls: dict[int, list] = {i: [] for i in layers}
    mean: dict[int, list] = {i: [] for i in layers}
    tokens: dict[int, list] = {i: [] for i in layers}
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        inputs = model_inputs(batch, device)
        out = model(**inputs, output_hidden_states=True)
        mask = inputs["attention_mask"].bool()
        weights = mask.unsqueeze(-1).float()
        for i in layers:
            h = out.hidden_states[i].float()
            cls[i].append(h[:, 0].cpu().numpy())
            mean[i].append(((h * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu().numpy())
            if keep_tokens:
                tokens[i].append(h[mask].cpu().numpy())
    stack = {i: np.concatenate(v) for i, v in cls.items()}, {i: np.concatenate(v) for i, v in mean.items()}
    toks = {i: np.concatenate(v) for i, v in tokens.items()} if keep_tokens else {}
    return LayerFeatures(stack[0], stack[1], toks)
