"""``cka``: which student layer represents what which teacher layer does, before and after distillation?

Linear CKA (:mod:`farlab.workbench.similarity`) between every student layer and every teacher layer on N eval
examples, pooled per example (mean over tokens) and per token (the same sampled tokens for both models). The
heatmaps overlay the run's configured layer map and a suggested monotone map with the maximum total CKA.
"""

from __future__ import annotations

import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from farlab.models.loading import model_shape
from farlab.workbench.features import by_length, hidden_features, input_rows
from farlab.workbench.loading import RunContext, ToolOptions, WorkbenchError, check_layers, seeded_subset
from farlab.workbench.outputs import print_table, save_figure, write_csv, write_json
from farlab.workbench.similarity import cka_matrix, monotone_layer_map

DEFAULT_EVAL_LIMIT = 512  # eval examples (--limit)
TOKEN_CAP = 4096  # tokens sampled for the per-token CKA (the unbiased estimator needs n x n Grams)
GRANULARITIES = ("example", "token")  # per example: mean-pooled; per token: every sampled real token
STUDENTS = ("student_before", "student_after")


def configured_pairs(ctx: RunContext, student: Any, teacher: Any) -> tuple[list[tuple[int, int]], str]:
    """The run's layer map in farlab's index space, and whether its loss used it."""
    try:
        pairs = ctx.plan.layer_pairs(ctx.cfg.layer_map, model_shape(student), model_shape(teacher))
    except ValueError as err:
        return [], f"the configured layer map does not fit these models: {err}"
    used = "used by the loss" if ctx.plan.uses_layer_map else (
        f"configured but unused: loss {ctx.cfg.loss.name!r} has no layer-mapped term")
    return [tuple(p) for p in pairs], f"layer_map={ctx.cfg.layer_map.strategy} ({used})"


def _token_rows(n_tokens: int, seed: int) -> np.ndarray:
    if n_tokens <= TOKEN_CAP:
        return np.arange(n_tokens)
    return np.sort(np.random.default_rng(seed).choice(n_tokens, size=TOKEN_CAP, replace=False))


def run_cka(ctx: RunContext, opts: ToolOptions) -> dict[str, Any]:
    start = time.perf_counter()
    seed, batch = opts.seed_for(ctx), opts.batch_for(ctx)
    rows = by_length(ctx.data, "eval", seeded_subset(len(input_rows(ctx.data, "eval")),
                                                      opts.limit or DEFAULT_EVAL_LIMIT, seed))
    if len(rows) < 4:
        raise WorkbenchError(f"cka needs at least 4 examples, --limit gives {len(rows)}")
    teacher = ctx.teacher()
    t_layers = check_layers(opts.teacher_layers, teacher.model, "teacher", "--teacher-layers")
    t_feat = hidden_features(teacher.model, ctx.data, rows, t_layers, "eval", batch, "cka: teacher", True,
                             opts.progress)
    token_rows = _token_rows(len(t_feat.tokens[t_layers[0]]), seed)
    teacher_reps = {"example": t_feat.mean, "token": {i: v[token_rows] for i, v in t_feat.tokens.items()}}
    matrices: dict[str, dict[str, np.ndarray]] = {}
    s_layers: list[int] = []
    students = [getattr(ctx, role)() for role in STUDENTS]
    for entry in students:
        s_layers = check_layers(opts.student_layers, entry.model, "student", "--student-layers")
        feat = hidden_features(entry.model, ctx.data, rows, s_layers, "eval", batch, f"cka: {entry.role}", True,
                               opts.progress)
        reps = {"example": feat.mean, "token": {i: v[token_rows] for i, v in feat.tokens.items()}}
        matrices[entry.role] = {g: cka_matrix(reps[g], teacher_reps[g], opts.unbiased) for g in GRANULARITIES}

    used, used_note = configured_pairs(ctx, students[1].model, teacher.model)
    suggested = {role: monotone_layer_map(matrices[role]["example"], s_layers, t_layers) for role in STUDENTS}
    s_index, t_index = {s: i for i, s in enumerate(s_layers)}, {t: j for j, t in enumerate(t_layers)}

    def mapped(role: str, pairs: list[tuple[int, int]], gran: str = "example") -> float | None:
        vals = [matrices[role][gran][s_index[s], t_index[t]] for s, t in pairs if s in s_index and t in t_index]
        return float(np.mean(vals)) if vals else None

    summary = {
        "cka_mapped_before": mapped("student_before", used), "cka_mapped_after": mapped("student_after", used),
        "cka_suggested_before": mapped("student_before", suggested["student_before"]),
        "cka_suggested_after": mapped("student_after", suggested["student_after"]),
        "cka_last_after": float(matrices["student_after"]["example"][-1, -1]),
    }
    out = ctx.out_dir("cka")
    csv_rows = [{"student": role, "granularity": g, "student_layer": s, "teacher_layer": t,
                 "cka": matrices[role][g][i, j], "in_layer_map": (s, t) in used,
                 "in_suggested_map": (s, t) in suggested[role]}
                for role in STUDENTS for g in GRANULARITIES
                for i, s in enumerate(s_layers) for j, t in enumerate(t_layers)]
    payload = {
        "tool": "cka", **ctx.describe(teacher, *students),
        "estimator": "unbiased HSIC (Song et al. 2012)" if opts.unbiased else "biased HSIC (Kornblith et al. 2019)",
        "eval_examples": len(rows), "tokens": len(token_rows), "student_layers": s_layers, "teacher_layers": t_layers,
        "layer_map_used": used, "layer_map_note": used_note,
        "suggested_map": {role: suggested[role] for role in STUDENTS},
        "suggested_rule": "student blocks 1..Ls in order, each paired with one teacher block, teacher blocks strictly "
                          "increasing (non-decreasing if Ls > Lt), maximising the total per-example CKA (dynamic "
                          "programme); embeddings (layer 0) left out",
        "suggested_override": _override(suggested["student_before"]),
        "summary": summary,
        "matrices": {role: {g: m.tolist() for g, m in matrices[role].items()} for role in STUDENTS},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "cka.json", payload)
    write_csv(out / "cka.csv", csv_rows)
    _plot(matrices, s_layers, t_layers, used, suggested, ctx, out / "cka.png")
    print_table(f"cka (linear, per example; {ctx.label})", ["map", "pairs", "CKA before", "CKA after"], [
        ("used: " + used_note.split(" (")[0], _pairs_text(used), summary["cka_mapped_before"],
         summary["cka_mapped_after"]),
        ("suggested (from before)", _pairs_text(suggested["student_before"]),
         summary["cka_suggested_before"], mapped("student_after", suggested["student_before"])),
        ("suggested (from after)", _pairs_text(suggested["student_after"]),
         mapped("student_before", suggested["student_after"]), summary["cka_suggested_after"]),
    ], caption=f"teacher: {teacher.source}; {used_note}; wrote {out}")
    return summary | {"cka_wall_s": payload["wall_s"]}


