"""Datasets for farlab's local lm-eval tasks, built from the Europarl v7 EN/FR pairs in farlab's data folder.

lm-eval loads this file through the ``!function`` tags of the YAMLs next to it (not as a farlab module), and
calls the loaders with the task's metadata: farlab passes ``data_dir`` (its ``paths.data``) there. Rows come
from the last aligned lines of the shipped excerpt with a fixed seed, so every run scores the same items.
They may overlap the europarl_en_fr training split: these are smoke benchmarks for offline machines, not a
held-out measure (docs/harness.md lists the standard tasks for online machines).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import datasets

STEM = "europarl_en_fr/europarl-v7.fr-en.first3000"
N_ITEMS = 200  # the last 200 non-empty pairs of the excerpt
N_CHOICES = 4


def _data_dir(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    if os.environ.get("FARLAB_DATA_DIR"):
        return Path(os.environ["FARLAB_DATA_DIR"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"  # the default of conf/config.yaml paths.data


def europarl_pairs(data_dir: str | None = None) -> list[tuple[str, str]]:
    """The last ``N_ITEMS`` aligned (en, fr) pairs with both sides non-empty, in file order."""
    root = _data_dir(data_dir)
    files = [root / f"{STEM}.{lang}" for lang in ("en", "fr")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"farlab harness task data not found: {', '.join(missing)} (set paths.data)")
    en, fr = (f.read_text(encoding="utf-8").split("\n") for f in files)
    pairs = [(e.strip(), f.strip()) for e, f in zip(en, fr) if e.strip() and f.strip()]
    return pairs[-N_ITEMS:]


def translation_choice(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """Pick the French translation of an English sentence among 4: the right one and 3 other items' French
    sides (seeded), the gold at a seeded position. Fields: source, choices, label."""
    pairs = europarl_pairs(data_dir)
    rng = random.Random(16)
    rows = []
    for i, (en, fr) in enumerate(pairs):
        others = rng.sample([j for j in range(len(pairs)) if pairs[j][1] != fr], N_CHOICES - 1)
        choices = [pairs[j][1] for j in others]
        label = rng.randrange(N_CHOICES)
        choices.insert(label, fr)
        rows.append({"id": i, "source": en, "choices": choices, "label": label})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def french_text(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """The French sides as plain text, for rolling log-likelihood (perplexity, bits per byte)."""
    rows = [{"id": i, "text": fr} for i, (_, fr) in enumerate(europarl_pairs(data_dir))]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
