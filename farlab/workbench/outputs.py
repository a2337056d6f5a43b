"""What every tool writes (``<run dir>/workbench/<tool>/``: JSON + CSV + PNG) and prints (a short rich table)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes get readable tables


def _plain(value: Any) -> Any:
    """JSON-safe values: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.write_text(json.dumps(_plain(payload), indent=2) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    pd.DataFrame(list(rows)).to_csv(path, index=False, float_format="%.6g")
    return path


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == columns[0] else "right")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Per equal-width top-probability bin ((m-1)/M, m/M]: count, mean confidence, accuracy (the ECE's bins)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.searchsorted(np.arange(1, n_bins) / n_bins, confidence, side="left")
    out = []
    for m in range(n_bins):
        inside = bins == m
        out.append({"bin": m, "lower": m / n_bins, "upper": (m + 1) / n_bins, "count": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()) if inside.any() else None,
                    "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return out
