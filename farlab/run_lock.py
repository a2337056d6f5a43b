"""One live process per run dir: a non-blocking lock held for the whole run.

Re-running a sweep skips completed runs and resumes interrupted ones, so two processes started on the same job
(a double submission, two queues sharing a sweep dir) would otherwise both train into one run dir and overwrite
each other's checkpoints and metrics. The second one now stops at once with :class:`~farlab.errors.RunDirBusy`.

The kernel drops an ``flock`` when its holder dies, so a killed, preempted or requeued run never leaves a lock
that blocks its own resume. The lock file is removed on release (run dirs stay as docs/run_dir.md lists them);
a process that opened the file just before its removal sees that the path now names another file and retries.
fcntl's lock is used directly: the filelock package's soft fallback would let two processes in on a file
system without flock, where this module warns and runs unlocked instead.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from farlab.errors import RunDirBusy

log = logging.getLogger(__name__)

LOCK_NAME = ".farlab-run.lock"
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # e.g. Lustre mounted without -o flock
# A busy lock is tried again for this long before the run gives up: lock_holder's probe (a sweep's dry run) holds
# it for microseconds, and must not make a job that starts at that moment fail.
_BUSY_RETRY_S, _BUSY_TRIES = 0.05, 10


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; raise :class:`RunDirBusy` naming the holder when another has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    handle = _acquire(path, run_dir)
    try:
        yield
    finally:
        if handle is not None:
            path.unlink(missing_ok=True)  # still held here: nobody can lock the removed file in between
            handle.close()  # releases the lock


def _acquire(path: Path, run_dir: Path) -> IO[str] | None:
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime, closed by run_dir_lock
        try:
            _lock(handle)
        except BlockingIOError:
            handle.close()
            raise RunDirBusy(
                f"run dir {run_dir} is in use by another live process ({_holder(path)}); this process wrote none "
                "of the run's files. Two processes training one run dir would overwrite each other's checkpoints: "
                "wait for that run to end (a re-run then skips or resumes it) or stop it first."
            ) from None
        except OSError as err:
            handle.close()
            if err.errno not in _NO_LOCKS:
                raise
            log.warning("the file system of %s has no flock (%s): running without the run-dir lock", run_dir, err)
            return None
        if _still_names(path, handle):
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
            )
            handle.flush()
            return handle
        handle.close()  # its holder removed this file as it finished: lock the one at the path now


def _lock(handle: IO[str]) -> None:
    for _ in range(_BUSY_TRIES - 1):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(_BUSY_RETRY_S)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock now (``pid .. on <host> since ..``), or None. Creates and removes nothing."""
    path = run_dir / LOCK_NAME
    try:
        handle = open(path)  # noqa: SIM115 - closed below; read-only, so a missing file stays missing
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        except OSError:
            return None  # no flock on this file system: nobody can hold it
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _still_names(path: Path, handle: IO[str]) -> bool:
    try:
        named, held = os.stat(path), os.fstat(handle.fileno())
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"
