"""docs/extending.md, proven: each recipe registers a toy piece from this file alone and trains two steps with it.

Nothing here edits farlab: if a recipe needed a change in another module, these tests could not exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from farlab.data import TASK_FAMILIES
from farlab.data.glue import GlueHandler
from farlab.data.kinds import TASK_KINDS
from farlab.losses.base import COMPONENT_TYPES, BuildContext, DistillBatch, LossComponent
from farlab.losses.divergences import DIVERGENCES, Divergence, masked_mean
from farlab.losses.plan import DISTRIBUTION, LossPlan
from farlab.registry import Registry
from farlab.teachers.backends import TEACHER_BACKENDS, BackendKind
from farlab.teachers.backends.hf import HFBackend
from farlab.train import run
from tests.conftest import tiny_overrides

STEPS = {"train.max_steps": 2, "train.save_steps": 2}


@pytest.fixture
def registered() -> Iterator[Any]:
    """``add(registry, name, entry)`` for the test; every entry is removed afterwards."""
    added: list[tuple[Registry, str]] = []

    def add(registry: Registry, name: str, entry: Any) -> Any:
        registry.add(name, entry)
        added.append((registry, name))
        return entry

    yield add
    for registry, name in added:
        registry.remove(name)


def _train(compose_cfg: Any, store_dir: Path, run_dir: Path, loss_yaml: Any = None, **extra: Any) -> dict[str, Any]:
    """Two steps; ``loss_yaml`` (a dict) is merged into cfg.loss as a conf/loss YAML file would be."""
    cfg = compose_cfg(tiny_overrides(store_dir, **{**STEPS, **extra}))
    if loss_yaml is not None:
        with open_dict(cfg.loss):
            cfg.loss.merge_with(loss_yaml)
    metrics = run(cfg, run_dir)
    assert metrics["train"]["global_step"] == 2
    return metrics


def test_a_new_divergence_is_one_registry_entry(registered, compose_cfg, store_dir, tmp_path):
    calls = []

    def half_kl(student_logp: Tensor, teacher_logp: Tensor, **_: Any) -> Tensor:
        calls.append(1)
        return 0.5 * (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)

    registered(DIVERGENCES, "half_kl", Divergence("half_kl", on_logprobs=half_kl))
    metrics = _train(compose_cfg, store_dir, tmp_path / "run", **{"loss.components.response.fn": "half_kl"})
    assert calls and metrics["loss_components"]["response/raw"] > 0


class ToyL2(LossComponent):
    """Squared distance between the two models' mean final hidden states (a made-up term)."""

    kind, letter, fns, default_fn = "toy_l2", "", Registry("toy_l2 fn"), "l2"
    fns.add("l2", "mean squared distance")
    needs_hidden_states = True

    @classmethod
    def from_config(cls, comp: Any, ctx: BuildContext) -> ToyL2:
        return cls(ctx.projection())

    def __init__(self, projection: torch.nn.Module) -> None:
        super().__init__()
        self.projection = projection

    def forward(self, batch: DistillBatch) -> Tensor:
        s = self.projection(batch.student.hidden_states[-1])
        t = batch.teacher.hidden_states[-1]
        return masked_mean((s - t).pow(2).mean(-1), batch.token_mask)


def test_a_new_component_type_is_one_class_and_its_registration(registered, compose_cfg, store_dir, tmp_path):
    registered(COMPONENT_TYPES, "toy_l2", ToyL2)
    toy_yaml = {"name": "toy", "alpha": 0.5, "components": {"toy": {"type": "toy_l2"}}}  # conf/loss/toy.yaml
    plan = LossPlan.from_config(toy_yaml)
    assert plan.needs_teacher and plan.needs_hidden_states and plan.far_cell == "ce"  # outside the FAR factorial
    metrics = _train(compose_cfg, store_dir, tmp_path / "run", loss_yaml=toy_yaml, loss="ce")
    assert metrics["loss_components"]["toy/raw"] > 0


def test_a_new_teacher_backend_is_one_registry_entry(registered, compose_cfg, store_dir, tmp_path):
    """A backend that serves the in-process teacher's logits sharpened by 2 (a stand-in for any new source)."""

    class Sharpened(HFBackend):
        name = "sharpened"

        def __call__(self, batch: dict[str, Tensor], **flags: Any) -> Any:
            out = super().__call__(batch, **flags)
            out.view.logits = out.view.logits * 2
            return out

    def prepare(ctx: Any, load_teacher: Any) -> Any:
        prepared = TEACHER_BACKENDS.get("hf").prepare(ctx, load_teacher)
        return dataclasses.replace(prepared, make_backend=lambda teacher: Sharpened(teacher))

    registered(TEACHER_BACKENDS, "sharpened", BackendKind(prepare, frozenset({DISTRIBUTION}), in_process=True))
    metrics = _train(compose_cfg, store_dir, tmp_path / "run", **{"teacher.backend": "sharpened"})
    assert metrics["loss_components"]["response/raw"] > 0
    with pytest.raises(ValueError, match="cannot serve"):  # it declared no hidden states
        from farlab.validate import validate_config

        validate_config(compose_cfg(tiny_overrides(store_dir, **{"teacher.backend": "sharpened",
                                                                 "loss": "feature_mse"})))


def test_a_new_task_kind_is_one_record_plus_its_handler(registered, compose_cfg, store_dir, tmp_path):
    """A kind whose scorer also reports how often the model predicts class 1, with a GLUE-reading handler."""
    classification = TASK_KINDS.get("classification")

    def score(data: Any, probabilities: Any, references: list[Any]) -> dict[str, Any]:
        metrics = classification.score(data, probabilities, references)
        return {**metrics, "positive_rate": float((probabilities.argmax(1) == 1).mean())}

    registered(TASK_KINDS, "toy_kind", dataclasses.replace(classification, name="toy_kind", score=score))

    class ToyHandler(GlueHandler):
        def build(self, task_cfg: Any, tokenizer: Any, seed: int) -> Any:
            return dataclasses.replace(super().build(task_cfg, tokenizer, seed), kind="toy_kind")

    registered(TASK_FAMILIES, "toy_family", ToyHandler())
    metrics = _train(compose_cfg, store_dir, tmp_path / "run", **{"task.family": "toy_family"})
    assert 0.0 <= metrics["post"]["student"]["positive_rate"] <= 1.0
    assert "mcc" in metrics["pre"]["student"] and "positive_rate" in metrics["pre"]["student"]


def test_a_new_glue_style_task_is_one_yaml(compose_cfg, store_dir, tmp_path):
    """Everything about a TSV classification task is its YAML: the columns, labels, metrics and files."""
    data_dir = tmp_path / "reviews"
    data_dir.mkdir()
    rows = "".join(f"{text}\t{label}\n" for text, label in [("good film", "pos"), ("dull plot", "neg")] * 16)
    for name in ("train.tsv", "valid.tsv"):
        (data_dir / name).write_text("review\tsentiment\n" + rows)
    task_yaml = f"""
name: reviews
family: glue
layout: {{text_columns: [review], label_column: sentiment, labels: [neg, pos], eval_files: [valid.tsv]}}
data_dir: {data_dir}
max_length: 32
metrics: [accuracy, macro_f1]
"""  # what conf/task/reviews.yaml would hold
    cfg = compose_cfg(tiny_overrides(store_dir, **STEPS))
    cfg.task = OmegaConf.create(task_yaml)
    metrics = run(cfg, tmp_path / "run")
    assert metrics["task"] == "reviews" and metrics["eval_split"] == "valid.tsv"
    assert set(metrics["post"]["student"]["per_class_recall"]) == {"neg", "pos"}
