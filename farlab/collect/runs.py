"""Find job dirs on disk and turn each into one tidy record (or a skip with its reason).

The collector reads only what the trainer wrote (see docs/run_dir.md), never launcher return values, so
interrupted, resubmitted and partial sweeps collect the same way as finished ones. Every problem with one run
(failed, still running, preempted, corrupt files) becomes a ``Skipped`` entry; nothing here raises for a bad run.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METADATA = "run_metadata.json"
METRICS = "metrics.json"
HYDRA_CONFIG = os.path.join(".hydra", "config.yaml")
HYDRA_OVERRIDES = os.path.join(".hydra", "overrides.yaml")
# Folders that never hold job dirs: submitit's pickles/logs and the collector's own plots.
PRUNE_DIRS = {".submitit", ".hydra", "plots", "__pycache__"}
FACTORS = ("F", "A", "R")
_KINDS = {"feature": "F", "attention": "A", "response": "R"}


@dataclass
class Run:
    """One completed run: identification fields plus flattened metrics."""

    run_dir: str
    task: str
    model: str
    loss: str
    teacher_strategy: str
    seed: Any
    flags: dict[str, int | None]
    metrics: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    end_time: str = ""
    status: str = "completed"


@dataclass
class Skipped:
    """A job dir left out of the tables, with the reason a human needs to act on it."""

    run_dir: str
    status: str
    reason: str
    task: str = ""
    loss: str = ""
    teacher_strategy: str = ""
    seed: Any = ""


class CollectError(Exception):
    """A problem with the collector's input as a whole (not with one run)."""


# ---------------------------------------------------------------------------------------------- discovery


def expand_inputs(args: Iterable[str]) -> list[Path]:
    """Sweep dirs from CLI args: existing dirs as given, anything else as a glob pattern (sorted, deduplicated)."""
    dirs: list[Path] = []
    for arg in args:
        matches = [arg] if os.path.isdir(arg) else sorted(glob.glob(arg))
        matches = [m for m in matches if os.path.isdir(m)]
        if not matches:
            raise CollectError(f"no such directory (or glob without matches): {arg}")
        dirs.extend(Path(m).resolve() for m in matches)
    return list(dict.fromkeys(dirs))


def is_job_dir(path: Path) -> bool:
    """A job dir holds run_metadata.json (written at start) or Hydra's .hydra/config.yaml."""
    return (path / METADATA).is_file() or (path / HYDRA_CONFIG).is_file()


def find_job_dirs(roots: Iterable[Path]) -> list[Path]:
    """All job dirs below the roots, sorted. Descends into job dirs too: `/` in override values nests job dirs."""
    found: set[Path] = set()
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in PRUNE_DIRS and not d.startswith("checkpoint-"))
            if is_job_dir(Path(dirpath)):
                found.add(Path(dirpath))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- reading files


def read_json(path: Path) -> Any:
    """Parse a JSON file; raises ValueError with the file name on bad JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {path.name}: {e.msg} (line {e.lineno}, col {e.colno})") from e


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; raises ValueError with the file name on bad YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"corrupt {path.name}: {str(e).splitlines()[0]}") from e


def load_config(job: Path) -> dict:
    """The resolved config.yaml, else Hydra's composed .hydra/config.yaml; ValueError when missing or unreadable."""
    for rel in ("config.yaml", HYDRA_CONFIG):
        if (job / rel).is_file():
            cfg = read_yaml(job / rel)
            if not isinstance(cfg, dict):
                raise ValueError(f"corrupt {rel}: not a mapping")
            return cfg
    raise ValueError("missing config (neither config.yaml nor .hydra/config.yaml)")


def load_overrides(job: Path, meta: dict) -> list[str]:
    """The job's command-line overrides: run_metadata.json's list, else .hydra/overrides.yaml."""
    if isinstance(meta.get("overrides"), list):
        return [str(o) for o in meta["overrides"]]
    try:
        ov = read_yaml(job / HYDRA_OVERRIDES) if (job / HYDRA_OVERRIDES).is_file() else None
    except ValueError:
        ov = None
    return [str(o) for o in ov] if isinstance(ov, list) else []


# ---------------------------------------------------------------------------------------------- fields


def group_name(cfg: dict, meta: dict, group: str) -> str:
    """`<group>.name` from the config, falling back to run_metadata.json, else 'unknown'."""
    node = cfg.get(group)
    name = node.get("name") if isinstance(node, dict) else None
    if name in (None, ""):
        name = meta.get(group)
    return str(name) if name not in (None, "") else "unknown"


