"""The run dir an export reads: checks that it finished, then its config, tokenizer, task data and final/ model.

Everything is rebuilt the way ``python -m farlab.train`` built it (``farlab.data.build_task_data`` with the
run's seed), so the parity checks run on the run's own eval split. Nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel

from farlab.config import REPO_ROOT, FarlabConfig, register_configs
from farlab.data import build_task_data
from farlab.data.base import TaskData
from farlab.errors import ConfigError, DataError, RunDirError
from farlab.models.loading import head_for
from farlab.run_record import finished_run, read_run_json

EXPORT_DIR = "export"


class ExportError(Exception):
    """Bad input to an export (run dir, format, architecture, dtype): the message names it and the valid choices."""


class ParityError(ExportError):
    """The exported model does not compute what PyTorch computes within the stated tolerance."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_run_json(path)
    except RunDirError as err:
        raise ExportError(str(err)) from None


def check_run_dir(run_dir: Path) -> dict[str, Any]:
    """run_metadata.json of a finished run (farlab.run_record.finished_run says why not)."""
    try:
        return finished_run(run_dir, "An export")
    except RunDirError as err:
        raise ExportError(str(err)) from None


def _load_config(run_dir: Path) -> DictConfig:
    """config.yaml merged onto the schema, so fields added since the run get their defaults."""
    register_configs()
    raw = OmegaConf.load(run_dir / "config.yaml")
    try:
        return OmegaConf.merge(OmegaConf.structured(FarlabConfig), raw)
    except Exception:  # noqa: BLE001 - an older config with fields the schema dropped: use it as written
        return raw


@dataclass
class ExportSource:
    """A completed run dir: metadata, config, final/'s config; task data and the model are built on first use."""

    run_dir: Path
    meta: dict[str, Any]
    cfg: DictConfig
    model_config: PretrainedConfig
    _data: TaskData | None = field(default=None, repr=False)
    _model: PreTrainedModel | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"

    @property
    def tokenizer(self) -> Any:
        """final/'s tokenizer: the one saved with the student, i.e. the one a deployment uses."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.final_dir)
        return self._tokenizer

    @property
    def data(self) -> TaskData:
        if self._data is None:
            try:
                self._data = build_task_data(self.cfg.task, self.tokenizer, int(self.cfg.seed))
            except (ConfigError, DataError) as err:
                raise ExportError(f"cannot rebuild the eval data of {self.run_dir}: {err}") from err
        return self._data

    @property
    def model(self) -> PreTrainedModel:
        """final/ in float32 on the CPU, eager attention (what the exporters trace), in eval mode."""
        if self._model is None:
            cls = head_for(self.data).auto_class
            self._model = cls.from_pretrained(self.final_dir, attn_implementation="eager").float().eval()
        return self._model

    def out_dir(self, fmt: str) -> Path:
        return self.run_dir / EXPORT_DIR / fmt


def open_source(run_dir: str | Path) -> ExportSource:
    run_dir = Path(run_dir).resolve()
    meta = check_run_dir(run_dir)
    try:
        model_config = AutoConfig.from_pretrained(run_dir / "final")
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read {run_dir / 'final' / 'config.json'}: {err}") from err
    return ExportSource(run_dir, meta, _load_config(run_dir), model_config)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _farlab_commit() -> str | None:
    """The commit of the farlab checkout doing the export (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(src: ExportSource, fmt: str, dtype: str, model_file: Path, packages: list[str]) -> dict[str, Any]:
    """What a deployed file needs to be traced back: the run, its config (hash; a copy sits next to this file),
    its metrics after training, and the software that exported it."""
    metrics_path = src.run_dir / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    return {
        "format": fmt,
        "dtype": dtype,
        "file": model_file.name,
        "file_bytes": model_file.stat().st_size,
        "file_sha256": sha256(model_file),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "run_dir": str(src.run_dir),
            "final_dir": str(src.final_dir),
            "config_yaml_sha256": sha256(src.run_dir / "config.yaml"),
            "config_copy": "config.yaml",
            "task": src.meta.get("task"), "model": src.meta.get("model"), "loss": src.meta.get("loss"),
            "teacher_strategy": src.meta.get("teacher_strategy"), "seed": src.meta.get("seed"),
            "run_git_sha": src.meta.get("git_sha"), "run_git_dirty": src.meta.get("git_dirty"),
            "primary_metric": metrics.get("primary_metric"),
            "post_student_metrics": metrics.get("post", {}).get("student"),
        },
        "exporter": {
            "farlab_version": _version("farlab"),
            "farlab_git_commit": _farlab_commit(),
            "packages": {name: _version(name) for name in ["torch", "transformers", *packages]},
        },
    }
