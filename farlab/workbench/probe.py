"""``probe``: where does task information emerge, and did distillation move it earlier?

For every layer of the teacher, the student before distillation (its init) and after, pool the hidden states
(CLS token and mean over tokens) on N training examples, fit a logistic-regression probe (scikit-learn, features
standardised), and score it on the eval split with the task's primary metric.
"""

from __future__ import annotations

import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from farlab.eval.metrics import METRICS
from farlab.workbench.features import by_length, hidden_features
from farlab.workbench.loading import Model, RunContext, ToolOptions, WorkbenchError, check_layers, seeded_subset
from farlab.workbench.outputs import print_table, save_figure, write_csv, write_json

DEFAULT_TRAIN_LIMIT = 2000  # training examples the probes fit on (--limit); the eval split is used whole
POOLINGS = ("cls", "mean")
EMERGENCE = 0.9  # a model's information "has emerged" at the first layer reaching 90% of its best probe score
ROLES = ("teacher", "student_before", "student_after")


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, seed: int) -> np.ndarray:
    """Eval-split predictions of a standardised L2 logistic regression (C=1) fit on the training features.

    Two classes: liblinear (the same optimum as lbfgs here, ~10x faster on a few thousand rows of 384-768
    features); more classes: lbfgs (multinomial).
    """
    solver = "liblinear" if len(np.unique(train_y)) <= 2 else "lbfgs"
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, solver=solver, max_iter=2000,
                                                               random_state=seed))
    probe.fit(train_x, train_y)
    return probe.predict(eval_x)


def emergence_depth(scores: list[tuple[float, float]]) -> float | None:
    """Relative depth of the first layer whose score reaches EMERGENCE x the best one (scores: (depth, score))."""
    finite = [(d, s) for d, s in scores if s is not None and np.isfinite(s)]
    if not finite:
        return None
    best = max(s for _, s in finite)
    if best <= 0:
        return None
    return min(d for d, s in finite if s >= EMERGENCE * best)


def _models(ctx: RunContext, opts: ToolOptions) -> list[tuple[Model, list[int]]]:
    out = []
    for role in ROLES:
        model = getattr(ctx, role)()
        who, option, chosen = (("teacher", "--teacher-layers", opts.teacher_layers) if role == "teacher"
                               else ("student", "--student-layers", opts.student_layers))
        out.append((model, check_layers(chosen, model.model, who, option)))
    return out


