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

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
STAGING_DIR = ".staging"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_tree(path: Path) -> None:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(path)


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint into place and mark it complete."""
    _fsync_tree(staged)
    if final.exists():  # re-saving the same step after a resume
        shutil.rmtree(final)
    os.replace(staged, final)
    marker = final / COMPLETE_MARKER
    with open(marker, "w") as handle:
        handle.write("ok\n")
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(final.parent)  # persist the rename itself


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
