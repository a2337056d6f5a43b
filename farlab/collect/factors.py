"""The F/A/R cell of a run and whether it is the shared CE baseline.

Until every collected run can be planned by :class:`farlab.losses.plan.LossPlan` (its ``far_letters``), the
letters come from the run's own config.yaml: each enabled component's ``type`` (feature -> F, attention -> A,
response -> R), with ``loss.alpha == 0`` switching all of them off, else from the ``combined_<letters>`` naming
convention. :func:`far_flags` is the one place to switch.
"""

from __future__ import annotations

import math
from typing import Any

FACTORS = ("F", "A", "R")
_KINDS = {"feature": "F", "attention": "A", "response": "R"}
# The CE baseline loads no teacher, so the teacher strategy does not change it: one cell, whatever the strategy.
SHARED = "shared"
BASELINE_LABEL = "CE (shared baseline)"
# Table order of the factorial's cells and of the teacher strategies (others follow alphabetically).
LOSS_ORDER = ("combined_ce", "combined_f", "combined_a", "combined_r",
              "combined_fa", "combined_fr", "combined_ar", "combined_far")
STRATEGY_ORDER = ("frozen_sft", "frozen_base", "cotrain_sft", "cotrain_base")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _enabled(value: Any) -> bool:
    """Whether a loss component entry is switched on (None, weight 0 or enabled: false switch it off)."""
    if value is None or value is False:
        return False
    if _is_number(value):
        return value != 0
    if isinstance(value, dict):
        if value.get("enabled") is False:
            return False
        weight = value.get("weight")
        if _is_number(weight) and weight == 0:
            return False
    return True


def _kind(label: Any) -> str | None:
    """Factor letter for a component label such as 'response', 'feature_mse' or 'attention/kl'."""
    text = str(label).lower()
    for word, letter in _KINDS.items():
        if text.startswith(word):
            return letter
    return None


def flags_from_components(components: Any) -> dict[str, int]:
    """F/A/R from loss.components: a mapping keyed by kind, or a list of names / {kind|type|name: ...} dicts."""
    on: set[str] = set()
    if isinstance(components, dict):
        items = list(components.items())
    elif isinstance(components, list):
        items = []
        for item in components:
            label = item
            if isinstance(item, dict):
                label = item.get("kind") or item.get("type") or item.get("name") or ""
            items.append((label, item))
    else:
        items = []
    for label, val in items:
        declared = (val.get("type") or val.get("kind")) if isinstance(val, dict) else None
        letter = _kind(declared) if declared else _kind(label)  # an explicit type beats the entry's key
        if letter and _enabled(val):
            on.add(letter)
    return {f: int(f in on) for f in FACTORS}


def flags_from_name(loss: str) -> dict[str, int | None]:
    """F/A/R from the loss name: combined_<letters>, combined_ce, response_*, feature_*, attention_*, staged_<far>."""
    off = {f: 0 for f in FACTORS}
    if loss in ("ce", "sft", "combined_ce"):
        return off
    for prefix in ("combined_", "staged_"):
        if loss.startswith(prefix):
            letters = loss[len(prefix):]
            if letters and set(letters) <= set("far"):
                return {f: int(f.lower() in letters) for f in FACTORS}
    letter = _kind(loss)
    if letter:
        return {f: int(f == letter) for f in FACTORS}
    return {f: None for f in FACTORS}


def far_flags(loss: str, loss_cfg: Any) -> dict[str, int | None]:
    """F/A/R (0/1, None when unknown) of one run: the config's loss.components (the truth of what ran), else the
    naming convention. alpha == 0 switches all distillation off whatever the components say."""
    if isinstance(loss_cfg, dict) and _is_number(loss_cfg.get("alpha")) and loss_cfg["alpha"] == 0:
        return {f: 0 for f in FACTORS}
    if isinstance(loss_cfg, dict) and loss_cfg.get("components") is not None:
        return flags_from_components(loss_cfg["components"])
    return flags_from_name(loss)


def is_baseline(flags: dict[str, int | None]) -> bool:
    """No F, A or R: the run trains on CE alone and loads no teacher."""
    return all(flags.get(f) == 0 for f in FACTORS)


def far_code(flags: dict[str, int | None]) -> str:
    """'F-R' style summary of the active factors; '?' when unknown."""
    if any(flags.get(f) is None for f in FACTORS):
        return "?"
    return "".join(f if flags[f] else "-" for f in FACTORS)
