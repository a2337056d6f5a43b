"""The run directory's bookkeeping: resolved config, run_metadata.json, metrics.json.

``run_metadata.json`` is written at start (status ``running``) and rewritten at the end
(``completed``/``failed``/``preempted``), always atomically, so a collector reading a sweep while
it runs never sees a half-written file. See docs/run_dir.md for the schema.
"""

from __future__ import annotations

import json
import logging
import math
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

from farlab import distributed
from farlab.config import REPO_ROOT, FarlabConfig, canonical_setting, dotted_leaves
from farlab.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

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
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False,
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
            "world_size": distributed.world_size(),  # processes (DDP ranks); the global batch is this x batch_size
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


class RankRecord(RunRecord):
    """The run record of a rank other than 0 in a multi-process run: writes nothing (rank 0 writes the run dir)."""

    def __init__(self) -> None:
        self.meta = {}

    def start(self, cfg: DictConfig) -> None:
        pass

    def finish(self, status: str, error: BaseException | None = None) -> None:
        pass

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        pass


def run_record(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> RunRecord:
    """This process's run record: the real one on rank 0 (the only rank of a plain run), a silent one elsewhere."""
    return RunRecord(run_dir, cfg, overrides) if distributed.is_main() else RankRecord()


# ---- skipping a run that already completed ----------------------------------------------------------------------

# Config keys that may differ between two launches of the same experiment: where things live, how much is printed
# or kept on disk, how a restart behaves. Anything else differing means another experiment (a prefix covers its
# subtree).
IRRELEVANT_KEYS = (
    "resume", "rerun", "output_dir", "paths", "wandb",
    "train.progress_bar", "train.num_threads", "train.keep_checkpoints", "train.keep_final",
    "teacher_strategy.store_dir", "teacher.cache.dir", "teacher.openai.api_key_env",
)  # fmt: skip


def irrelevant_key(key: str) -> bool:
    """A setting that does not change the experiment (IRRELEVANT_KEYS; also the collector's rule for variants)."""
    return any(key == k or key.startswith(f"{k}.") for k in IRRELEVANT_KEYS)


# Options added after runs were stored: a stored config.yaml without one ran with this value.
# (A key absent from the stored config and null now is the same experiment too: an option added later, off.)
ADDED_OPTION_VALUES = {
    "task.targets": "gold",
    "model.teacher.block_importance": "influence", "model.student.block_importance": "influence",
}


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: stored -> new`` for every leaf that differs, irrelevant keys left out (sorted); data paths compare as
    real paths (:func:`~farlab.config.canonical_setting`), so a sweep re-run from another checkout still skips."""
    old, cur = dotted_leaves(stored), dotted_leaves(new)
    missing = object()
    diffs = []
    for key in sorted(old.keys() | cur.keys()):
        a, b = old.get(key, missing), cur.get(key, missing)
        if a is missing and (b is None or ADDED_OPTION_VALUES.get(key, missing) == b):
            continue
        if canonical_setting(key, a) != canonical_setting(key, b) and not irrelevant_key(key):
            show = ["(absent)" if v is missing else repr(v) for v in (a, b)]
            diffs.append(f"{key}: {show[0]} -> {show[1]}")
    return diffs


def _valid_metrics(path: Path) -> dict[str, Any] | None:
    """metrics.json when it holds a finite post-training primary metric, else None."""
    try:
        metrics = json.loads(path.read_text())
        value = metrics["post"]["student"][metrics["primary_metric"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return metrics


def _reload(text: str) -> dict[str, Any]:
    container = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    return container if isinstance(container, dict) else {}


def _with_new_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored config with schema fields added since it was written filled in with their defaults (a new
    field at its default is the same experiment); as stored when it no longer fits the schema."""
    try:
        return _reload(OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.structured(FarlabConfig), stored)))
    except Exception:  # noqa: BLE001 - a key the schema dropped or retyped: compare what was stored
        return stored


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from err


def finished_run(run_dir: Path, reader: str) -> dict[str, Any]:
    """run_metadata.json of a completed run that still has final/ and config.yaml; otherwise a RunDirError that
    says why and how to get one. ``reader`` names who needs it, for the message (e.g. "the workbench")."""
    if not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} does not exist")
    meta_path = run_dir / "run_metadata.json"
    if not meta_path.is_file():
        raise RunDirError(f"{run_dir} is not a run dir: no run_metadata.json (see docs/run_dir.md)")
    meta = read_run_json(meta_path)
    status = meta.get("status")
    if status != "completed":
        why = {"running": "it is still running (or was killed without warning)",
               "failed": f"it failed ({meta.get('error')})",
               "preempted": "it was preempted; resume it with the same command"}.get(str(status), "unknown status")
        raise RunDirError(f"{run_dir} has status {status!r}, not 'completed': {why}. {reader} reads finished runs "
                          "only (final/ and metrics.json)")
    if not (run_dir / "final" / "config.json").is_file():
        raise RunDirError(f"{run_dir} has no final/ (the trained student): train.keep_final=false removes it. "
                          "Re-run the job with train.keep_final=true rerun=true to get it back")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} has no config.yaml (the run's resolved config)")
    return meta


class DifferentConfigError(ConfigError):
    """The run dir holds a completed run of another experiment; ``diffs`` lists ``key: stored -> now``."""

    def __init__(self, diffs: list[str], message: str) -> None:
        super().__init__(message)
        self.diffs = diffs


def completed_run(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The stored metrics when ``run_dir`` already holds this experiment, completed; None when it must run.

    A run counts as completed when ``run_metadata.json`` says ``completed`` and ``metrics.json`` holds the
    primary metric. Raises :class:`DifferentConfigError` when the completed run's ``config.yaml`` differs from
    ``cfg`` in a key outside :data:`IRRELEVANT_KEYS`: skipping would report another experiment's numbers as this
    one's.
    """
    try:
        status = json.loads((run_dir / "run_metadata.json").read_text()).get("status")
    except (OSError, ValueError):
        return None
    if status != "completed":
        return None
    metrics = _valid_metrics(run_dir / "metrics.json")
    if metrics is None:
        log.warning("run dir %s says completed but has no valid metrics.json: running it again", run_dir)
        return None
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        raise ConfigError(
            f"run dir {run_dir} holds a completed run without config.yaml, so it cannot be checked against this "
            "config; pass rerun=true to train again there, or use another run dir"
        )
    # Both sides through the same YAML dump/load that wrote config.yaml, so types compare like with like.
    stored, new = (_reload(text) for text in (stored_path.read_text(), OmegaConf.to_yaml(cfg, resolve=True)))
    diffs = config_differences(_with_new_defaults(stored), new)
    if diffs:
        count = f"{len(diffs)} {'key differs' if len(diffs) == 1 else 'keys differ'}"
        raise DifferentConfigError(
            diffs,
            f"run dir {run_dir} holds a completed run of a different config ({count}, stored -> now):\n  "
            + "\n  ".join(diffs)
            + "\nRe-launch with the stored values to skip it, pass rerun=true to train again in that dir "
            "(overwriting its results), or use another run dir",
        )
    return metrics
