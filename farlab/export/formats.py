"""The export formats, one registry entry each: which dtypes, what is refused up front, how the file is built.

``check`` runs before anything is written (a refusal leaves the run dir untouched); ``build`` writes the model
file into the staging folder and returns the check's report, which becomes ``parity.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farlab.export import gguf as gguf_export
from farlab.export import onnx as onnx_export
from farlab.export.parity import LOGIT_ATOL, classifier_parity, decoder_parity, latency
from farlab.export.source import ExportError, ExportSource
from farlab.registry import Registry


@dataclass(frozen=True)
class ExportOptions:
    dtype: str
    threads: int = 1  # torch and onnxruntime intra-op threads (the same for both: a fair latency comparison)
    rows: int = 8  # text decoders: eval prompts generated in both runtimes
    latency_rows: int = 0  # > 0: also time batch-1 forwards on this many eval rows in both runtimes


@dataclass(frozen=True)
class ExportFormat:
    dtypes: tuple[str, ...]
    check: Callable[[ExportSource, ExportOptions], None]
    build: Callable[[ExportSource, Path, ExportOptions], tuple[Path, dict[str, Any]]]
    packages: tuple[str, ...]  # versions recorded in provenance.json
    supports: str  # one line for --help and refusals


FORMATS: Registry[ExportFormat] = Registry("export format")


def _is_decoder(src: ExportSource) -> bool:
    """Text decoders export with (ids, mask) and generation parity; classifiers with their collator's inputs."""
    kind = src.data.task_kind
    if kind.decoder_only:
        return True
    if not kind.vocabulary_logits:
        return False
    raise ExportError(f"ONNX export supports {FORMATS.get('onnx').supports}; the task kind of {src.run_dir} is "
                      f"{kind.name!r} (vocabulary logits from non-text inputs), which it does not export")


def _onnx_check(src: ExportSource, options: ExportOptions) -> None:
    _is_decoder(src)


def _onnx_build(src: ExportSource, staging: Path, options: ExportOptions) -> tuple[Path, dict[str, Any]]:
    decoder = _is_decoder(src)
    path = staging / onnx_export.MODEL_FILE
    names = onnx_export.export_file(src, path, decoder)
    torch_fn = onnx_export.TorchLogits(src.model, names, decoder)
    onnx_fn = onnx_export.OnnxLogits(onnx_export.session(path, options.threads), names)
    atol = LOGIT_ATOL[options.dtype]
    if decoder:
        report = decoder_parity(src.data, torch_fn, onnx_fn, options.rows, atol)
    else:
        report = classifier_parity(src.data, torch_fn, onnx_fn, names, int(src.cfg.train.eval_batch_size), atol)
    report["inputs"] = names
    report["exported"] = ("full forward (input_ids, attention_mask) -> logits at every position; no KV cache"
                          if decoder else f"({', '.join(names)}) -> class logits")
    if options.latency_rows:
        report["latency"] = _latency(src, torch_fn, onnx_fn, names, decoder, options)
    return path, report


def _latency(src: ExportSource, torch_fn: Any, onnx_fn: Any, names: list[str], decoder: bool,
             options: ExportOptions) -> dict[str, Any]:
    """Batch-1 forward time per eval row (a decoder: one forward of the prompt), both runtimes, same threads."""
    rows = min(options.latency_rows, len(src.data.eval))
    if decoder:
        feeds = [{"input_ids": [list(p)], "attention_mask": [[1] * len(p)]}
                 for p in src.data.eval["prompt_ids"][:rows]]
    else:
        feeds = [{n: src.data.collator([src.data.eval[i]])[n].numpy() for n in names} for i in range(rows)]
    return {"rows": rows, "batch_size": 1, "threads": options.threads,
            **latency({"pytorch": torch_fn, "onnxruntime": onnx_fn}, feeds)}


def _gguf_check(src: ExportSource, options: ExportOptions) -> None:
    gguf_export.check_supported(src.model_config, src.final_dir)


def _gguf_build(src: ExportSource, staging: Path, options: ExportOptions) -> tuple[Path, dict[str, Any]]:
    path = staging / gguf_export.MODEL_FILE
    written = gguf_export.write(src, path, options.dtype)
    return path, gguf_export.round_trip(src, path, written)


FORMATS.add("onnx", ExportFormat(
    onnx_export.DTYPES, _onnx_check, _onnx_build, ("onnx", "onnxruntime", "onnxscript"),
    "classification students and text decoders (causal LMs, logits without KV cache)"))
FORMATS.add("gguf", ExportFormat(
    tuple(gguf_export.DTYPES), _gguf_check, _gguf_build, ("gguf",), gguf_export.SUPPORTED))