def run_probe(ctx: RunContext, opts: ToolOptions) -> dict[str, Any]:
    if not ctx.classifies:
        raise WorkbenchError(f"probe fits class-label probes; task {ctx.data.name!r} generates text and has no "
                             "class labels (cka and disagree work on it)")
    start = time.perf_counter()
    seed, batch = opts.seed_for(ctx), opts.batch_for(ctx)
    primary = ctx.data.primary_metric
    train_rows = by_length(ctx.data, "train", seeded_subset(len(ctx.data.train), opts.limit or DEFAULT_TRAIN_LIMIT,
                                                             seed))
    eval_rows = by_length(ctx.data, "eval", np.arange(len(ctx.data.eval)))
    train_y = np.asarray(ctx.data.train.select(train_rows.tolist())["labels"])
    eval_y = np.asarray(ctx.data.eval.select(eval_rows.tolist())["labels"])
    models = _models(ctx, opts)
    rows: list[dict[str, Any]] = []
    for entry, layers in models:
        full_depth = entry.model.config.num_hidden_layers
        train_f = hidden_features(entry.model, ctx.data, train_rows, layers, "train", batch,
                                  f"probe: {entry.role} train", progress=opts.progress)
        eval_f = hidden_features(entry.model, ctx.data, eval_rows, layers, "eval", batch,
                                 f"probe: {entry.role} eval", progress=opts.progress)
        fits = [(p, i) for p in POOLINGS for i in layers]
        for pooling, layer in tqdm(fits, desc=f"probe: fit {entry.role}", leave=False, disable=not opts.progress):
            pred = fit_probe(train_f.pooled(pooling)[layer], train_y, eval_f.pooled(pooling)[layer], seed)
            rows.append({"model": entry.role, "layer": layer, "relative_depth": layer / full_depth,
                         "pooling": pooling, primary: METRICS.get(primary)(pred.tolist(), eval_y.tolist()),
                         "accuracy": METRICS.get("accuracy")(pred.tolist(), eval_y.tolist())})
    summary = _summarise(rows, primary)
    out = ctx.out_dir("probe")
    payload = {
        "tool": "probe", **ctx.describe(*(m for m, _ in models)),
        "primary_metric": primary, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "eval_split": ctx.data.eval_split_name, "probe": "StandardScaler + LogisticRegression(C=1, L2; liblinear for 2 classes, else lbfgs), scikit-learn",
        "emergence_rule": f"first layer whose probe reaches {EMERGENCE:.0%} of the model's best probe score",
        "summary": summary, "layers": rows, "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "probe.json", payload)
    write_csv(out / "probe.csv", rows)
    _plot(rows, primary, ctx, out / "probe.png")
    print_table(f"probe ({primary} of a logistic probe per layer; {ctx.label})",
                ["model", "pooling", "best layer", f"best {primary}", "last layer", "emerges at depth"],
                [(s["model"], s["pooling"], s["best_layer"], s["best"], s["last"], s["emergence_depth"])
                 for s in summary["curves"]],
                caption=f"teacher: {models[0][0].source}; wrote {out}")
    return {"probe_" + k: v for k, v in summary["headline"].items()} | {"probe_wall_s": payload["wall_s"]}


def _summarise(rows: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    curves = []
    for role in ROLES:
        for pooling in POOLINGS:
            mine = sorted((r for r in rows if r["model"] == role and r["pooling"] == pooling), key=lambda r: r["layer"])
            if not mine:
                continue
            best = max(mine, key=lambda r: r[primary])
            curves.append({"model": role, "pooling": pooling, "best_layer": best["layer"], "best": best[primary],
                           "last": mine[-1][primary],
                           "emergence_depth": emergence_depth([(r["relative_depth"], r[primary]) for r in mine])})
    by = {(c["model"], c["pooling"]): c for c in curves}
    headline = {}
    for pooling in POOLINGS:
        before, after = by.get(("student_before", pooling)), by.get(("student_after", pooling))
        if before and after:
            headline[f"{pooling}_best_gain"] = after["best"] - before["best"]
            headline[f"{pooling}_emergence_before"] = before["emergence_depth"]
            headline[f"{pooling}_emergence_after"] = after["emergence_depth"]
    return {"curves": curves, "headline": headline}


def _plot(rows: list[dict[str, Any]], primary: str, ctx: RunContext, path: Any) -> None:
    fig, axes = plt.subplots(1, len(POOLINGS), figsize=(5 * len(POOLINGS), 3.8), sharey=True)
    styles = {"teacher": ("k", "o"), "student_before": ("tab:gray", "s"), "student_after": ("tab:blue", "^")}
    for ax, pooling in zip(np.atleast_1d(axes), POOLINGS):
        for role in ROLES:
            mine = sorted((r for r in rows if r["model"] == role and r["pooling"] == pooling), key=lambda r: r["layer"])
            if mine:
                color, marker = styles[role]
                ax.plot([r["relative_depth"] for r in mine], [r[primary] for r in mine], marker=marker, color=color,
                        label=role.replace("_", " "))
        ax.set_title(f"{pooling} pooling")
        ax.set_xlabel("relative depth (layer / blocks; 0 = embeddings)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"probe {primary} ({ctx.data.eval_split_name})")
    np.atleast_1d(axes)[0].legend()
    fig.suptitle(f"layer probes: {ctx.label}", fontsize=9)
    save_figure(fig, path)
