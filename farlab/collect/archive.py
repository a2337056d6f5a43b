"""Archive a sweep without its weights: the files the collector reads, in the same relative layout.

``python -m farlab.collect --archive SWEEP DEST`` copies, per job dir, config.yaml, metrics.json,
run_metadata.json, .hydra/config.yaml and .hydra/overrides.yaml, the last LOG_TAIL_LINES lines of output.log, and
the sweep's multirun.yaml; never checkpoints, final/ or any other file. It writes into a temporary dir next to DEST
and renames it into place, so DEST is either complete or absent. ``python -m farlab.collect DEST`` then
regenerates the same tables as the original sweep, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from farlab.collect.runs import HYDRA_CONFIG, HYDRA_OVERRIDES, METADATA, METRICS, CollectError, find_job_dirs

JOB_FILES = ("config.yaml", METRICS, METADATA, HYDRA_CONFIG, HYDRA_OVERRIDES)
SWEEP_FILES = ("multirun.yaml",)
LOG = "output.log"
LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class ArchiveResult:
    dest: Path
    jobs: int
    files: int
    bytes: int


def log_tail(src: Path, dest: Path, lines: int = LOG_TAIL_LINES) -> None:
    """The last ``lines`` lines of a log, bytes unchanged (a log may hold any encoding)."""
    with open(src, "rb") as f:
        tail = deque(f, maxlen=lines)
    with open(dest, "wb") as f:
        f.writelines(tail)


def _copy(src: Path, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.name == LOG:
        log_tail(src, dest)
    else:
        shutil.copyfile(src, dest)
    return dest.stat().st_size


def archive_sweep(sweep: str | os.PathLike, dest: str | os.PathLike) -> ArchiveResult:
    """Copy what the tables need from ``sweep`` into the new dir ``dest`` (atomically); CollectError when the
    sweep has no job dir or ``dest`` exists."""
    src, out = Path(sweep).resolve(), Path(dest).resolve()
    if not src.is_dir():
        raise CollectError(f"--archive: no such sweep directory: {sweep}")
    if out.exists():
        raise CollectError(f"--archive: destination already exists: {dest} (choose a new path)")
    if out == src or src in out.parents:
        raise CollectError(f"--archive: destination {dest} is inside the sweep {sweep}; choose a path outside it")
    jobs = find_job_dirs([src])
    if not jobs:
        raise CollectError(f"--archive: no job dir (run_metadata.json or .hydra/config.yaml) under {sweep}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = size = 0
        roots = {src} | {j for j in jobs}
        for base in sorted(roots):
            names = (JOB_FILES + (LOG,)) if base in jobs else ()
            names += SWEEP_FILES if base == src else ()
            for name in names:
                if (base / name).is_file():
                    size += _copy(base / name, tmp / base.relative_to(src) / name)
                    files += 1
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ArchiveResult(out, len(jobs), files, size)
