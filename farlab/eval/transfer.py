"""Transfer gap: how much of the teacher's advantage the student picked up."""

from __future__ import annotations

from typing import Any

from farlab.eval.metrics import lower_is_better, metric_range

# A ratio to a near-zero teacher advantage is noise, not transfer: an untuned base teacher's random head is "ahead"
# of a fresh student by MCC 0.02, and a student gain of 0.18 then reads as an efficiency of 9. Below this share of
# the metric's range (metric_range: 0.05 MCC or accuracy, 5 BLEU) the efficiency and the collector's normalised
# score are left out, with the reason.
MIN_ADVANTAGE_SHARE = 0.05


def min_teacher_advantage(metric: str) -> float:
    """The smallest teacher advantage (in ``metric``'s units, better-is-positive) worth dividing by."""
    return MIN_ADVANTAGE_SHARE * metric_range(metric)


def transfer_efficiency(metric: str, gain: float | None, advantage: float | None) -> tuple[float | None, str | None]:
    """(gain / advantage, None), or (None, why not): no teacher, a teacher not ahead, or one barely ahead."""
    if advantage is None:
        return None, "no teacher in this run (CE-only baseline)"
    if advantage <= 0:
        return None, f"teacher advantage {advantage:.4f} <= 0: the teacher is not ahead of the student before training"
    floor = min_teacher_advantage(metric)
    if advantage < floor:
        return None, (f"teacher advantage {advantage:.4f} < {floor:g} ({MIN_ADVANTAGE_SHARE:.0%} of the metric's "
                      "range): too small to divide by")
    return (None if gain is None else gain / advantage), None


def transfer_gap(metric: str, teacher: float | None, student_pre: float, student_post: float) -> dict[str, Any]:
    """teacher advantage = teacher - student_pre; student gain = post - pre; efficiency = gain / advantage.

    Efficiency is null (with the reason) when there is no teacher or the teacher is not meaningfully ahead
    (:func:`transfer_efficiency`). For a metric that is better when smaller (perplexity, NLL) both differences are
    taken the other way round, so a positive advantage and gain still mean "better".
    """
    sign = -1.0 if lower_is_better(metric) else 1.0
    gain = sign * (student_post - student_pre)
    advantage = None if teacher is None else sign * (teacher - student_pre)
    efficiency, note = transfer_efficiency(metric, gain, advantage)
    return {
        "metric": metric,
        "teacher_advantage": advantage,
        "student_gain": gain,
        "transfer_efficiency": efficiency,
        "transfer_efficiency_note": note,
    }


def metrics_head(data: Any, pre: dict[str, Any], post: dict[str, Any], teacher_score: float | None) -> dict[str, Any]:
    """The keys every run's metrics.json starts with (docs/run_dir.md), for KD and RL runs alike: task, primary
    metric, eval split, pre/post metrics and the transfer gap against ``teacher_score`` (the teacher the student
    learned from). ``data`` is the run's TaskData."""
    primary = data.primary_metric
    return {
        "task": data.name,
        "primary_metric": primary,
        "eval_split": data.eval_split_name,
        "pre": pre,
        "post": post,
        "transfer_gap": transfer_gap(primary, teacher_score, pre["student"][primary], post["student"][primary]),
    }
