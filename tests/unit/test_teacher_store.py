"""The SFT-teacher store under real concurrency: two processes, one training; a lock left by a killed trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from farlab.config import REPO_ROOT
from farlab.teachers.store import TeacherStore

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from farlab.teachers.store import TeacherStore

    root, log, hold = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def train(out):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        Path(str(log) + f".started-{os.getpid()}").touch()
        time.sleep(hold)  # long enough for the other process to reach the lock
        (out / "model.bin").write_text(str(os.getpid()))

    path, reused = TeacherStore(root).get_or_train("cola-tiny-seed1", {"seed": 1}, train)
    print(json.dumps({"path": str(path), "reused": reused, "pid": os.getpid()}))
    """
)


def _spawn(tmp_path: Path, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "store"), str(tmp_path / "trainings.log"), str(hold)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_processes_need_one_teacher_and_exactly_one_trains_it(tmp_path):
    first = _spawn(tmp_path, hold=1.5)
    _wait_for(lambda: any(tmp_path.glob("trainings.log.started-*")))  # the first one holds the lock now
    second = _spawn(tmp_path, hold=1.5)
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert len((tmp_path / "trainings.log").read_text().split()) == 1  # exactly one training
    assert outs[0]["path"] == outs[1]["path"] and sorted(o["reused"] for o in outs) == [False, True]
    entry = Path(outs[0]["path"])
    assert (entry / "COMPLETE").is_file() and (entry / "model.bin").read_text() == str(first.pid)


def test_a_lock_left_by_a_killed_trainer_is_recovered(tmp_path):
    victim = _spawn(tmp_path, hold=120)
    _wait_for(lambda: any(tmp_path.glob("trainings.log.started-*")))
    os.kill(victim.pid, signal.SIGKILL)  # dies holding the lock, mid-training
    victim.wait(timeout=30)
    store = TeacherStore(tmp_path / "store")
    locks = list((tmp_path / "store").glob("*.lock"))
    assert locks, "the killed trainer leaves its lock file behind"
    assert not any((tmp_path / "store").glob("*/COMPLETE"))  # and no complete entry
    assert list((tmp_path / "store").glob(".*.staging-*"))  # only a half-written staging dir

    start = time.monotonic()
    path, reused = store.get_or_train("cola-tiny-seed1", {"seed": 1}, lambda out: (out / "model.bin").write_text("b"))
    assert time.monotonic() - start < 10  # the kernel released the dead holder's lock: no waiting on it
    assert not reused and (path / "COMPLETE").is_file() and (path / "model.bin").read_text() == "b"
    assert not list((tmp_path / "store").glob(".*.staging-*"))  # the dead trainer's leftovers are gone
    assert store.get_or_train("cola-tiny-seed1", {"seed": 1}, lambda out: None) == (path, True)


def test_store_key_ignores_later_spec_defaults_and_the_checkout_path(compose_cfg, tmp_path):
    """An SFT teacher's key must not move when the schema grows fields a teacher does not use at their defaults
    (dtype, width, importance_examples), nor when the same data is reached through another checkout."""
    from farlab.teachers.store import store_key
    from farlab.teachers.strategies import TeacherSettings, sft_store_material

    data = tmp_path / "shared" / "data" / "cola"
    data.mkdir(parents=True)
    (tmp_path / "repo_a").mkdir()

    def material(*extra: str) -> dict:
        cfg = compose_cfg(["task=cola", "model=minilm", *extra])
        return sft_store_material(TeacherSettings.from_run_config(cfg))

    plain = material(f"task.data_dir={data}")
    assert not {"dtype", "width", "importance_examples"} & set(plain["teacher"])
    assert plain["task"]["data_dir"] == os.path.realpath(data)
    via_checkout = material(f"task.data_dir={tmp_path / 'repo_a' / '..' / 'shared' / 'data' / 'cola'}")
    assert store_key(via_checkout) == store_key(plain)
    # a setting that changes the teacher still changes the key
    assert store_key(material(f"task.data_dir={data}", "model.teacher.dtype=bfloat16")) != store_key(plain)
