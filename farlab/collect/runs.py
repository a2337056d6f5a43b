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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from farlab.collect.factors import SHARED, STRATEGY_ORDER, far_flags, is_baseline
from farlab.eval.transfer import transfer_efficiency
from farlab.run_record import irrelevant_key

METADATA = "run_metadata.json"
METRICS = "metrics.json"
HYDRA_CONFIG = os.path.join(".hydra", "config.yaml")
HYDRA_OVERRIDES = os.path.join(".hydra", "overrides.yaml")
# Folders that never hold job dirs: submitit's pickles/logs and the collector's own plots.
PRUNE_DIRS = {".submitit", ".hydra", "plots", "__pycache__"}
# Recipe fields shown in every table header (config.yaml paths).
RECIPE_KEYS = (("epochs", ("train", "epochs")), ("max_steps", ("train", "max_steps")),
               ("learning_rate", ("train", "learning_rate")), ("batch_size", ("train", "batch_size")),
               ("train_limit", ("task", "train_limit")))


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
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        """The CE baseline: no F, A or R, so no teacher and no effect of the teacher strategy."""
        return is_baseline(self.flags)

    @property
    def cell_strategy(self) -> str:
        """The strategy column of this run's table cell: 'shared' for the CE baseline."""
        return SHARED if self.baseline else self.teacher_strategy


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


def recipe_of(cfg: dict) -> dict[str, Any]:
    """The training recipe a table header states (epochs, max_steps, learning rate, batch size, train_limit)."""
    out: dict[str, Any] = {}
    for name, path in RECIPE_KEYS:
        node: Any = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        out[name] = node
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> float | None:
    return float(v) if _is_number(v) else None


def _evaluations(m: dict, prefix: str, out: dict[str, Any]) -> None:
    """{pre|post: {role: {metric: value}}} -> <prefix><phase>_<role>_<metric> columns (numbers only), plus
    <phase>_<role>_max_class_rate, the largest entry of pred_class_rate (one class ~1.0 = a collapsed model)."""
    for phase in ("pre", "post"):
        for role, vals in sorted((m.get(phase) or {}).items()):
            if isinstance(vals, dict):
                for key, val in sorted(vals.items()):
                    if _is_number(val):
                        out[f"{prefix}{phase}_{role}_{key}"] = float(val)
                rates = vals.get("pred_class_rate")
                if isinstance(rates, dict) and any(_is_number(r) for r in rates.values()):
                    out[f"{prefix}{phase}_{role}_max_class_rate"] = max(float(r) for r in rates.values()
                                                                        if _is_number(r))