def seed_of(cfg: dict, meta: dict) -> Any:
    """Top-level seed from the config (metadata as fallback); ints stay ints so they sort numerically."""
    seed = cfg.get("seed", meta.get("seed"))
    if isinstance(seed, str) and seed.lstrip("-").isdigit():
        return int(seed)
    return "" if seed is None else seed


def _enabled(value: Any) -> bool:
    """Whether a loss component entry is switched on (None, weight 0 or enabled: false switch it off)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, dict):
        if value.get("enabled") is False:
            return False
        weight = value.get("weight")
        if isinstance(weight, (int, float)) and weight == 0:
            return False
    return True


def _kind(label: Any) -> str | None:
    """Factor letter for a component label such as 'response', 'feature_mse' or 'attention/kl'."""
    text = str(label).lower()
    for word, letter in _KINDS.items():
        if text.startswith(word):
            return letter
    return None


def flags_from_components(components: Any) -> dict[str, int]:
    """F/A/R from loss.components: a mapping keyed by kind, or a list of names / {kind|type|name: ...} dicts."""
    on: set[str] = set()
    if isinstance(components, dict):
        items = [(key, val) for key, val in components.items()]
    elif isinstance(components, list):
        items = []
        for item in components:
            label = item
            if isinstance(item, dict):
                label = item.get("kind") or item.get("type") or item.get("name") or ""
            items.append((label, item))
    else:
        items = []
    for label, val in items:
        declared = (val.get("type") or val.get("kind")) if isinstance(val, dict) else None
        letter = _kind(declared) if declared else _kind(label)  # an explicit type beats the entry's key
        if letter and _enabled(val):
            on.add(letter)
    return {f: int(f in on) for f in FACTORS}


def flags_from_name(loss: str) -> dict[str, int | None]:
    """F/A/R from the loss name: combined_<letters>, combined_ce, response_*, feature_*, attention_*, staged_<far>."""
    off = {f: 0 for f in FACTORS}
    if loss in ("ce", "sft", "combined_ce"):
        return off
    for prefix in ("combined_", "staged_"):
        if loss.startswith(prefix):
            letters = loss[len(prefix):]
            if letters and set(letters) <= set("far"):
                return {f: int(f.lower() in letters) for f in FACTORS}
    letter = _kind(loss)
    if letter:
        return {f: int(f == letter) for f in FACTORS}
    return {f: None for f in FACTORS}


def far_flags(loss: str, loss_cfg: Any) -> dict[str, int | None]:
    """Prefer the config's loss.components (the truth of what ran); fall back to the naming convention.
    alpha == 0 switches all distillation off whatever the components say."""
    if isinstance(loss_cfg, dict) and _is_number(loss_cfg.get("alpha")) and loss_cfg["alpha"] == 0:
        return {f: 0 for f in FACTORS}
    if isinstance(loss_cfg, dict) and loss_cfg.get("components") is not None:
        return flags_from_components(loss_cfg["components"])
    return flags_from_name(loss)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> float | None:
    return float(v) if _is_number(v) else None


def flatten_metrics(m: dict) -> dict[str, Any]:
    """metrics.json -> flat columns: pre_<role>_<metric>, post_<role>_<metric>, transfer gap, train_*, runtime_s."""
    out: dict[str, Any] = {"primary_metric": m.get("primary_metric") or ""}
    for phase in ("pre", "post"):
        for role, vals in sorted((m.get(phase) or {}).items()):
            if isinstance(vals, dict):
                for key, val in sorted(vals.items()):
                    if _is_number(val):
                        out[f"{phase}_{role}_{key}"] = float(val)
    gap = m.get("transfer_gap") or {}
    out["transfer_metric"] = gap.get("metric") or ""
    for key in ("teacher_advantage", "student_gain", "transfer_efficiency"):
        out[key] = _num(gap.get(key))
    out["transfer_efficiency_note"] = gap.get("transfer_efficiency_note") or ""
    train = m.get("train") or {}
    out["runtime_s"] = _num(train.get("runtime_s"))
    for key, val in sorted(train.items()):
        if key != "runtime_s" and _is_number(val):
            out[f"train_{key}"] = float(val)
    out["peak_memory_mb"] = _num(m.get("peak_memory_mb"))
    for name, best in sorted((m.get("best") or {}).items()):
        if isinstance(best, dict):
            out[f"best_{name}"] = _num(best.get("value"))
            out[f"best_{name}_step"] = _num(best.get("step"))
    return out


# ---------------------------------------------------------------------------------------------- one job dir


def _status_reason(status: str, meta: dict) -> str:
    """Human reason for a run that did not complete."""
    if status == "failed":
        return f"failed: {meta.get('error') or 'no error recorded'}"
    if status == "running":
        return "still running (or killed before it could record its end)"
    if status == "preempted":
        return "preempted and not (yet) resumed to completion"
    return f"unknown status {status!r}"


def load_job(job: Path, rel: str) -> Run | Skipped:
    """Read one job dir into a Run, or a Skipped with the reason; never raises for bad files."""
    meta: dict = {}
    if (job / METADATA).is_file():
        try:
            meta = read_json(job / METADATA)
        except (ValueError, OSError) as e:
            return Skipped(rel, "corrupt", str(e))
        if not isinstance(meta, dict):
            return Skipped(rel, "corrupt", f"corrupt {METADATA}: not an object")
    try:
        cfg = load_config(job)
    except (ValueError, OSError) as e:
        return Skipped(rel, "corrupt", str(e), meta.get("task") or "", meta.get("loss") or "")
    ident = {"task": group_name(cfg, meta, "task"), "loss": group_name(cfg, meta, "loss"),
             "teacher_strategy": group_name(cfg, meta, "teacher_strategy"), "seed": seed_of(cfg, meta)}
    has_metrics = (job / METRICS).is_file()
    status = str(meta.get("status") or ("completed" if has_metrics else "not started"))
    if not meta and not has_metrics:
        return Skipped(rel, "not started", f"no {METADATA} and no {METRICS} (not started, or died at start)", **ident)
    if status != "completed":
        return Skipped(rel, status, _status_reason(status, meta), **ident)
    if not has_metrics:
        return Skipped(rel, "corrupt", f"status 'completed' but {METRICS} is missing", **ident)
    try:
        metrics = read_json(job / METRICS)
    except (ValueError, OSError) as e:
        return Skipped(rel, "corrupt", str(e), **ident)
    post = metrics.get("post") if isinstance(metrics, dict) else None
    if not isinstance(post, dict) or not isinstance(post.get("student"), dict):
        return Skipped(rel, "corrupt", f"{METRICS} has no post.student metrics", **ident)
    if ident["task"] == "unknown" and metrics.get("task"):
        ident["task"] = str(metrics["task"])
    return Run(run_dir=rel, model=group_name(cfg, meta, "model"), flags=far_flags(ident["loss"], cfg.get("loss")),
               metrics=flatten_metrics(metrics), overrides=load_overrides(job, meta),
               end_time=str(meta.get("end_time") or ""), **ident)


def experiment_key(run: Run) -> tuple:
    """Runs with the same names, seed and overrides are the same experiment; without overrides we cannot tell."""
    key = (run.task, run.model, run.loss, run.teacher_strategy, str(run.seed), tuple(sorted(run.overrides)))
    return key if run.overrides else key + (run.run_dir,)


def drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Skipped]]:
    """Keep the newest run of each experiment: a resubmitted sweep that re-ran a completed job must not
    count it twice. The older copies are reported as skipped 'duplicate'."""
    best: dict[tuple, Run] = {}
    for run in runs:
        key = experiment_key(run)
        if key not in best or (run.end_time, run.run_dir) > (best[key].end_time, best[key].run_dir):
            best[key] = run
    kept = [r for r in runs if best[experiment_key(r)] is r]
    dups = [Skipped(r.run_dir, "duplicate", f"same experiment as newer run {best[experiment_key(r)].run_dir}",
                    r.task, r.loss, r.teacher_strategy, r.seed)
            for r in runs if best[experiment_key(r)] is not r]
    return kept, dups


def load_all(jobs: list[Path], out_dir: Path) -> tuple[list[Run], list[Skipped]]:
    """Load every job dir (paths shown relative to the output dir) and drop duplicate experiments."""
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for job in jobs:
        rel = Path(os.path.relpath(job, out_dir)).as_posix()
        rec = load_job(job, rel)
        (runs if isinstance(rec, Run) else skipped).append(rec)
    runs, dups = drop_duplicates(runs)
    return runs, skipped + dups
