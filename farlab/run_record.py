"""The run directory's bookkeeping: resolved config, run_metadata.json, metrics.json.

``run_metadata.json`` is written at start (status ``running``) and rewritten at the end
(``completed``/``failed``/``preempted``), always atomically, so a collector reading a sweep while
it runs never sees a half-written file. See docs/run_dir.md for the schema.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from farlab.config import REPO_ROOT

TRACKED_PACKAGES = (
    "farlab", "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets",
    "hydra-core", "omegaconf", "submitit", "scikit-learn", "sacrebleu", "wandb",
)  # fmt: skip


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_state() -> tuple[str | None, bool | None]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, None


def _packages() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _slurm() -> dict[str, str] | None:
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID"}
    found = {k: os.environ[v] for k, v in keys.items() if v in os.environ}
    return found or None


class RunRecord:
    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "run_metadata.json"
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        sha, dirty = _git_state()
        self.meta: dict[str, Any] = {
            "status": "running",
            "error": None,
            "seed": cfg.seed,
            "task": cfg.task.name,
            "model": cfg.model.name,
            "loss": cfg.loss.name,
            "teacher_strategy": cfg.teacher_strategy.name,
            "overrides": overrides,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "git_sha": sha,
            "git_dirty": dirty,
            "host": platform.node(),
            "pid": os.getpid(),  # with host: the process to signal (kill -USR1) for a graceful stop
            "packages": _packages(),
            "start_time": previous.get("start_time", _now()),
            "end_time": None,
            "attempts": previous.get("attempts", 0) + 1,
            "slurm": _slurm(),
        }

    def start(self, cfg: DictConfig) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_json_atomic(self.path, self.meta)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.meta["status"] = status
        self.meta["error"] = f"{type(error).__name__}: {error}" if error is not None else None
        self.meta["end_time"] = _now()
        write_json_atomic(self.path, self.meta)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / "metrics.json", metrics)
