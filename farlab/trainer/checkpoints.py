"""Atomic checkpoints: written to a staging dir, flushed, renamed, then marked complete.

A checkpoint without its ``COMPLETE`` marker (a job killed mid-write) is never loaded, so a resume
always starts from the newest checkpoint that was fully written.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

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
