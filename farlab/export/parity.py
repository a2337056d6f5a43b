"""Does the exported model compute what PyTorch computes? Logits within a tolerance and the task metric equal.

Both runtimes are called through the same ``logits(**numpy inputs) -> numpy`` function, on the same batches of
the run's eval split, and scored by the task kind's own scorer (the one training used), so the only difference
between the two columns of ``parity.json`` is the runtime.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch.utils.data import DataLoader

from farlab.data.base import TaskData
from farlab.eval.lm import likelihood_metrics, sequence_nll
from farlab.eval.predictions import TextPredictions

Logits = Callable[..., np.ndarray]

# float32 graphs: onnxruntime fuses and reorders matmuls/softmax, so logits differ from PyTorch's in the last
# bits; 1e-4 absolute is ~100x the differences measured on tiny models and MiniLM (docs/export.md), far below
# anything that moves a prediction unless two logits are within 1e-4 of each other.
LOGIT_ATOL = {"float32": 1e-4}
# Likelihood metrics (perplexity) are continuous in the logits, so they inherit the last-bit differences above
# (measured 1e-9 relative on a tiny Llama); label and text metrics must match exactly.
LIKELIHOOD_RTOL = 1e-6


def _task_metrics(data: TaskData, predictions: Any, references: list[Any]) -> dict[str, Any]:
    scores = data.task_kind.score(data, predictions, references)
    return {name: scores[name] for name in data.metrics}


def classifier_parity(data: TaskData, torch_fn: Logits, onnx_fn: Logits, names: list[str], batch_size: int,
                      atol: float) -> dict[str, Any]:
    """The whole eval split, batched as the eval loop batches it: max |logit diff|, argmax agreement, metrics."""
    loader = DataLoader(data.eval, batch_size=batch_size, shuffle=False, collate_fn=data.collator)
    diff, torch_logits, onnx_logits, refs = 0.0, [], [], []
    for batch in loader:
        feeds = {name: batch[name].numpy() for name in names}
        ours, theirs = torch_fn(**feeds), onnx_fn(**feeds)
        diff = max(diff, float(np.abs(ours - theirs).max()))
        torch_logits.append(ours)
        onnx_logits.append(theirs)
        refs += batch["labels"].tolist()
    lt, lo = np.concatenate(torch_logits), np.concatenate(onnx_logits)
    metrics_t = _task_metrics(data, softmax(lt.astype(np.float64), axis=-1), refs)
    metrics_o = _task_metrics(data, softmax(lo.astype(np.float64), axis=-1), refs)
    return _verdict(data, {
        "check": "classifier logits on the whole eval split",
        "rows": len(refs),
        "max_abs_logit_diff": diff,
        "tolerance": atol,
        "argmax_disagreements": int((lt.argmax(-1) != lo.argmax(-1)).sum()),
        "metric_pytorch": metrics_t,
        "metric_onnx": metrics_o,
    })


def greedy(fn: Logits, prompt: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Greedy decoding by full forwards (the graph has no KV cache); stops at eos, which is not returned."""
    ids, out = list(prompt), []
    for _ in range(max_new_tokens):
        logits = fn(input_ids=np.array([ids]), attention_mask=np.ones((1, len(ids)), dtype=np.int64))
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        ids.append(token)
        out.append(token)
    return out


def runtime_target_nll(fn: Logits, data: TaskData, rows: int) -> list[tuple[float, int]] | None:
    """The likelihood metrics' input from one runtime: each of the first ``rows`` eval sequences scored alone
    (prompt + reference target; None when the task lists no likelihood metric)."""
    if not likelihood_metrics(data.metrics):
        return None
    pairs = []
    for row in data.eval.select(range(min(rows, len(data.eval)))):
        ids = np.array([row["input_ids"]], dtype=np.int64)
        logits = torch.from_numpy(fn(input_ids=ids, attention_mask=np.ones_like(ids)))
        total, count = sequence_nll(logits, torch.tensor([row["labels"]]))
        pairs.append((float(total[0]), int(count[0])))
    return pairs


def decoder_parity(data: TaskData, torch_fn: Logits, onnx_fn: Logits, rows: int, atol: float) -> dict[str, Any]:
    """Greedy generation on the first ``rows`` eval prompts in both runtimes (task metric on each), plus the
    logits of one right-padded batch of prompt + PyTorch's output, compared at the real (unpadded) positions.
    Likelihood metrics (perplexity) score the same rows' reference targets in each runtime."""
    tokenizer, gen = data.tokenizer, data.generation
    prompts = [list(p) for p in data.eval["prompt_ids"][:rows]]
    references = list(data.eval["reference"][:rows])
    max_new = gen.max_new_tokens if gen is not None else 32
    outs_t = [greedy(torch_fn, p, max_new, tokenizer.eos_token_id) for p in prompts]
    outs_o = [greedy(onnx_fn, p, max_new, tokenizer.eos_token_id) for p in prompts]
    texts_t = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs_t]
    texts_o = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs_o]

    seqs = [p + o for p, o in zip(prompts, outs_t)]
    width = max(len(s) for s in seqs)
    ids = np.array([s + [tokenizer.pad_token_id or 0] * (width - len(s)) for s in seqs], dtype=np.int64)
    mask = (np.arange(width)[None, :] < np.array([[len(s)] for s in seqs])).astype(np.int64)
    lt, lo = torch_fn(input_ids=ids, attention_mask=mask), onnx_fn(input_ids=ids, attention_mask=mask)
    real = mask.astype(bool)
    nll_t, nll_o = runtime_target_nll(torch_fn, data, rows), runtime_target_nll(onnx_fn, data, rows)
    return _verdict(data, {
        "check": "greedy generation (full forwards, no KV cache) + right-padded batch logits at real positions",
        "rows": len(prompts),
        "max_new_tokens": max_new,
        "max_abs_logit_diff": float(np.abs(lt - lo)[real].max()),
        "tolerance": atol,
        "next_token_agreement": float((lt.argmax(-1) == lo.argmax(-1))[real].mean()),
        "identical_generations": sum(a == b for a, b in zip(outs_t, outs_o)),
        "metric_pytorch": _task_metrics(data, TextPredictions(texts_t, nll_t), references),
        "metric_onnx": _task_metrics(data, TextPredictions(texts_o, nll_o), references),
    })


def _metrics_agree(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Equal, except the likelihood metrics: within :data:`LIKELIHOOD_RTOL` of each other."""
    continuous = set(likelihood_metrics(list(ours)))
    return ours.keys() == theirs.keys() and all(
        math.isclose(ours[k], theirs[k], rel_tol=LIKELIHOOD_RTOL) if k in continuous else ours[k] == theirs[k]
        for k in ours)


def _verdict(data: TaskData, report: dict[str, Any]) -> dict[str, Any]:
    report["metric_equal"] = _metrics_agree(report["metric_pytorch"], report["metric_onnx"])
    report["within_tolerance"] = report["max_abs_logit_diff"] <= report["tolerance"]
    report["passed"] = report["metric_equal"] and report["within_tolerance"]
    report["primary_metric"] = data.primary_metric
    return report


def latency(fns: dict[str, Logits], feeds: list[dict[str, np.ndarray]], warmup: int = 5) -> dict[str, float]:
    """Mean milliseconds per example at batch 1 for each runtime, over the same inputs, after ``warmup`` calls."""
    result = {}
    for name, fn in fns.items():
        for feed in feeds[:warmup]:
            fn(**feed)
        start = time.perf_counter()
        for feed in feeds:
            fn(**feed)
        result[f"{name}_ms_per_example"] = 1000 * (time.perf_counter() - start) / len(feeds)
    return result
