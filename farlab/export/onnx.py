"""ONNX export of a student (classifier or text decoder) with torch.onnx, checked with onnxruntime.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, torch's maintained one; it
needs ``onnxscript``). With torch 2.13 and transformers 5.23 the TorchScript exporter (``dynamo=False``) traces
BERT's mask handling with the example's shapes baked in: on another batch/sequence length its logits were off by
~1e-2, while the dynamo graph matched PyTorch to ~1e-8 at every shape we tried. optimum's exporter was not used:
it pins its own transformers range and adds nothing these two architectures need.

What is exported: the full forward ``(input_ids, attention_mask[, token_type_ids]) -> logits`` with dynamic batch
and sequence length. For a causal LM that is logits at every position for the whole sequence: no KV cache
(``use_cache=False``), so generating N tokens runs N full forwards (fine for checks and short outputs; a
past-key-values graph is not exported).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farlab.export.source import ExportError, ExportSource

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DTYPES = ("float32",)  # float16 would need a CPU fp16 kernel set onnxruntime does not fully have
LM_INPUTS = ["input_ids", "attention_mask"]


class _LogitsOnly(torch.nn.Module):
    """Positional tensors in ``names`` order in, logits out (the graph's single output)."""

    def __init__(self, model: torch.nn.Module, names: list[str], decoder: bool) -> None:
        super().__init__()
        self.model, self.names, self.extra = model, names, {"use_cache": False} if decoder else {}

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)), **self.extra).logits


def input_names(src: ExportSource, decoder: bool) -> list[str]:
    """A classifier takes what its collator produces (e.g. BERT's token_type_ids); a decoder ids and mask."""
    if decoder:
        return list(LM_INPUTS)
    batch = src.data.collator([src.data.eval[i] for i in range(min(2, len(src.data.eval)))])
    return [name for name in batch if name != "labels"]


def example_inputs(src: ExportSource, names: list[str], decoder: bool) -> tuple[torch.Tensor, ...]:
    """Two rows of at least two tokens: torch.export specialises dimensions of size 0 or 1 into constants."""
    if decoder:
        rows = [list(p)[:16] for p in src.data.eval["prompt_ids"][:2]]
        width = max(2, max(len(r) for r in rows))
        pad = src.tokenizer.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows] + [[pad] * width] * (2 - len(rows)))
        mask = (torch.arange(width)[None, :] < torch.tensor([[len(r)] for r in rows] + [[1]] * (2 - len(rows))))
        return ids, mask.long()
    batch = src.data.collator([src.data.eval[i % len(src.data.eval)] for i in range(2)])
    return tuple(batch[name] for name in names)


def export_file(src: ExportSource, path: Path, decoder: bool) -> list[str]:
    """Write ``path`` (one self-contained file); returns the graph's input names."""
    names = input_names(src, decoder)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    wrapper = _LogitsOnly(src.model, names, decoder).eval()
    try:
        torch.onnx.export(wrapper, example_inputs(src, names, decoder), str(path), input_names=names,
                          output_names=["logits"], dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),))  # one entry: *tensors
    except Exception as err:  # torch.export raises many types: say which model failed and why
        raise ExportError(f"torch.onnx.export failed for {type(src.model).__name__} of {src.run_dir}: "
                          f"{type(err).__name__}: {err}") from err
    return names


def session(path: Path, threads: int) -> Any:
    """A CPU onnxruntime session with ``threads`` intra-op threads (the same count torch gets for comparisons)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxLogits:
    """``logits(**numpy inputs)`` through an onnxruntime session, in the graph's input order."""

    def __init__(self, sess: Any, names: list[str]) -> None:
        self.sess, self.names = sess, names

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self.sess.run(["logits"], {n: np.ascontiguousarray(inputs[n], dtype=np.int64) for n in self.names})[0]


class TorchLogits:
    """The same call on the PyTorch model (no grad, float32 logits as numpy)."""

    def __init__(self, model: torch.nn.Module, names: list[str], decoder: bool) -> None:
        self.wrapper, self.names = _LogitsOnly(model, names, decoder).eval(), names

    @torch.no_grad()
    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self.wrapper(*(torch.as_tensor(np.asarray(inputs[n], dtype=np.int64)) for n in self.names)).numpy()
