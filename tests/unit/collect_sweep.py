"""Sweeps for the collector's tests, made of what farlab really writes.

``real_sweep``: a session-wide Hydra multirun of 8 tiny jobs (tiny BERTs, 4 steps, 64 CoLA rows): combined_ce and
combined_f x frozen_base and cotrain_base x seeds 1 and 2, through ``python -m farlab.train -m`` (run dirs with
.hydra/, output.log, multirun.yaml, checkpoints and final/ weights). Built once per test session (~20 s) and
reused by every test module that asks for it; tests copy it before writing into it.

:func:`synthetic_sweep` writes factorial sweeps with KNOWN metric values for the statistics tests: each job dir
is a real run dir of ``real_sweep`` (metrics.json, run_metadata.json) with the loss/strategy/seed/task fields and
the primary metric replaced, and config.yaml's ``loss`` composed by Hydra from conf/loss/<name>.yaml.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LOSSES = ("combined_ce", "combined_f")
STRATEGIES = ("frozen_base", "cotrain_base")
SEEDS = (1, 2)
FIXED = {
    "task": "cola", "model": "tiny_bert", "task.train_limit": 64, "task.eval_limit": 48, "train.max_steps": 4,
    "train.batch_size": 8, "train.eval_batch_size": 48, "train.logging_steps": 2, "train.save_steps": 2,
    "train.progress_bar": False, "train.num_threads": 2, "wandb.mode": "disabled",
}  # fmt: skip


def job_name(loss: str, strategy: str, seed: int) -> str:
    return f"loss={loss},seed={seed},teacher_strategy={strategy}"


def run_tiny_sweep(sweep: Path, store: Path) -> None:
    """The 8-job multirun into ``sweep`` (job dirs named loss=..,seed=..,teacher_strategy=..)."""
    fixed = {**FIXED, "teacher_strategy.store_dir": store}
    exclude = ",".join(fixed)
    cmd = [sys.executable, "-m", "farlab.train", "-m", f"hydra.sweep.dir={sweep}",
           "hydra.sweep.subdir=${hydra.job.override_dirname}",
           f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]",
           *(f"{k}={v}" for k, v in fixed.items()), f"loss={','.join(LOSSES)}",
           f"teacher_strategy={','.join(STRATEGIES)}", f"seed={','.join(map(str, SEEDS))}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, check=False, cwd=sweep.parent, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.fail(f"tiny sweep failed (rc={res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def build_real_sweep(base: Path) -> Path:
    """The session's real sweep under ``base`` (built on first use; later calls reuse it)."""
    sweep, done = base / "sweep", base / "DONE"
    if not done.is_file():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        run_tiny_sweep(sweep, base / "store")
        done.touch()
    return sweep


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 8-job sweep (read-only: copy it with :func:`copy_sweep` before writing into it)."""
    return build_real_sweep(tmp_path_factory.getbasetemp() / "collect_real_sweep")


def copy_sweep(src: Path, dest: Path) -> Path:
    """A writable copy of a sweep (collect writes its tables into the sweep dir)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- synthetic


@functools.cache
def composed_loss(loss: str) -> dict:
    """conf/loss/<loss>.yaml as Hydra composes it for a run (what config.yaml's ``loss`` holds)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from farlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"loss={loss}", "model=tiny_bert"])
    return OmegaConf.to_container(cfg.loss, resolve=True)


def write_job(job: Path, template: Path, *, task: str, loss: str, strategy: str, seed: int, value: float,
              teacher: float | None = None, edit: Callable[[dict], None] | None = None) -> Path:
    """One job dir from the real run dir ``template`` with the names and the primary metric replaced.

    value: post.student[primary]; teacher: pre.teacher[primary] (None: no teacher entry, as for CE);
    edit: a last change to metrics.json (e.g. add calibration entries).
    """
    job.mkdir(parents=True)
    cfg = yaml.safe_load((template / "config.yaml").read_text(encoding="utf-8"))
    cfg["task"]["name"], cfg["loss"], cfg["seed"] = task, composed_loss(loss), seed
    cfg["teacher_strategy"]["name"] = strategy
    (job / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    meta = read_json(template / "run_metadata.json")
    overrides = [o for o in meta["overrides"] if not o.startswith(("loss=", "seed=", "teacher_strategy=", "task="))]
    meta.update(task=task, loss=loss, teacher_strategy=strategy, seed=seed,
                overrides=[f"task={task}", *overrides, f"loss={loss}", f"teacher_strategy={strategy}", f"seed={seed}"])
    (job / "run_metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    metrics = copy.deepcopy(read_json(template / "metrics.json"))
    primary = metrics["primary_metric"]
    metrics["task"] = task
    metrics["post"]["student"][primary] = value
    metrics["post"]["student"].pop("pred_class_rate", None)  # the template's prediction shares do not fit `value`
    metrics["post"].pop("teacher", None)
    if teacher is None:
        metrics["pre"].pop("teacher", None)
    else:
        metrics["pre"]["teacher"] = {**metrics["pre"]["student"], primary: teacher}
    if edit is not None:
        edit(metrics)
    (job / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return job


def synthetic_sweep(root: Path, template: Path, value: Callable[[str, str, int], float], *, task: str = "cola",
                    losses: tuple[str, ...], strategies: tuple[str, ...], seeds: tuple[int, ...],
                    teacher: float | None = 0.5, edit: Callable[[str, str, int, dict], None] | None = None) -> Path:
    """Every loss x strategy x seed job (the CE baseline too, under every strategy, as a sweep runs it)."""
    for loss in losses:
        for strategy in strategies:
            for seed in seeds:
                ce = loss == "combined_ce"
                write_job(root / job_name(loss, strategy, seed), template, task=task, loss=loss, strategy=strategy,
                          seed=seed, value=value(loss, strategy, seed), teacher=None if ce else teacher,
                          edit=(lambda m, a=(loss, strategy, seed): edit(*a, m)) if edit else None)
    return root
