"""Write-once folders: staged, flushed, renamed into place, then marked complete.

The SFT-teacher store, the teacher cache and checkpoints share one rule: a folder without its ``COMPLETE``
marker (a process killed mid-write) is never read. :func:`build_once` adds the lock that makes concurrent
jobs of a sweep build an entry once: one builds, the others wait and then reuse. The kernel drops an
``fcntl`` lock when its holder dies, so a crashed builder never leaves a lock others wait on forever; its
half-written staging folder is discarded by the next builder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


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
    """Move a fully written folder into place and mark it complete."""
    _fsync_tree(staged)
    if final.exists():  # re-saving the same checkpoint step after a resume
        shutil.rmtree(final)
    os.replace(staged, final)
    marker = final / COMPLETE_MARKER
    with open(marker, "w") as handle:
        handle.write("ok\n")
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(final.parent)  # persist the rename itself


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(entry: Path, build: Callable[[Path], None] | None, what: str = "entry", force: bool = False) -> bool:
    """Make sure ``entry`` is complete: build it into a staging folder under a lock when missing.

    ``build(staging)`` writes the folder's content. Returns True when the entry already existed (reused).
    ``build=None`` refuses a missing entry by raising :class:`FileNotFoundError`. ``force`` builds even when the
    entry exists and swaps the new one in; the old one stays readable until then.
    """
    if is_complete(entry) and not force:
        return True
    with entry_lock(entry):
        if is_complete(entry) and not force:  # another process built it while we waited
            log.info("%s built by another process: %s", what, entry)
            return True
        build_locked(entry, build, what, force)
    return False


def entry_lock(entry: Path) -> AbstractContextManager[None]:
    """The lock :func:`build_once` holds while it builds ``entry`` (one lock file beside it)."""
    return file_lock(entry.parent / f"{entry.name}.lock")


def build_locked(entry: Path, build: Callable[[Path], None] | None, what: str = "entry", force: bool = False) -> None:
    """Build ``entry`` into a staging folder and publish it; the caller holds :func:`entry_lock`."""
    if entry.exists() and not force:
        log.warning("ignoring incomplete %s %s (no %s marker: an interrupted build)", what, entry, COMPLETE_MARKER)
    if build is None:
        raise FileNotFoundError(entry)
    for stale in entry.parent.glob(f".{entry.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: leftovers of killed builds
    staging = entry.parent / f".{entry.name}.staging-{os.getpid()}"
    staging.mkdir(parents=True)
    log.info("building %s %s", what, entry)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, entry)
