"""``disagree``: where do teacher and student part ways on the eval split, and how calibrated is each?

Classification: agreement rate, a teacher x student confusion matrix, agreement per gold class, per-example
KL(teacher || student), the largest disagreements with their text (Markdown), reliability diagrams of both.
Generation: per-example deltas (student - teacher) of the text metrics that mean something on one example, scored
the way the task kind scores (label ids for GLUE as generation), the worst examples side by side, and the corpus
scores of every metric (perplexity included when the task lists it).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import rel_entr
from sklearn.metrics import confusion_matrix

from farlab.eval.calibration import ECE_BINS, calibration_metrics
from farlab.eval.lm import generation_metrics, per_example_metrics
from farlab.eval.metrics import compute_metrics
from farlab.eval.predictions import TextPredictions
from farlab.workbench.loading import Model, RunContext, ToolOptions, WorkbenchError, seeded_subset
from farlab.workbench.outputs import print_table, reliability_bins, save_figure, write_csv, write_json


def _subset(ctx: RunContext, opts: ToolOptions) -> Any:
    """The task data with its eval split cut to ``--limit`` seeded rows (all of it by default)."""
    rows = seeded_subset(len(ctx.data.eval), opts.limit, opts.seed_for(ctx))
    return dataclasses.replace(ctx.data, eval=ctx.data.eval.select(rows.tolist())), rows


def _predict(entry: Model, data: Any, opts: ToolOptions, ctx: RunContext) -> tuple[Any, list[Any]]:
    entry.model.eval()
    return data.task_kind.predict(entry.model, data, opts.batch_for(ctx), f"disagree: {entry.role}", opts.progress)


def _text(tokenizer: Any, ids: list[int]) -> str:
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return tokenizer.decode(ids, skip_special_tokens=True).replace("|", "\\|").replace("\n", " ")


def run_disagree(ctx: RunContext, opts: ToolOptions) -> dict[str, Any]:
    start = time.perf_counter()
    if not ctx.classifies and not generation_metrics(ctx.data.metrics):
        raise WorkbenchError(f"disagree compares generations, but task {ctx.data.name!r} lists no generation metric "
                             f"({ctx.data.metrics}): add one, e.g. task.metrics=[chrf,perplexity]")
    data, rows = _subset(ctx, opts)
    teacher, student = ctx.teacher(), ctx.student_after()
    t_out, refs = _predict(teacher, data, opts, ctx)
    s_out, _ = _predict(student, data, opts, ctx)
    out = ctx.out_dir("disagree")
    if ctx.classifies:
        summary, payload = _classification(ctx, data, rows, np.asarray(t_out), np.asarray(s_out), np.asarray(refs),
                                           opts.top, out)
    else:
        summary, payload = _generation(ctx, data, rows, t_out, s_out, refs, opts.top, out)
    payload = {"tool": "disagree", **ctx.describe(teacher, student), "eval_split": ctx.data.eval_split_name,
               "eval_examples": len(rows), **payload, "summary": summary,
               "wall_s": round(time.perf_counter() - start, 1)}
    write_json(out / "disagree.json", payload)
    return summary | {"disagree_wall_s": payload["wall_s"]}


def _classification(ctx: RunContext, data: Any, rows: np.ndarray, t_probs: np.ndarray, s_probs: np.ndarray,
                    labels: np.ndarray, top: int, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    names = data.label_names
    t_pred, s_pred = t_probs.argmax(1), s_probs.argmax(1)
    agree = t_pred == s_pred
    kl = rel_entr(t_probs, np.clip(s_probs, 1e-300, None)).sum(axis=1)  # KL(teacher || student) per example, nats
    evaluations = {role: {**compute_metrics(data.metrics, p.argmax(1).tolist(), labels.tolist()),
                          **calibration_metrics(p, labels, names)}
                   for role, p in (("teacher", t_probs), ("student", s_probs))}
    per_class = {name: float(agree[labels == c].mean()) if (labels == c).any() else None
                 for c, name in enumerate(names)}
    confusion = confusion_matrix(t_pred, s_pred, labels=list(range(len(names))))
    examples = [{"row": int(r), "label": names[y], "teacher_pred": names[tp], "student_pred": names[sp],
                 "teacher_confidence": float(t_probs[i].max()), "student_confidence": float(s_probs[i].max()),
                 "teacher_p_gold": float(t_probs[i, y]), "student_p_gold": float(s_probs[i, y]),
                 "kl_teacher_student": float(kl[i]), "agree": bool(agree[i]),
                 "text": _text(data.tokenizer, data.eval[i]["input_ids"])}
                for i, (r, y, tp, sp) in enumerate(zip(rows, labels, t_pred, s_pred))]
    write_csv(out / "disagree.csv", examples)
    worst = sorted(examples, key=lambda e: -e["kl_teacher_student"])[:top]
    _markdown(out / "disagreements.md", ctx, worst, ["row", "label", "teacher_pred", "student_pred",
                                                      "teacher_confidence", "student_confidence",
                                                      "kl_teacher_student", "text"],
              f"The {len(worst)} eval examples with the largest KL(teacher || student)")
    bins = {role: reliability_bins(p, labels, ECE_BINS) for role, p in (("teacher", t_probs), ("student", s_probs))}
    _reliability_plot(bins, evaluations, ctx, out / "reliability.png")
    summary = {"agreement": float(agree.mean()), "mean_kl": float(kl.mean()),
               "teacher_ece": evaluations["teacher"]["ece"], "student_ece": evaluations["student"]["ece"],
               "teacher_mean_confidence": evaluations["teacher"]["mean_confidence"],
               "student_mean_confidence": evaluations["student"]["mean_confidence"]}
    print_table(f"disagree (teacher vs student on {len(rows)} eval examples; {ctx.label})",
                ["", "teacher", "student"],
                [(data.primary_metric, evaluations["teacher"][data.primary_metric],
                  evaluations["student"][data.primary_metric]),
                 ("ece", summary["teacher_ece"], summary["student_ece"]),
                 ("mean confidence", summary["teacher_mean_confidence"], summary["student_mean_confidence"]),
                 *((f"predicts {n}", evaluations["teacher"]["pred_class_rate"][n],
                    evaluations["student"]["pred_class_rate"][n]) for n in names)],
                caption=f"agreement {summary['agreement']:.3f}, mean KL(t||s) {summary['mean_kl']:.3f} nats; "
                        f"wrote {out}")
    return summary, {"evaluations": evaluations, "agreement_per_gold_class": per_class,
                     "confusion_teacher_rows_student_cols": {"labels": names, "matrix": confusion},
                     "reliability_bins": bins, "largest_disagreements": worst}


def _generation(ctx: RunContext, data: Any, rows: np.ndarray, t_pred: TextPredictions, s_pred: TextPredictions,
                refs: list[str], top: int, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-example scores of the two generations through the kind's own scorer (corpus-only metrics such as MCC
    and perplexity are in the corpus scores)."""
    per_example = per_example_metrics(data.metrics)
    one_row = dataclasses.replace(data, metrics=per_example)

    def score(text: str, ref: Any) -> dict[str, Any]:
        return data.task_kind.score(one_row, TextPredictions(texts=[text]), [ref])

    t_out, s_out = t_pred.texts or [], s_pred.texts or []
    primary = data.primary_metric if data.primary_metric in per_example else per_example[0]
    examples = []
    for i, (r, t, s, ref) in enumerate(zip(rows, t_out, s_out, refs)):
        t_scores, s_scores = score(t, ref), score(s, ref)
        prompt = data.eval[i].get("prompt_ids")
        examples.append({"row": int(r), "delta": s_scores[primary] - t_scores[primary],
                         **{f"teacher_{k}": v for k, v in t_scores.items()},
                         **{f"student_{k}": v for k, v in s_scores.items()}, "same_output": t == s,
                         "prompt": _text(data.tokenizer, prompt) if prompt is not None else "",
                         "reference": ref, "teacher": t, "student": s})
    write_csv(out / "disagree.csv", examples)
    worst = sorted(examples, key=lambda e: e["delta"])[:top]
    _markdown(out / "disagreements.md", ctx, worst, ["row", "delta", "prompt", "reference", "teacher", "student"],
              f"The {len(worst)} eval examples where the student's per-example {primary} trails the teacher's most")
    deltas = np.array([e["delta"] for e in examples])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(deltas, bins=30, color="tab:blue")
    ax.set_xlabel(f"per-example {primary}: student - teacher")
    ax.set_ylabel("examples")
    ax.set_title(ctx.label, fontsize=8)
    save_figure(fig, out / "deltas.png")
    summary = {"agreement": float(np.mean([e["same_output"] for e in examples])),
               "mean_delta": float(deltas.mean()), "share_student_worse": float((deltas < 0).mean())}
    corpus = {"teacher": data.task_kind.score(data, t_pred, refs), "student": data.task_kind.score(data, s_pred, refs)}
    print_table(f"disagree (per-example {primary}, {len(rows)} eval prompts; {ctx.label})", ["", "teacher", "student"],
                [(f"corpus {m}", corpus["teacher"][m], corpus["student"][m]) for m in data.metrics],
                caption=f"identical outputs {summary['agreement']:.3f}, mean delta {summary['mean_delta']:.3f}; "
                        f"wrote {out}")
    return summary, {"evaluations": corpus, "worst_examples": worst}


def _markdown(path: Path, ctx: RunContext, examples: list[dict[str, Any]], columns: list[str], title: str) -> None:
    lines = [f"# {title}", "", f"Run: `{ctx.run_dir}` ({ctx.label})", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for e in examples:
        cells = [f"{e[c]:.3f}" if isinstance(e[c], float) else str(e[c]).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _reliability_plot(bins: dict, evaluations: dict, ctx: RunContext, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    for ax, role in zip(axes, ("teacher", "student")):
        full = [b for b in bins[role] if b["count"]]
        ax.bar([b["lower"] for b in full], [b["accuracy"] for b in full], width=1 / ECE_BINS, align="edge",
               edgecolor="k", color="tab:blue", alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], "o", color="tab:red", ms=3,
                label="(confidence, accuracy) per bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece, conf = evaluations[role]["ece"], evaluations[role]["mean_confidence"]
        ax.set_title(f"{role}: ECE {ece:.3f}, mean confidence {conf:.3f}", fontsize=9)
        ax.set_xlabel(f"top-label confidence ({ECE_BINS} bins)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy in bin")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"reliability: {ctx.label}", fontsize=9)
    save_figure(fig, path)
