"""The direct evaluation loop: plain forward passes (or generation) over a dataset, no nested Trainer.

A nested Trainer would bring its own logging, callbacks and state; evaluating teacher and student
before and after training is a loop of forwards, so it stays that simple. One predictor per task
kind; the kind's record (:mod:`farlab.data.kinds`) names it and how its predictions are scored. A classifier's evaluator returns class probabilities, so every
classification evaluation reports calibration (:mod:`farlab.eval.calibration`) next to the task metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

if TYPE_CHECKING:  # the data layer sits above eval: its kinds name the predictors below
    from farlab.data.base import TaskData

from farlab.eval.calibration import calibration_metrics
from farlab.eval.metrics import compute_metrics
from farlab.eval.predictions import TextPredictions

Predictor = Callable[[torch.nn.Module, "TaskData", int, str, bool], tuple[Any, list[Any]]]  # (predictions, refs)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> tuple[np.ndarray, list[int]]:
    """Class probabilities ``[n, classes]`` (float64 softmax of the logits) and gold labels on the eval split."""
    device = _device(model)
    loader = DataLoader(data.eval, batch_size=batch_size, shuffle=False, collate_fn=data.collator)
    probs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        gold = batch.pop("labels")
        probs.append(torch.softmax(model(**batch).logits.double(), dim=-1).cpu().numpy())
        labels.append(gold.cpu().numpy())
    return np.concatenate(probs), np.concatenate(labels).tolist()


@torch.no_grad()
def generate_texts(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "generate", progress: bool = True
) -> tuple[list[str], list[str]]:
    """Batched generation from each eval prompt (left-padded), decoded without special tokens."""
    tokenizer = data.tokenizer
    gen = data.generation
    device = _device(model)
    batch_size = gen.batch_size or batch_size
    prompts, references = data.eval["prompt_ids"], data.eval["reference"]
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=not progress):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen.max_new_tokens,
            num_beams=gen.num_beams,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs += [t.strip() for t in tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)]
    return outputs, list(references)


@torch.no_grad()
def generate_from_images(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "generate", progress: bool = True
) -> tuple[TextPredictions, list[str]]:
    """Batched greedy generation from image prompts; the task's prompt collator runs the processor and left-pads.

    Predictions and references go through the task's text normaliser (e.g. whitespace) before the metrics.
    """
    gen = data.generation
    tokenizer = getattr(data.tokenizer, "tokenizer", data.tokenizer)  # the processor's text half
    normalize = data.normalize or (lambda text: text)
    device = _device(model)
    loader = DataLoader(data.eval, batch_size=gen.batch_size or batch_size, shuffle=False,
                        collate_fn=data.prompt_collator)
    outputs: list[str] = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        width = batch["input_ids"].shape[1]
        generated = model.generate(
            **batch,
            max_new_tokens=gen.max_new_tokens,
            num_beams=gen.num_beams,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        outputs += [normalize(t.strip()) for t in texts]
    return TextPredictions(texts=outputs), [normalize(r) for r in data.eval["reference"]]


def score_classification(data: TaskData, probabilities: Any, references: list[Any]) -> dict[str, Any]:
    """Task metrics on the argmax, plus calibration from the probabilities."""
    probs = np.asarray(probabilities, dtype=np.float64)
    task = compute_metrics(data.metrics, probs.argmax(axis=1).tolist(), references)
    return {**task, **calibration_metrics(probs, references, data.label_names)}


def evaluate_model(
    model: torch.nn.Module, data: TaskData, batch_size: int, desc: str = "eval", progress: bool = True
) -> dict[str, Any]:
    """The task metrics on ``data.eval`` (for classification also the calibration entries)."""
    kind = data.task_kind
    was_training = model.training
    model.eval()
    try:
        predictions, references = kind.predict(model, data, batch_size, desc, progress)
    finally:
        model.train(was_training)
    return kind.score(data, predictions, references)
