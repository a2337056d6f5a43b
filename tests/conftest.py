"""Shared fixtures: tiny configs composed through Hydra exactly as the CLI does."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from farlab.config import REPO_ROOT, register_configs

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def load_group(group: str, name: str, schema: Any = None) -> DictConfig:
    """One option of a config group as Hydra composes it (its own defaults list included), optionally merged
    onto its schema: what a run would see under ``cfg.<group>``."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        node = compose(config_name=f"{group}/{name}")[group]
    return OmegaConf.merge(OmegaConf.structured(schema), node) if schema is not None else node


def glue_layout(name: str) -> Any:
    """The column layout conf/task/<name>.yaml declares, as farlab.data.glue reads it."""
    from farlab.data.glue import GlueLayout

    return GlueLayout(**OmegaConf.to_container(load_group("task", name).layout))


def glue_task(**fields: Any) -> DictConfig:
    """A GLUE task node as a shipped conf/task YAML gives it (layout and metrics), ``fields`` on top."""
    shipped = fields.get("name") in ("cola", "sst2", "mnli", "qqp")
    base = {k: v for k, v in OmegaConf.to_container(load_group("task", fields["name"])).items()
            if k in ("layout", "metrics")} if shipped else {}
    return OmegaConf.create({**base, "family": "glue", **fields})


def train_runs(root: Path, runs: dict[str, dict[str, Any]], **common: Any) -> dict[str, Path]:
    """Real tiny runs through ``farlab.train.execute``, one run dir per name under ``root`` (module fixtures)."""
    from farlab.train import execute

    register_configs()
    out = {}
    for name, extra in runs.items():
        overrides = tiny_overrides(root / "store", **{**common, **extra})
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        execute(cfg, root / name, overrides)
        out[name] = root / name
    return out


def tiny_overrides(store: Path, **extra: object) -> list[str]:
    """A run that finishes in seconds: tiny BERTs, 64 CoLA rows, 4 optimizer steps."""
    base = {
        "task": "cola",
        "model": "tiny_bert",
        "task.train_limit": 64,
        "task.eval_limit": 48,
        "train.max_steps": 4,
        "train.batch_size": 8,
        "train.eval_batch_size": 32,
        "train.logging_steps": 2,
        "train.save_steps": 2,
        "train.progress_bar": False,
        "train.num_threads": 2,
        "teacher_strategy.recipe.max_steps": 6,
        "teacher_strategy.recipe.batch_size": 8,
        "teacher_strategy.store_dir": str(store),
        "wandb.mode": "disabled",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def compose_cfg() -> Callable[[list[str]], DictConfig]:
    register_configs()

    def _compose(overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    return _compose


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "teacher_store"
