"""Every option of every config group composes on the schema and validates (or, where this machine lacks its data,
is refused by name for exactly that reason): a typo or a missing field in any shipped YAML fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from farlab.config import REPO_ROOT, register_configs
from farlab.errors import DataError
from farlab.validate import validate_config
from tests.conftest import glue_layout

CONF = REPO_ROOT / "conf"
GROUPS = ("task", "model", "loss", "teacher_strategy", "layer_map", "projection", "teacher")
# Options whose data is not shipped in ../shared/data: validation must stop at the data, naming what is missing.
NEEDS_LOCAL_DATA = {"ocr_folder": "task.train_path", "olmocr_pages": "task.train_path"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


def _glue_dir(tmp_path: Path, task: str) -> Path:
    """Two rows per file in the layout the task's YAML declares (for GLUE tasks not shipped here)."""
    layout = glue_layout(task)
    columns = [*layout.text_columns, layout.label_column]
    header = "\t".join(str(c) for c in columns) + "\n" if layout.header else ""
    rows = "".join("\t".join("some words" if c != layout.label_column else label for c in columns) + "\n"
                   for label in layout.labels[:2])
    for name in (layout.train_file, *layout.eval_files, "dev_mismatched.tsv"):
        (tmp_path / name).write_text(header + rows)
    return tmp_path


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group: str, option: str, tmp_path: Path) -> None:
    cfg = _compose([f"{group}={option}"])
    assert cfg[group].get("name", option) == option or group == "teacher"
    if group == "task" and option in ("mnli", "qqp"):
        cfg = _compose([f"{group}={option}", f"task.data_dir={_glue_dir(tmp_path, option)}"])
    if group == "task" and option in NEEDS_LOCAL_DATA:
        with pytest.raises(DataError, match=NEEDS_LOCAL_DATA[option]):
            validate_config(cfg)
        return
    plan = validate_config(cfg)
    assert plan.config.name == cfg.loss.name


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"], hydra=True)
    assert cfg.hydra.sweeper.params  # an experiment is a sweep


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_every_launcher_composes(launcher: str) -> None:
    cfg = _compose([f"hydra/launcher={launcher}"], hydra=True)
    assert "_target_" in cfg.hydra.launcher
