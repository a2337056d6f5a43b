"""The run-dir lock against real processes: a live holder blocks, a finished or killed one does not."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from farlab import run_lock
from farlab.errors import RunDirBusy
from farlab.run_lock import LOCK_NAME, lock_holder, run_dir_lock

_HOLD = """
import sys
from pathlib import Path
from farlab.run_lock import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()  # hold until the test says go
"""


@contextmanager
def held_by_another_process(run_dir: Path) -> Iterator[subprocess.Popen]:
    """A second Python process holding ``run_dir``'s lock for the block; it releases it when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"  # blocks until the lock is taken, however slow the machine
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)


def test_a_live_holder_blocks_and_is_named(tmp_path):
    with held_by_another_process(tmp_path / "run") as holder:
        busy = rf"run dir {tmp_path / 'run'} is in use .*pid {holder.pid} on "
        with pytest.raises(RunDirBusy, match=busy), run_dir_lock(tmp_path / "run"):
            pytest.fail("entered a run dir another process holds")
        assert (tmp_path / "run" / LOCK_NAME).is_file()  # the refused process removed nothing
        assert lock_holder(tmp_path / "run").startswith(f"pid {holder.pid} on ")
    assert holder.returncode == 0 and lock_holder(tmp_path / "run") is None
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released and tidied: the run dir is as the run left it
    with run_dir_lock(tmp_path / "run"):
        pass


def test_a_killed_holder_leaves_no_lock_that_blocks_its_resume(tmp_path):
    with held_by_another_process(tmp_path / "run") as holder:
        holder.send_signal(signal.SIGKILL)  # OOM killer, node failure: no cleanup runs
        holder.wait(timeout=60)
    assert (tmp_path / "run" / LOCK_NAME).is_file()  # the file stays; the kernel dropped the lock with the process
    assert lock_holder(tmp_path / "run") is None
    with run_dir_lock(tmp_path / "run"):
        assert str(os.getpid()) in (tmp_path / "run" / LOCK_NAME).read_text()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_the_probe_creates_nothing_and_does_not_fail_a_run_starting_meanwhile(tmp_path, monkeypatch):
    assert lock_holder(tmp_path) is None and list(tmp_path.iterdir()) == []  # read-only: no lock file made
    (tmp_path / LOCK_NAME).write_text("pid 1 on elsewhere since then\n")  # a killed run's leftover
    probe = open(tmp_path / LOCK_NAME)  # noqa: SIM115 - closed below; lock_holder's shared lock
    fcntl.flock(probe, fcntl.LOCK_SH)
    waits = []

    def probe_ends_during_the_wait(seconds: float) -> None:  # no timing race: the probe ends in the first wait
        waits.append(seconds)
        probe.close()

    monkeypatch.setattr(run_lock.time, "sleep", probe_ends_during_the_wait)
    with run_dir_lock(tmp_path):  # tries again after a moment instead of failing as busy
        assert lock_holder(tmp_path).startswith(f"pid {os.getpid()} on ")
    assert len(waits) == 1


def test_one_process_cannot_hold_it_twice(tmp_path):
    with run_dir_lock(tmp_path), pytest.raises(RunDirBusy), run_dir_lock(tmp_path):  # two runs in one process
        pytest.fail("entered a run dir this process holds")


def test_a_file_removed_while_waiting_to_lock_it_is_not_trusted(tmp_path, monkeypatch):
    """The holder removes the file as it releases it; whoever opened that file just before must lock the new one,
    or it and a third process would both hold "the" lock."""
    path, calls = tmp_path / LOCK_NAME, []
    real_flock = fcntl.flock

    def flock_after_release(handle, op):
        calls.append(os.fstat(handle.fileno()).st_ino)
        if len(calls) == 1:
            path.unlink()  # the previous holder finishes between our open() and our flock()
        real_flock(handle, op)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock_after_release)
    with run_dir_lock(tmp_path):
        assert path.is_file() and os.stat(path).st_ino == calls[-1]  # holds the file the path names now
    assert len(calls) == 2


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_flock(handle, op):
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre mounted without -o flock

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    with run_dir_lock(tmp_path):
        pass
    assert "has no flock" in caplog.text and "running without the run-dir lock" in caplog.text