def _pairs_text(pairs: list[tuple[int, int]]) -> str:
    return " ".join(f"{s}->{t}" for s, t in pairs) or "-"


def _override(pairs: list[tuple[int, int]]) -> str:
    return "layer_map=custom 'layer_map.pairs=[" + ",".join(f"[{s},{t}]" for s, t in pairs) + "]'"


def _plot(matrices: dict, s_layers: list[int], t_layers: list[int], used: list, suggested: dict,
          ctx: RunContext, path: Any) -> None:
    fig, axes = plt.subplots(len(GRANULARITIES), len(STUDENTS), figsize=(4.2 * len(STUDENTS), 3.2 * len(GRANULARITIES)),
                             squeeze=False)
    s_index, t_index = {s: i for i, s in enumerate(s_layers)}, {t: j for j, t in enumerate(t_layers)}
    for r, gran in enumerate(GRANULARITIES):
        for c, role in enumerate(STUDENTS):
            ax = axes[r, c]
            matrix = matrices[role][gran]
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            if matrix.size <= 120:  # small enough to print every value
                for (i, j), value in np.ndenumerate(matrix):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 0.6 else "black")
            for pairs, marker, color, label in ((used, "o", "cyan", "layer map used"),
                                                (suggested[role], "x", "red", "suggested (max CKA)")):
                pts = [(t_index[t], s_index[s]) for s, t in pairs if s in s_index and t in t_index]
                if pts:
                    ax.scatter(*zip(*pts), marker=marker, s=60, facecolors="none" if marker == "o" else color,
                               edgecolors=color if marker == "o" else None, label=label)
            ax.set_xticks(range(len(t_layers)), t_layers)
            ax.set_yticks(range(len(s_layers)), s_layers)
            ax.set_xlabel("teacher layer")
            ax.set_ylabel("student layer")
            ax.set_title(f"{role.replace('_', ' ')}, per {gran}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", fontsize=7, ncol=2)  # off the cells
    fig.suptitle(f"linear CKA: {ctx.label}", fontsize=9, x=0.02, ha="left")
    save_figure(fig, path)
