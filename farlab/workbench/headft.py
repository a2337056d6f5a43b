"""``headft``: were the features there? Freeze the body, re-train only the classification head.

For the distilled student, the CE-only twin (``--baseline``) and the teacher, the head is re-initialised and
trained alone on the training split (inputs standardised, see :func:`train_head`) with the run's recipe knobs
(epochs, batch size, weight decay, warmup, linear decay; the learning rate is the tool's own, see below). If head-only training closes most of the gap to the
teacher, the student's features already carried the task (an alignment problem); if not, capacity.

Why a plain loop over cached features: with the body frozen (and in eval mode, so no dropout), the head's input
does not change between epochs, so one forward pass over the split replaces one per epoch, and the head trains in
seconds. Why another learning rate: a freshly initialised linear head barely moves with the 5e-5 used to fine-tune
whole models; 1e-3 (``--lr``) is a common linear-probe rate.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from farlab.eval.metrics import METRICS
from farlab.workbench.features import by_length, model_inputs
from farlab.workbench.loading import Model, RunContext, ToolOptions, WorkbenchError, seeded_subset
from farlab.workbench.outputs import print_table, save_figure, write_csv, write_json

HEAD_ATTRS = ("classifier", "score")  # where Hugging Face sequence classifiers keep their head
CLOSED_THRESHOLD = 0.5  # "most of the gap": head-only training closes at least half of it


def head_of(model: nn.Module) -> nn.Module:
    for name in HEAD_ATTRS:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise WorkbenchError(f"{type(model).__name__} has no classification head attribute ({', '.join(HEAD_ATTRS)})")


@torch.no_grad()
def head_inputs(entry: Model, data: Any, split: str, rows: np.ndarray, batch_size: int, progress: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the frozen body feeds the head on ``rows`` of a split ([n, hidden]), and the gold labels."""
    model, head = entry.model, head_of(entry.model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().float().cpu()))
    dataset = getattr(data, split).select(rows.tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data.collator)
    device = next(model.parameters()).device
    labels = []
    try:
        for batch in tqdm(loader, desc=f"headft: {entry.role} {split} features", leave=False, disable=not progress):
            labels.append(batch["labels"])
            model(**model_inputs(batch, device))
    finally:
        hook.remove()
    features = torch.cat(captured)
    if features.ndim != 2:
        raise WorkbenchError(f"headft needs a head on one pooled vector per example; {type(model).__name__}'s head "
                             f"reads {tuple(features.shape[1:])} per example")
    return features, torch.cat(labels)


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training features' statistics: an affine map a linear head absorbs
    (``W' = W / std``, ``b' = b - W' mean``), so the trained pair is still a head on the frozen features."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict[str, Any], seed: int) -> nn.Module:
    """AdamW with linear warmup/decay over shuffled mini-batches of the cached, standardised features.

    Standardised because pooled features can be tiny (all-MiniLM's pooler output has std ~0.07): a fresh head on
    them predicts the majority class for many epochs at any usual learning rate.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(Standardize(x), head).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = math.ceil(len(x) / recipe["batch_size"])
    total = max(1, round(recipe["epochs"] * steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe["warmup_ratio"] * total), total)
    step = 0
    while step < total:
        for idx in torch.randperm(len(x), generator=generator).split(recipe["batch_size"]):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= total:
                break
    return model.eval()


def _score(head: nn.Module, x: torch.Tensor, y: torch.Tensor, primary: str) -> dict[str, float]:
    with torch.no_grad():
        pred = head(x).argmax(-1).tolist()
    return {primary: METRICS.get(primary)(pred, y.tolist()), "accuracy": METRICS.get("accuracy")(pred, y.tolist())}


def _fresh_head(model: nn.Module, seed: int) -> nn.Module:
    """A copy of the model's head, re-initialised the way the model initialises heads (seeded)."""
    head = copy.deepcopy(head_of(model)).cpu()
    torch.manual_seed(seed)
    init = getattr(model, "_init_weights", None)
    for module in head.modules():
        if init is not None:
            init(module)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return head.requires_grad_(True)


def diagnose(teacher: float, before: float, after: float) -> tuple[str, float | None]:
    """The one-line verdict and the share of the student-teacher gap that head-only training closed."""
    gap = teacher - before
    if gap <= 0:
        return f"no gap: the distilled student ({before:.3f}) already matches the teacher ({teacher:.3f})", None
    closed = (after - before) / gap
    if closed >= CLOSED_THRESHOLD - 1e-9:  # a float tolerance: exactly half counts as most
        return (f"alignment: head-only training closes {closed:.0%} of the gap to the teacher (>= "
                f"{CLOSED_THRESHOLD:.0%}): the features were there, the head was not aligned"), closed
    return (f"capacity: head-only training closes only {closed:.0%} of the gap to the teacher (< "
            f"{CLOSED_THRESHOLD:.0%}): the student's features lack what the teacher's have"), closed


def run_headft(ctx: RunContext, opts: ToolOptions) -> dict[str, Any]:
    if not ctx.classifies:
        raise WorkbenchError(f"headft re-trains a classification head, but {ctx.run_dir} is a causal-LM run "
                             f"(task {ctx.data.name!r} generates text; its head is the vocabulary). Use probe, "
                             "cka or disagree on it")
    start = time.perf_counter()
    seed, batch, primary = opts.seed_for(ctx), opts.batch_for(ctx), ctx.data.primary_metric
    train = ctx.cfg.train
    recipe = {"epochs": float(opts.epochs or train.epochs), "batch_size": int(train.batch_size),
              "learning_rate": float(opts.learning_rate), "weight_decay": float(train.weight_decay),
              "warmup_ratio": float(train.warmup_ratio)}
    train_rows = by_length(ctx.data, "train", seeded_subset(len(ctx.data.train), opts.limit, seed))
    eval_rows = by_length(ctx.data, "eval", np.arange(len(ctx.data.eval)))
    models = [ctx.student_after(), *([ctx.baseline(opts.baseline)] if opts.baseline else []), ctx.teacher()]
    results, rows = {}, []
    for entry in models:
        x_train, y_train = head_inputs(entry, ctx.data, "train", train_rows, batch, opts.progress)
        x_eval, y_eval = head_inputs(entry, ctx.data, "eval", eval_rows, batch, opts.progress)
        as_trained = _score(copy.deepcopy(head_of(entry.model)).cpu().eval(), x_eval, y_eval, primary)
        head = train_head(_fresh_head(entry.model, seed), x_train, y_train, recipe, seed)
        head_only = _score(head, x_eval, y_eval, primary)
        results[entry.role] = {"as_trained": as_trained, "head_only": head_only}
        rows.append({"model": entry.role, "source": entry.source, f"as_trained_{primary}": as_trained[primary],
                     f"head_only_{primary}": head_only[primary], "as_trained_accuracy": as_trained["accuracy"],
                     "head_only_accuracy": head_only["accuracy"]})
    teacher_entry = models[-1]
    random_head = teacher_entry.note is not None
    teacher_ref = results["teacher"]["head_only" if random_head else "as_trained"][primary]
    student = results["student_after"]
    verdict, closed = diagnose(teacher_ref, student["as_trained"][primary], student["head_only"][primary])
    if "baseline" in results:
        verdict += (f"; CE twin head-only {results['baseline']['head_only'][primary]:.3f} vs distilled "
                    f"{student['head_only'][primary]:.3f}")
    summary = {"headft_diagnosis": verdict, "headft_gap_closed": closed, "headft_teacher_reference": teacher_ref,
               "headft_student_as_trained": student["as_trained"][primary],
               "headft_student_head_only": student["head_only"][primary]}
    out = ctx.out_dir("headft")
    payload = {"tool": "headft", **ctx.describe(*models), "primary_metric": primary, "recipe": recipe,
               "train_examples": len(train_rows), "eval_examples": len(eval_rows),
               "teacher_reference": "the teacher's head-only score (its own head is random: init=base)" if random_head
               else "the teacher's score with its own head",
               "rule": f"gap = teacher reference - distilled student as trained; closed = (head-only - as trained) / "
                       f"gap; closed >= {CLOSED_THRESHOLD} -> alignment, else capacity; gap <= 0 -> no gap",
               "results": results, "summary": summary, "wall_s": round(time.perf_counter() - start, 1)}
    write_json(out / "headft.json", payload)
    write_csv(out / "headft.csv", rows)
    _plot(rows, primary, teacher_ref, verdict, ctx, out / "headft.png")
    print_table(f"headft ({primary}; head re-trained alone for {recipe['epochs']:g} epochs; {ctx.label})",
                ["model", "as trained", "head only"],
                [(r["model"], r[f"as_trained_{primary}"], r[f"head_only_{primary}"]) for r in rows],
                caption=f"{verdict}\nteacher: {teacher_entry.source}; wrote {out}")
    return summary | {"headft_wall_s": payload["wall_s"]}


def _plot(rows: list[dict[str, Any]], primary: str, teacher_ref: float, verdict: str, ctx: RunContext,
          path: Any) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r[f"as_trained_{primary}"] for r in rows], 0.4, label="as trained", color="tab:gray")
    ax.bar(x + 0.2, [r[f"head_only_{primary}"] for r in rows], 0.4, label="head re-trained alone", color="tab:blue")
    ax.axhline(teacher_ref, color="k", ls="--", lw=1, label="teacher reference")
    ax.set_xticks(x, [r["model"].replace("_", " ") for r in rows])
    ax.set_ylabel(f"{primary} ({ctx.data.eval_split_name})")
    ax.legend(fontsize=7)
    ax.set_title(verdict.split(":")[0] + f" ({ctx.label})", fontsize=8)
    save_figure(fig, path)
