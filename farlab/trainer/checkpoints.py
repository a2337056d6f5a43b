"""Atomic checkpoints: written to a staging dir, flushed, renamed, then marked complete.

A checkpoint without its ``COMPLETE`` marker (a job killed mid-write) is never loaded, so a resume
always starts from the newest checkpoint that was fully written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from farlab.atomic import COMPLETE_MARKER, publish  # noqa: F401 - re-exported: checkpoints are write-once folders

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match[1]), child))
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def rotate(run_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and incomplete leftovers."""
    root = Path(run_dir)
    complete = complete_checkpoints(root)
    for path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    kept = set(complete[-keep:]) if keep > 0 else set(complete)
    for child in root.iterdir():
        if _CHECKPOINT.match(child.name) and child not in kept and not (child / COMPLETE_MARKER).is_file():
            shutil.rmtree(child, ignore_errors=True)


def clear_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Remove every checkpoint (complete or not) and the staging dir; returns the checkpoints, oldest first.

    A fresh start (``resume=false``) must not mix with an earlier run's checkpoints: rotation would keep the
    old, higher-numbered ones and a later resume would pick them."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    removed = sorted((p for p in root.iterdir() if _CHECKPOINT.match(p.name)), key=lambda p: int(p.name[11:]))
    for path in [*removed, root / STAGING_DIR]:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def resume_checkpoint(run_dir: str | os.PathLike, resume: bool) -> Path | None:
    """The checkpoint to resume from: the newest complete one with ``resume``; none (old ones cleared) without."""
    if resume:
        found = latest_complete_checkpoint(run_dir)
        if found is not None:
            log.info("resuming from %s", found)
        return found
    removed = clear_checkpoints(run_dir)
    if removed:
        log.warning("resume=false: removed %s from %s; training starts from scratch",
                    ", ".join(p.name for p in removed), run_dir)
    return None


# ---- retention after the run completes --------------------------------------------------------------------------

KEEP_CHECKPOINTS = ("all", "last", "none")


def check_retention(keep_checkpoints: str, keep_final: bool) -> None:
    """Refuse a bad ``train.keep_checkpoints``/``train.keep_final`` before the run starts (not after hours of it)."""
    from farlab.errors import ConfigError
    from farlab.registry import unknown_choice_message

    if keep_checkpoints not in KEEP_CHECKPOINTS:
        raise ConfigError(unknown_choice_message("train.keep_checkpoints", keep_checkpoints, KEEP_CHECKPOINTS))
    if not isinstance(keep_final, bool):
        raise ConfigError(f"train.keep_final={keep_final!r} must be true or false")


def _remove(path: Path) -> None:
    """Delete a checkpoint so that no crash mid-delete leaves a folder that still looks complete: marker first."""
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def prune_completed_run(run_dir: str | os.PathLike, keep_checkpoints: str, keep_final: bool = True) -> list[Path]:
    """Drop what a *completed* run no longer needs; returns the removed folders.

    Checkpoints exist to resume a live run; once ``metrics.json`` and ``final/`` are written they only cost disk.
    ``all`` keeps them (nothing removed), ``last`` keeps the newest complete ``checkpoint-N``, ``none`` removes
    every one; incomplete leftovers and the staging dir go in both cases. ``keep_final=False`` also removes
    ``final/`` (the exported student) and ``final_teacher/`` (a co-trained teacher), leaving only the metrics and
    bookkeeping files.
    Never call it on a preempted or failed run: its checkpoints are what it resumes from.
    """
    check_retention(keep_checkpoints, keep_final)
    root = Path(run_dir)
    removed: list[Path] = []
    if keep_checkpoints != "all":
        keep = latest_complete_checkpoint(root) if keep_checkpoints == "last" else None
        doomed = sorted((p for p in root.iterdir() if _CHECKPOINT.match(p.name) and p != keep),
                        key=lambda p: int(p.name[11:]))
        for path in doomed:
            _remove(path)
        removed += doomed
        if (root / STAGING_DIR).exists():
            shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
            removed.append(root / STAGING_DIR)
    for final in ("final", "final_teacher") if not keep_final else ():  # final_teacher: a co-trained teacher
        if (root / final).exists():
            shutil.rmtree(root / final, ignore_errors=True)
            removed.append(root / final)
    if removed:
        log.info("keep_checkpoints=%s keep_final=%s: removed %s from %s", keep_checkpoints, keep_final,
                 ", ".join(p.name for p in removed), root)
    return removed
