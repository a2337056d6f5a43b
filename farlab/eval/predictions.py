"""What a generating model's eval produced, shared by every predictor and scorer of generated text.

Its own module so the plain eval loop (image prompts) and the text-decoder loop (:mod:`farlab.eval.lm`, which
imports the loop) both return it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextPredictions:
    """Each part is None when the task lists no metric that needs it."""

    texts: list[str] | None = None  # a generation per eval prompt
    nll: list[tuple[float, int]] | None = None  # (summed NLL in nats, target tokens) per eval row
