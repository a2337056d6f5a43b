"""Staged loss schedules: component weights as a pure function of ``(step, max_steps)``.

Nothing is stored, so a run resumed mid-phase gets exactly the weights an uninterrupted run would.

* ``unit``: ``step`` (``until`` counts optimizer steps) or ``fraction`` (``until`` is ``step / max_steps``).
* ``ramp: step``: piecewise constant; phase ``i`` holds while ``until[i-1] <= position < until[i]``; after
  the last boundary the last phase holds.
* ``ramp: linear``: the phases are knots ``(until[i], weights[i])``; weights interpolate linearly between
  consecutive knots, and hold flat before the first and after the last knot.

A phase's ``weights`` *replace* the components' own ``weight``; a component a phase does not mention
gets weight 0 there (and is not computed while its weight is 0).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from farlab.registry import unknown_choice_message

UNITS = ("step", "fraction")
RAMPS = ("step", "linear")


@dataclass(frozen=True)
class Phase:
    until: float
    weights: Mapping[str, float] = field(default_factory=dict)


class Schedule:
    """Maps ``(step, max_steps)`` to the phase index and the weight of every named component."""

    def __init__(self, phases: Sequence[Phase], components: Sequence[str], unit: str = "fraction", ramp: str = "step"):
        if unit not in UNITS:
            raise ValueError(unknown_choice_message("schedule unit", unit, list(UNITS)))
        if ramp not in RAMPS:
            raise ValueError(unknown_choice_message("schedule ramp", ramp, list(RAMPS)))
        if not phases:
            raise ValueError("a schedule needs at least one phase")
        bounds = [float(p.until) for p in phases]
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"schedule phase boundaries must increase strictly; got until={bounds}")
        self.phases = list(phases)
        self.bounds = bounds
        self.components = list(components)
        self.unit, self.ramp = unit, ramp

    def position(self, step: int, max_steps: int) -> float:
        if self.unit == "step":
            return float(step)
        if max_steps <= 0:
            raise ValueError(f"a schedule with unit='fraction' needs max_steps > 0, got {max_steps}")
        return step / max_steps

    def phase(self, step: int, max_steps: int) -> int:
        """Index of the phase (``step`` ramp) or of the knot segment being approached (``linear``)."""
        return min(bisect.bisect_right(self.bounds, self.position(step, max_steps)), len(self.phases) - 1)

    def _at(self, i: int) -> dict[str, float]:
        return {c: float(self.phases[i].weights.get(c, 0.0)) for c in self.components}

    def weights(self, step: int, max_steps: int) -> dict[str, float]:
        pos = self.position(step, max_steps)
        i = self.phase(step, max_steps)
        if self.ramp == "step" or i == 0 or pos >= self.bounds[-1]:
            return self._at(i)
        lo, hi = self.bounds[i - 1], self.bounds[i]
        frac = (pos - lo) / (hi - lo)
        a, b = self._at(i - 1), self._at(i)
        return {c: a[c] + frac * (b[c] - a[c]) for c in self.components}
