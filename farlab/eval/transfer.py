"""Transfer gap: how much of the teacher's advantage the student picked up."""

from __future__ import annotations

from typing import Any

from farlab.eval.metrics import lower_is_better


def transfer_gap(metric: str, teacher: float | None, student_pre: float, student_post: float) -> dict[str, Any]:
    """teacher advantage = teacher - student_pre; student gain = post - pre; efficiency = gain / advantage.

    Efficiency is null (with the reason) when there is no teacher or the teacher is not ahead. For a metric that
    is better when smaller (perplexity, NLL) both differences are taken the other way round, so a positive
    advantage and gain still mean "better".
    """
    sign = -1.0 if lower_is_better(metric) else 1.0
    gain = sign * (student_post - student_pre)
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
    advantage = sign * (teacher - student_pre)
    result["teacher_advantage"] = advantage
    if advantage <= 0:
        result["transfer_efficiency_note"] = (
            f"teacher advantage {advantage:.4f} <= 0: the teacher is not ahead of the student before training"
        )
    else:
        result["transfer_efficiency"] = gain / advantage
    return result


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
