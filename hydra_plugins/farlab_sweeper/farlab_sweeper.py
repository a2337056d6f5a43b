"""Hydra's basic sweeper (cartesian product of the swept values), minus jobs that repeat an earlier job.

A grid such as far_factorial crosses every loss with every teacher strategy, but a loss that needs no teacher
(CE only: alpha 0 or no components) loads none, so its four strategy jobs are one experiment run four times.
Each job's config is composed (as Hydra's own pre-launch check does) and reduced to a canonical form: the
non-Hydra config, fully resolved, with the teacher-only keys dropped when the loss needs no teacher. A job whose
canonical form equals an earlier job's is dropped and logged; the first one (sweep order) runs. Dedup happens
before launching, so it works with every launcher (basic, submitit_local, submitit_slurm): they only ever see
the distinct jobs.

``hydra.sweeper.dry_run=true`` lists the distinct jobs (and the dropped ones) without launching anything, each
with what a launch would do with its run dir now (:mod:`farlab.run_state`): skip it (completed), resume it, start
it, or fail (held by a live process, or completed under another config). A chunked study reads what is left there.
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scan executes this module before it is in
# sys.modules, and dataclasses then cannot resolve string annotations.
import copy
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("farlab.sweeper")

# Top-level config groups that only matter when the student learns from a teacher.
TEACHER_ONLY_KEYS = ("teacher_strategy", "teacher")


@dataclass
class FarlabSweeperConf:
    _target_: str = "hydra_plugins.farlab_sweeper.farlab_sweeper.FarlabSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    dry_run: bool = False  # list the jobs (kept and dropped) and launch nothing


ConfigStore.instance().store(group="hydra/sweeper", name="farlab", node=FarlabSweeperConf, provider="farlab")


def needs_teacher(loss_cfg: Any) -> bool:
    """Whether a composed loss config distils from a teacher, asked of the plan the run itself decides with.

    Imported here, not at the top: Hydra imports this module in every Hydra app, and the plan loads torch.
    An invalid loss config raises ValueError: the job is then kept (see :func:`canonical_form`) and fails on its own.
    """
    from farlab.losses.plan import LossPlan

    return LossPlan.from_config(loss_cfg).needs_teacher


def canonical_form(cfg: DictConfig) -> str | None:
    """The job's experiment as a comparable string; None when it cannot be resolved here (never deduplicated)."""
    try:
        job = {
            key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key, node in ((k, cfg[k]) for k in cfg if k != "hydra")
        }
        if not needs_teacher(cfg.loss):
            for key in TEACHER_ONLY_KEYS:
                job.pop(key, None)
    except Exception as err:  # noqa: BLE001 - e.g. an env var only the job's machine has: keep the job
        log.debug("cannot resolve a job's config here (%s): it is kept", err)
        return None
    return json.dumps(job, sort_keys=True, default=str)


def _show(job: Sequence[str], common: set[str]) -> str:
    return " ".join(o for o in job if o not in common) or "(no overrides)"


class FarlabSweeper(BasicSweeper):
    """BasicSweeper that drops jobs equivalent to an earlier one (see the module docstring)."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None, dry_run: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dry_run = dry_run
        self.dropped: list[tuple[list[str], list[str]]] = []  # (dropped job, the kept job it repeats)
        self.composed: dict[tuple[str, ...], DictConfig] = {}  # each job's config, composed once (dry run reuses it)

    def distinct_jobs(self, jobs: Sequence[Sequence[str]]) -> list[list[str]]:
        """``jobs`` without those equivalent to an earlier one, in sweep order; logs what it dropped."""
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        first: dict[str, list[str]] = {}
        kept: list[list[str]] = []
        self.dropped, self.composed = [], {}
        for job in map(list, jobs):
            cfg = self.composed[tuple(job)] = loader.load_sweep_config(master_config=self.config, sweep_overrides=job)
            key = canonical_form(cfg)
            if key is not None and key in first:
                self.dropped.append((job, first[key]))
                continue
            if key is not None:
                first[key] = job
            kept.append(job)
        if self.dropped:
            log.info(
                "%d of %d jobs dropped as duplicates (their loss needs no teacher, so %s cannot change them); "
                "%d distinct jobs remain:", len(self.dropped), len(jobs), "/".join(TEACHER_ONLY_KEYS), len(kept)
            )  # fmt: skip
            common = set.intersection(*(set(job) for job in jobs))  # shown once, not on every line
            for job, same in self.dropped:
                log.info("  dropped %s (same experiment as %s)", *(_show(j, common) for j in (job, same)))
        return kept

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing to do: :meth:`distinct_jobs` composed every job already (a composition error raised there)."""

    def split_arguments(  # type: ignore[override]  # an instance method: it composes with self's config
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        return list(self.split_overrides_to_chunks(self.distinct_jobs(jobs), max_batch_size))

    def sweep(self, arguments: list[str]) -> Any:
        if not self.dry_run:
            return super().sweep(arguments)
        from farlab.run_state import ACTIONS  # local: loads torch (see needs_teacher)

        assert self.hydra_context is not None and self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)
        jobs = [job for batch in batches for job in batch]
        common = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
        shared = " ".join(o for o in jobs[0] if o in common) if common else "(none)"
        log.info("dry run: %d jobs would be launched (nothing launched); overrides of every job: %s", len(jobs), shared)
        states = self.job_states(jobs)
        for num, (job, state) in enumerate(zip(jobs, states)):
            log.info("  #%d : %s -> %s", num, _show(job, common), state)
        counts = Counter(state.action for state in states)
        log.info("in %s: %s", self.config.hydra.sweep.dir,
                 ", ".join(f"{counts[action]} {action}" for action in ACTIONS if counts[action]))
        return []

    def job_states(self, jobs: Sequence[Sequence[str]]) -> list[Any]:
        """What launching each job would do with its run dir (skip, resume, start, fail), read-only.

        Each job's dir comes from its composed config with the number the launcher would give it, as Hydra's
        ``run_job`` derives it; the Hydra config in effect is restored afterwards.
        """
        from farlab.run_state import RunState, run_state  # local: loads torch (see needs_teacher)

        assert self.hydra_context is not None and self.config is not None
        loader, saved = self.hydra_context.config_loader, HydraConfig.instance().cfg
        states = []
        try:
            for num, job in enumerate(jobs):
                composed = self.composed.get(tuple(job))
                cfg = (copy.deepcopy(composed) if composed is not None
                       else loader.load_sweep_config(master_config=self.config, sweep_overrides=list(job)))
                with open_dict(cfg):
                    cfg.hydra.job.id, cfg.hydra.job.num = num, num
                HydraConfig.instance().set_config(cfg)
                try:
                    run_dir = Path(cfg.output_dir or os.path.join(cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir))
                    task_cfg = copy.deepcopy(cfg)
                    with open_dict(task_cfg):
                        del task_cfg["hydra"]
                    states.append(run_state(run_dir.absolute(), task_cfg))
                except Exception as err:  # noqa: BLE001 - e.g. an env var only the job's machine has
                    states.append(RunState("starts", f"its run dir cannot be resolved here: {err}"))
        finally:
            HydraConfig.instance().cfg = saved  # type: ignore[assignment]
        return states
