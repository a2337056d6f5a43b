"""``python -m farlab.export <run dir> --format onnx|gguf``: write ``<run dir>/export/<format>/`` once, checked.

The folder is built in a staging dir and renamed into place with a ``COMPLETE`` marker (farlab.atomic), so a
killed export never leaves a half-written file that looks finished. Every refusal (no such run, not completed,
no final/, unknown format or dtype, an architecture the format cannot hold) happens before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from farlab.atomic import build_once, is_complete
from farlab.export.formats import FORMATS, ExportOptions
from farlab.export.source import ExportError, ParityError, open_source, provenance
from farlab.registry import unknown_choice_message

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  python -m farlab.export outputs/cola/combined_r/2026-12-01_10-00-00 --format onnx --latency-rows 200
  python -m farlab.export RUN --format gguf --dtype float16
  python -m farlab.export RUN --format onnx --force          # rebuild an existing export/onnx/

writes RUN/export/<format>/: the model file, parity.json (the check), provenance.json (the run it came from),
config.yaml (the run's config). See docs/export.md for what parity means and its tolerance.
"""


def export(run_dir: str | Path, fmt: str, dtype: str | None = None, threads: int = 1, rows: int = 8,
           latency_rows: int = 0, force: bool = False, allow_mismatch: bool = False) -> dict[str, Any]:
    """Export one run's final/ student; returns ``{"out_dir", "reused", "parity", "provenance"}``."""
    if fmt not in FORMATS:
        raise ExportError(unknown_choice_message("export format", fmt, FORMATS.names()))
    spec = FORMATS.get(fmt)
    dtype = dtype or spec.dtypes[0]
    if dtype not in spec.dtypes:
        raise ExportError(unknown_choice_message("dtype", dtype, spec.dtypes, context=f"--format {fmt}"))
    if rows < 1 or threads < 1 or latency_rows < 0:
        raise ExportError(f"--rows={rows} and --threads={threads} must be >= 1, --latency-rows={latency_rows} >= 0")
    options = ExportOptions(dtype, threads, rows, latency_rows)
    src = open_source(run_dir)
    spec.check(src, options)
    out = src.out_dir(fmt)
    if is_complete(out) and not force:
        log.info("%s already exists (--force rebuilds it)", out)
        return {"out_dir": out, "reused": True, **_read_reports(out)}

    def build(staging: Path) -> None:
        model_file, report = spec.build(src, staging, options)
        report = {"format": fmt, "dtype": dtype, **report}
        _write_json(staging / "parity.json", report)
        if not report["passed"] and not allow_mismatch:
            raise ParityError(f"the {fmt} export of {src.run_dir} failed its check (nothing was published): "
                              f"{json.dumps(report, default=str)}", report)
        shutil.copyfile(src.run_dir / "config.yaml", staging / "config.yaml")
        _write_json(staging / "provenance.json", provenance(src, fmt, dtype, model_file, list(spec.packages)))

    out.parent.mkdir(exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored after: a caller's (e.g. a test session's) thread count is its own
    try:
        build_once(out, build, what=f"{fmt} export", force=force)  # --force: rebuilt beside, then swapped in
    finally:
        torch.set_num_threads(previous_threads)
    return {"out_dir": out, "reused": False, **_read_reports(out)}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _read_reports(out: Path) -> dict[str, Any]:
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("parity", "provenance")}


def build_parser() -> argparse.ArgumentParser:
    formats = "; ".join(f"{name}: {FORMATS.get(name).supports} (dtypes: {', '.join(FORMATS.get(name).dtypes)})"
                        for name in FORMATS)
    parser = argparse.ArgumentParser(
        prog="python -m farlab.export", description="Export a completed run's student (final/) to ONNX or GGUF, "
        f"checked against PyTorch. Formats: {formats}.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a completed run dir (with final/ and config.yaml)")
    parser.add_argument("--format", required=True, dest="fmt", help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("--dtype", help="weights' dtype (default: the format's first: float32)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime (1: on a busy "
                        "machine torch's OpenMP pool with 2+ threads can wait on a busy core for ~0.5 s per call)")
    parser.add_argument("--rows", type=int, default=8, help="text decoders: eval prompts generated in both runtimes")
    parser.add_argument("--latency-rows", type=int, default=0, help="also time batch-1 forwards on this many eval "
                        "rows in both runtimes (onnx; written under parity.json's 'latency')")
    parser.add_argument("--force", action="store_true", help="rebuild an existing export/<format>/")
    parser.add_argument("--allow-mismatch", action="store_true", help="publish even when the check fails "
                        "(parity.json then says passed=false)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per deduplicated initializer otherwise
    try:
        result = export(args.run_dir, args.fmt, args.dtype, args.threads, args.rows, args.latency_rows, args.force,
                        args.allow_mismatch)
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parity, prov = result["parity"], result["provenance"]
    print(f"{'reused' if result['reused'] else 'wrote'} {result['out_dir']}: {prov['file']} "
          f"({prov['file_bytes'] / 1e6:.1f} MB), check passed={parity['passed']}")
    for key in ("max_abs_logit_diff", "tolerance", "metric_pytorch", "metric_onnx", "latency"):
        if key in parity:
            print(f"  {key}: {parity[key]}")
    return 0
