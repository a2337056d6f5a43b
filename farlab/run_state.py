"""What launching a job would do with its run dir, decided without doing it: a sweep dry run's per-job line.

Built from the decisions :func:`farlab.train.execute` itself makes (the run-dir lock, :func:`completed_run`, the
newest complete checkpoint), so a dry run and a launch cannot disagree about which jobs are left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from farlab.errors import ConfigError
from farlab.run_lock import lock_holder
from farlab.run_record import DifferentConfigError, completed_run
from farlab.trainer.checkpoints import latest_complete_checkpoint

# What a launch does, in the order a summary lists them.
ACTIONS = ("skips", "resumes", "starts over", "starts", "fails")


@dataclass(frozen=True)
class RunState:
    action: str  # one of ACTIONS
    why: str = ""

    def __str__(self) -> str:
        return f"{self.action} ({self.why})" if self.why else self.action


def run_state(run_dir: Path, cfg: DictConfig) -> RunState:
    """What ``execute(cfg, run_dir)`` would do now, read-only."""
    holder = lock_holder(run_dir)
    if holder is not None:
        return RunState("fails", f"busy: another live process holds it, {holder}")
    try:
        status = json.loads((run_dir / "run_metadata.json").read_text()).get("status")
    except (OSError, ValueError):
        return RunState("starts")
    if cfg.resume and not cfg.rerun:
        try:
            if completed_run(run_dir, cfg) is not None:
                return RunState("skips", "completed")
        except DifferentConfigError as err:
            return RunState("fails", f"completed under another config: {'; '.join(err.diffs)}")
        except ConfigError as err:
            return RunState("fails", str(err))
    if not cfg.resume:
        return RunState("starts over", f"was {status}, resume=false")
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is not None:
        return RunState("resumes", f"was {status}, from {checkpoint.name}")
    return RunState("starts over", f"was {status}, no complete checkpoint")
