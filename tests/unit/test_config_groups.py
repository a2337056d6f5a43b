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


# The component group is composed into a loss (the combined_* losses do it in their defaults list).
@pytest.mark.parametrize("component", _options("component"))
def test_every_component_composes_into_a_loss_and_is_active(component: str) -> None:
    cfg = _compose(["loss=ce", "loss.alpha=0.5", f"+component@loss.components.{component}={component}"])
    plan = validate_config(cfg)
    assert [c.name for c in plan.active] == [component]


# Each model option with a task of the kind it is made for and a loss with F, A and R terms: layer maps,
# projections and attention settings are checked against the pair (read from configs where no weights load).
MODEL_TASKS = {"llama": "europarl_en_fr", "smollm2": "europarl_en_fr", "qwen": "ocr_uw3_lines"}


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_validates_with_its_task_and_a_far_loss(model: str) -> None:
    task = next((t for key, t in MODEL_TASKS.items() if key in model), "cola")
    cfg = _compose([f"model={model}", f"task={task}", "loss=combined_far"])
    plan = validate_config(cfg)
    assert plan.needs_hidden_states and plan.needs_attentions
    assert cfg.model.teacher.dtype == cfg.model.student.dtype == "float32"  # schema defaults reach every pair


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_every_model_dtype_validates(role: str, dtype: str) -> None:
    validate_config(_compose([f"model.{role}.dtype={dtype}"]))


# teacher backend x teacher strategy: every pair validates except out-of-process backends serving a co-trained
# teacher, and a self-teacher (the student's own frozen base) under any strategy but frozen_base, which are
# refused naming the reason.
@pytest.mark.parametrize("strategy", _options("teacher_strategy"))
@pytest.mark.parametrize("backend", _options("teacher"))
def test_every_teacher_backend_with_every_strategy(backend: str, strategy: str) -> None:
    from farlab.errors import ConfigError

    cfg = _compose([f"teacher={backend}", f"teacher_strategy={strategy}"])
    if backend == "self" and strategy != "frozen_base":
        with pytest.raises(ConfigError, match="teacher=self .*use teacher_strategy=frozen_base"):
            validate_config(cfg)
    elif cfg.teacher_strategy.trainable and backend != "hf":
        with pytest.raises(ConfigError, match="co-trains the teacher.*use teacher=hf"):
            validate_config(cfg)
    else:
        validate_config(cfg)