def _harness_by_task(harness: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """metrics.json ``harness`` {phase: {role: {task: metrics}}} -> {task: {phase: {role: metrics}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for phase in ("pre", "post"):
        for role, tasks in ((harness or {}).get(phase) or {}).items() if isinstance(harness, dict) else ():
            for task, vals in (tasks or {}).items() if isinstance(tasks, dict) else ():
                out.setdefault(task, {}).setdefault(phase, {})[role] = vals
    return out


def flatten_metrics(m: dict) -> dict[str, Any]:
    """metrics.json -> flat columns: pre_<role>_<metric>, post_<role>_<metric>, extra_<split>_<phase>_<role>_<metric>
    (task.extra_eval_files), harness_<task>_<phase>_<role>_<metric> (eval.harness), transfer gap, train_*,
    runtime_s, peak_memory_mb_*, best_*."""
    out: dict[str, Any] = {"primary_metric": m.get("primary_metric") or ""}
    _evaluations(m, "", out)
    for stem, evals in sorted((m.get("extra_eval") or {}).items()):
        if isinstance(evals, dict):
            _evaluations(evals, f"extra_{stem}_", out)
    for task, evals in sorted(_harness_by_task(m.get("harness")).items()):
        _evaluations(evals, f"harness_{task}_", out)
    gap = m.get("transfer_gap") or {}
    out["transfer_metric"] = gap.get("metric") or ""
    for key in ("teacher_advantage", "student_gain"):
        out[key] = _num(gap.get(key))
    if gap:  # today's rule, so runs written before the advantage floor read like new ones
        efficiency, note = transfer_efficiency(out["transfer_metric"], out["student_gain"], out["teacher_advantage"])
        out["transfer_efficiency"], out["transfer_efficiency_note"] = efficiency, note or ""
    else:
        out["transfer_efficiency"], out["transfer_efficiency_note"] = None, ""
    train = m.get("train") or {}
    out["runtime_s"] = _num(train.get("runtime_s"))
    for key, val in sorted(train.items()):
        if key != "runtime_s" and _is_number(val):
            out[f"train_{key}"] = float(val)
    peak = m.get("peak_memory_mb")  # {"cpu_rss": MB, "cuda_allocated": MB on GPU} (farlab.trainer.resources)
    if isinstance(peak, dict):
        for key, val in sorted(peak.items()):
            if _is_number(val):
                out[f"peak_memory_mb_{key}"] = float(val)
    elif _is_number(peak):  # a bare number: older metrics.json files
        out["peak_memory_mb"] = float(peak)
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
               end_time=str(meta.get("end_time") or ""), recipe=recipe_of(cfg), **ident)


def experiment_overrides(run: Run) -> tuple[str, ...]:
    """The run's overrides that define its experiment (threads, progress bars and the like left out)."""
    return tuple(sorted(o for o in run.overrides if not irrelevant_key(_override_key(o))))


def experiment_key(run: Run) -> tuple:
    """Runs with the same names, seed and overrides are the same experiment; without overrides we cannot tell."""
    key = (run.task, run.model, run.loss, run.teacher_strategy, str(run.seed), experiment_overrides(run))
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


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def baseline_key(run: Run) -> tuple:
    """CE baseline runs that differ only in their teacher strategy (and its settings) are one experiment."""
    rest = tuple(o for o in experiment_overrides(run) if _override_key(o).split(".")[0] != "teacher_strategy")
    return (run.task, run.model, run.loss, str(run.seed), rest)


def _strategy_rank(run: Run) -> tuple:
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    return (order.get(run.teacher_strategy, len(order)), run.teacher_strategy, run.run_dir)


def merge_baselines(runs: list[Run]) -> tuple[list[Run], list[Skipped]]:
    """Keep one CE baseline run per seed: alpha 0 loads no teacher, so a sweep's copies under every teacher
    strategy are the same experiment (the first strategy in table order is kept). The other copies are listed
    as skipped 'merged', with a note when their primary metric differs from the kept one."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.baseline:
            groups.setdefault(baseline_key(run), []).append(run)
    merged: list[Skipped] = []
    drop: set[str] = set()
    for copies in groups.values():
        keep, *others = sorted(copies, key=_strategy_rank)
        for other in others:
            drop.add(other.run_dir)
            merged.append(Skipped(other.run_dir, "merged", _merge_reason(keep, other), other.task, other.loss,
                                  other.teacher_strategy, other.seed))
    return [r for r in runs if r.run_dir not in drop], merged


def _merge_reason(keep: Run, other: Run) -> str:
    primary = keep.metrics.get("primary_metric") or ""
    col = f"post_student_{primary}"
    a, b = keep.metrics.get(col), other.metrics.get(col)
    same = "same" if a == b else f"differs: {_fmt_g(b)} here vs {_fmt_g(a)}"
    return (f"CE baseline copy of {keep.run_dir} (no teacher is loaded, so the teacher strategy has no effect; "
            f"{col} {same})")


def _fmt_g(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# Overrides that place a run in its table (row, column, replicate), or say nothing about the experiment.
CELL_KEYS = {"loss", "teacher_strategy", "seed", "experiment", "hydra"}
VARIANT_MARK = " · "  # between the model name and a variant's label


def split_variants(runs: list[Run]) -> list[Run]:
    """Runs of one (task, model) whose other overrides differ (e.g. ``task.class_ratio=null,[0.9,0.1]`` swept
    alongside the cells) are different experiments: each variant gets its own tables, its label appended to the
    model name (``minilm · task.class_ratio=[0.9,0.1]``), instead of being pooled as extra seeds of one cell.
    Settings that do not change the experiment (threads, progress bars, what is kept on disk: the run record's
    rule) never make a variant."""
    given = {id(run): {_override_key(o): o.split("=", 1)[1] if "=" in o else "" for o in run.overrides}
             for run in runs}  # each run's overrides as key -> value, parsed once

    def varying(group: list[Run]) -> list[str]:
        keys = {k for run in group for k in given[id(run)]
                if k.split(".")[0] not in CELL_KEYS and not irrelevant_key(k)}
        return sorted(k for k in keys if len({given[id(run)].get(k, "(default)") for run in group}) > 1)

    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.model), []).append(run)
    out = []
    for group in groups.values():
        keys = varying(group)
        for run in group:
            label = ", ".join(f"{k}={given[id(run)].get(k, '(default)')}" for k in keys)
            out.append(replace(run, model=f"{run.model}{VARIANT_MARK}{label}") if keys else run)
    return out


def load_all(jobs: list[Path], out_dir: Path) -> tuple[list[Run], list[Skipped]]:
    """Load every job dir (paths shown relative to the output dir), drop duplicate experiments, split variants
    and merge the CE baseline's strategy copies."""
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for job in jobs:
        rel = Path(os.path.relpath(job, out_dir)).as_posix()
        rec = load_job(job, rel)
        (runs if isinstance(rec, Run) else skipped).append(rec)
    runs, dups = drop_duplicates(runs)
    runs, merged = merge_baselines(split_variants(runs))
    return runs, skipped + dups + merged
