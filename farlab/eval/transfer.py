"""Transfer gap: how much of the teacher's advantage the student picked up."""

from __future__ import annotations

from typing import Any


def transfer_gap(metric: str, teacher: float | None, student_pre: float, student_post: float) -> dict[str, Any]:
    """teacher advantage = teacher - student_pre; student gain = post - pre; efficiency = gain / advantage.

    Efficiency is null (with the reason) when there is no teacher or the teacher is not ahead.
    """
    gain = student_post - student_pre
    result: dict[str, Any] = {
        "metric": metric,
        "teacher_advantage": None,
        "student_gain": gain,
        "transfer_efficiency": None,
        "transfer_efficiency_note": None,
    }
    if teacher is None:
        result["transfer_efficiency_note"] = "no teacher in this run (CE-only baseline)"
        return result
    advantage = teacher - student_pre
    result["teacher_advantage"] = advantage
    if advantage <= 0:
        result["transfer_efficiency_note"] = (
            f"teacher advantage {advantage:.4f} <= 0: the teacher is not ahead of the student before training"
        )
    else:
        result["transfer_efficiency"] = gain / advantage
    return result
