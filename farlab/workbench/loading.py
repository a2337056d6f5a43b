"""One finished run dir, opened once for every workbench tool: its config, data, and the three models.

Everything is rebuilt the way ``python -m farlab.train`` built it (``farlab.data.build_task_data``,
``farlab.models.loading``), so the workbench looks at the exact inputs and models of the run:

* the student after distillation: ``final/``;
* the student before distillation (its init): :func:`farlab.models.loading.build_student`, seeded like the run;
* the teacher it learned from: ``final_teacher/`` for a co-trained teacher, the SFT store entry for
  ``teacher_strategy.init=sft``, the base weights (with the run's seeded, untrained head) for ``init=base``.

Nothing here writes to the run dir; the tools write only ``<run dir>/workbench/<tool>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, set_seed

from farlab.config import FarlabConfig, register_configs
from farlab.data import build_task_data
from farlab.data.base import TaskData
from farlab.errors import ConfigError, DataError, RunDirError
from farlab.losses.plan import LossPlan
from farlab.models.loading import build_model, build_student, head_for, load_tokenizer, model_shape
from farlab.models.padding import fit_pad_token
from farlab.run_record import finished_run, read_run_json
from farlab.teachers.store import TeacherStore
from farlab.teachers.strategies import TeacherSettings, sft_store_material, sft_store_name

log = logging.getLogger(__name__)

WORKBENCH_DIR = "workbench"


class WorkbenchError(Exception):
    """Bad input to a workbench tool (run dir, options): the message names the problem and the way out."""


@dataclass
class Model:
    """A model a tool looks at, with the sentence every output uses to say what it is."""

    role: str  # teacher | student_before | student_after | baseline
    model: PreTrainedModel
    source: str  # where its weights came from, e.g. "final/ of <run dir>"
    note: str | None = None  # a caveat, e.g. a base teacher's random head


@dataclass
class RunContext:
    """A completed run dir: config, metadata, metrics, task data; models are built on first use and kept."""

    run_dir: Path
    cfg: DictConfig
    meta: dict[str, Any]
    metrics: dict[str, Any]
    tokenizer: Any
    data: TaskData
    plan: LossPlan
    device: torch.device
    raw_cfg: DictConfig  # config.yaml exactly as the run wrote it (cfg has today's schema defaults merged in)
    _models: dict[str, Model] = field(default_factory=dict)

    @property
    def out_root(self) -> Path:
        return self.run_dir / WORKBENCH_DIR

    def out_dir(self, tool: str) -> Path:
        path = self.out_root / tool
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def label(self) -> str:
        """A short description of the run for plot titles: task, model pair, loss, strategy, seed."""
        c = self.cfg
        return f"{c.task.name} {c.model.name} loss={c.loss.name} {c.teacher_strategy.name} seed={c.seed}"

    @property
    def classifies(self) -> bool:
        """Class labels (a classifier head), not vocabulary logits: probe and headft need this."""
        return not self.data.task_kind.vocabulary_logits

    def _load(self, role: str, build: Any) -> Model:
        if role not in self._models:
            entry = build()
            entry.model.to(self.device).eval()
            self._models[role] = entry
        return self._models[role]

    def loaded(self) -> list[Model]:
        """The models built so far (what a combined report describes)."""
        return list(self._models.values())

    def release(self) -> None:
        """Drop the loaded models (a sweep keeps one run's models at a time)."""
        self._models.clear()

    def student_after(self) -> Model:
        return self._load("student_after", lambda: Model(
            "student_after", self._from_pretrained(self.run_dir / "final"), f"final/ of {self.run_dir}"))

    def student_before(self) -> Model:
        def build() -> Model:
            student, _ = build_student(self.cfg, head_for(self.data), self.tokenizer, self._attn(),
                                       need_base_teacher=False, data=self.data)
            return Model("student_before", student,
                         f"the run's initial student, rebuilt from the config with seed {self.cfg.seed} "
                         f"(model.student.source={self.cfg.model.student.source})")

        return self._load("student_before", build)

    def teacher(self) -> Model:
        return self._load("teacher", self._build_teacher)

    def _attn(self) -> str | None:
        return "eager" if self.plan.needs_attentions else self.cfg.model.attn_implementation

    def _from_pretrained(self, path: Path) -> PreTrainedModel:
        kwargs = {"attn_implementation": self._attn()} if self._attn() else {}
        return head_for(self.data).auto_class.from_pretrained(path, **kwargs)

    def _build_teacher(self) -> Model:
        ts = self.cfg.teacher_strategy
        unused = "" if self.plan.needs_teacher else (
            f" (this run's loss {self.cfg.loss.name!r} used no teacher: shown is the teacher its config names)")
        if ts.trainable and self.plan.needs_teacher:
            path = self.run_dir / "final_teacher"
            if not (path / "config.json").is_file():
                raise WorkbenchError(
                    f"{self.run_dir} co-trained its teacher (teacher_strategy={ts.name}) but has no final_teacher/: "
                    "runs before the workbench did not save the post-training teacher, and train.keep_final=false "
                    "removes it. Re-run the job with the current farlab (same overrides plus rerun=true) to get it")
            return Model("teacher", self._from_pretrained(path),
                         f"final_teacher/ of {self.run_dir}: the co-trained teacher after training")
        if ts.init == "sft":
            entry = self._sft_entry()
            return Model("teacher", self._from_pretrained(entry), f"SFT teacher store entry {entry}" + unused)
        # init=base: the pretrained body plus the head the run initialised with its seed (never trained).
        set_seed(self.cfg.seed)
        try:
            model = build_model(self.cfg.model.teacher, head_for(self.data), self._attn())
            fit_pad_token(model, self.tokenizer, self.cfg.model.get("pad_token"))
        except ConfigError as err:
            raise WorkbenchError(f"cannot rebuild the base teacher {self.cfg.model.teacher.name!r}: {err}") from err
        return Model("teacher", model, f"base weights of {self.cfg.model.teacher.name} "
                     f"({self.cfg.model.teacher.get('path') or self.cfg.model.teacher.source})" + unused,
                     note=None if not self.classifies else (
                         "init=base: the classifier head is freshly initialised with the run's seed and was never "
                         "trained, so the teacher's own predictions are those of a random head"))

    def _sft_entry(self) -> Path:
        """The run's SFT store entry. Its key is computed from config.yaml as the run wrote it first (fields the
        schema gained since then would change the key), then with today's defaults merged in."""
        store = TeacherStore(self.cfg.teacher_strategy.store_dir)
        tried = []
        for cfg in (self.raw_cfg, self.cfg):
            settings = TeacherSettings.from_run_config(cfg)
            entry = store.entry_dir(sft_store_name(settings), sft_store_material(settings))
            if (entry / "config.json").is_file():
                return entry
            tried.append(str(entry))
        raise WorkbenchError(
            f"the SFT teacher of this run is not in the store: none of {', '.join(dict.fromkeys(tried))} exists "
            f"(teacher_strategy.store_dir={self.cfg.teacher_strategy.store_dir}). Point FARLAB_TEACHER_STORE or "
            "teacher_strategy.store_dir at the store the run used, or train it again with python -m farlab.train "
            "and the run's overrides")

    def baseline(self, other: RunContext) -> Model:
        """The student of another run (e.g. the CE-only twin), for comparisons."""
        return self._load("baseline", lambda: Model(
            "baseline", self._from_pretrained(other.run_dir / "final"),
            f"final/ of {other.run_dir} (loss={other.cfg.loss.name})"))

    def describe(self, *models: Model) -> dict[str, Any]:
        """What every output says about the run and the models it used."""
        return {
            "run_dir": str(self.run_dir),
            "task": self.cfg.task.name, "model": self.cfg.model.name, "loss": self.cfg.loss.name,
            "far_cell": self.plan.far_cell, "teacher_strategy": self.cfg.teacher_strategy.name,
            "seed": int(self.cfg.seed),
            "models": {m.role: {"source": m.source, **({"note": m.note} if m.note else {})} for m in models},
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_run_json(path)
    except RunDirError as err:
        raise WorkbenchError(str(err)) from None


def check_run_dir(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """run_metadata.json and metrics.json of a finished run (farlab.run_record.finished_run says why not)."""
    try:
        meta = finished_run(run_dir, "The workbench")
    except RunDirError as err:
        raise WorkbenchError(str(err)) from None
    return meta, _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}


def load_config(run_dir: Path) -> tuple[DictConfig, DictConfig]:
    """config.yaml as written, and merged onto the schema (fields added since the run get their defaults)."""
    register_configs()
    raw = OmegaConf.load(run_dir / "config.yaml")
    try:
        return raw, OmegaConf.merge(OmegaConf.structured(FarlabConfig), raw)
    except Exception:  # noqa: BLE001 - an older config with fields the schema dropped: use it as written
        return raw, raw


def open_run(run_dir: str | Path, device: str | None = None) -> RunContext:
    """Check and open a completed run dir (config, tokenizer, task data); models load on first use."""
    run_dir = Path(run_dir).resolve()
    meta, metrics = check_run_dir(run_dir)
    raw, cfg = load_config(run_dir)
    plan = LossPlan.from_config(cfg.loss)
    try:
        tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.get("processor"), cfg.model.get("pad_token"))
        data = build_task_data(cfg.task, tokenizer, cfg.seed)
    except (ConfigError, DataError) as err:
        raise WorkbenchError(f"cannot rebuild the data of {run_dir}: {err}") from err
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return RunContext(run_dir, cfg, meta, metrics, tokenizer, data, plan, dev, raw)


def seeded_subset(n_rows: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or ``limit`` of them drawn with ``seed`` (order kept, reproducible)."""
    if limit is None or limit >= n_rows:
        return np.arange(n_rows)
    if limit < 1:
        raise WorkbenchError(f"--limit={limit} must be >= 1")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))


def check_layers(layers: list[int] | None, model: PreTrainedModel, who: str, option: str) -> list[int]:
    """The layers to use (all of them by default); an index out of range is an error naming the valid range."""
    depth = model_shape(model).num_layers
    if layers is None:
        return list(range(depth + 1))
    bad = [i for i in layers if not 0 <= i <= depth]
    if bad:
        raise WorkbenchError(f"{option}: layer {bad[0]} is out of range for the {who} ({depth} blocks): valid "
                             f"0..{depth} (0 = embeddings, i = block i)")
    return sorted(set(layers))


@dataclass
class ToolOptions:
    """The command line's options, shared by every tool (each reads the ones it needs)."""

    limit: int | None = None  # examples per split a tool reads (None: the tool's default)
    seed: int | None = None  # None: the run's seed
    batch_size: int | None = None  # None: the run's train.eval_batch_size
    progress: bool = True
    student_layers: list[int] | None = None
    teacher_layers: list[int] | None = None
    unbiased: bool = False  # cka: the unbiased HSIC estimator
    top: int = 20  # disagree: examples in the Markdown list
    epochs: float | None = None  # headft: None = the run's train.epochs
    learning_rate: float = 1e-3  # headft
    baseline: RunContext | None = None  # headft/disagree: a CE-only twin run

    def seed_for(self, ctx: RunContext) -> int:
        return int(self.seed if self.seed is not None else ctx.cfg.seed)

    def batch_for(self, ctx: RunContext) -> int:
        return int(self.batch_size or ctx.cfg.train.eval_batch_size)
