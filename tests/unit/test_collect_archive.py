"""``python -m farlab.collect --archive``: a real tiny sweep archived without weights regenerates the same tables,
byte for byte, and the archive appears atomically (complete or not at all)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import farlab.collect.archive as archive_mod
from farlab import collect
from farlab.collect.runs import CollectError
from tests.unit.collect_sweep import copy_sweep, job_name, real_sweep

__all__ = ["real_sweep"]  # the session fixture, imported so pytest finds it here

REPO = Path(__file__).resolve().parents[2]
EXTRA_LOG_LINES = 120


@pytest.fixture(scope="module")
def sweep(real_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sweep plus a failed job (kept in the archive: its skip reason is part of the tables) and a long log."""
    root = copy_sweep(real_sweep, tmp_path_factory.mktemp("archive") / "sweep")
    failed = root / "failed_job"
    (failed / ".hydra").mkdir(parents=True)
    src = root / job_name("combined_f", "frozen_base", 1)
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        (failed / name).write_bytes((src / name).read_bytes())
    meta = (src / "run_metadata.json").read_text().replace('"status": "completed"', '"status": "failed"')
    (failed / "run_metadata.json").write_text(meta.replace('"error": null', '"error": "RuntimeError: boom"'))
    with open(src / "output.log", "a", encoding="utf-8") as f:
        f.writelines(f"extra log line {i}\n" for i in range(EXTRA_LOG_LINES))
    return root


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_archive_regenerates_the_tables_byte_for_byte(sweep: Path, tmp_path: Path) -> None:
    original = collect.collect([str(sweep)])
    dest = tmp_path / "archives" / "far_tiny"
    res = collect.archive_sweep(sweep, dest)
    assert res.dest == dest.resolve() and res.jobs == 9
    files = all_files(dest)
    # only what the tables need: no checkpoints, no final/ weights, no collector outputs
    assert not [f for f in files if "checkpoint-" in f or f.startswith("final") or "/final/" in f
                or f.endswith((".safetensors", ".bin", ".pt"))]
    job = job_name("combined_f", "frozen_base", 1)
    assert {f"{job}/{n}" for n in ("config.yaml", "metrics.json", "run_metadata.json", "output.log",
                                   ".hydra/config.yaml", ".hydra/overrides.yaml")} <= files
    assert "multirun.yaml" in files and "results.md" not in files
    assert "failed_job/run_metadata.json" in files
    # the log is its last 50 lines
    tail = (dest / job / "output.log").read_text().splitlines()
    assert tail == (sweep / job / "output.log").read_text().splitlines()[-archive_mod.LOG_TAIL_LINES:]
    assert tail[-1] == f"extra log line {EXTRA_LOG_LINES - 1}"
    for name in ("metrics.json", "config.yaml", "run_metadata.json"):
        assert (dest / job / name).read_bytes() == (sweep / job / name).read_bytes()
    regenerated = collect.collect([str(dest)])
    assert [f.relative_to(dest) for f in regenerated.files] == [f.relative_to(sweep) for f in original.files]
    for a, b in zip(original.files, regenerated.files):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between the sweep and its archive"
    assert "failed_job" in (dest / "skipped.csv").read_text()


def test_archive_refuses_bad_destinations(sweep: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(CollectError, match="already exists"):
        collect.archive_sweep(sweep, tmp_path / "taken")
    with pytest.raises(CollectError, match="inside the sweep"):
        collect.archive_sweep(sweep, sweep / "archive")
    with pytest.raises(CollectError, match="no such sweep directory"):
        collect.archive_sweep(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectError, match="no job dir"):
        collect.archive_sweep(tmp_path / "empty", tmp_path / "out")


def test_archive_is_atomic(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure half-way leaves neither the destination nor a temporary dir behind."""
    calls = {"n": 0}
    real_copy = archive_mod._copy

    def failing_copy(src: Path, dest: Path) -> int:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real_copy(src, dest)

    monkeypatch.setattr(archive_mod, "_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        collect.archive_sweep(sweep, tmp_path / "dest")
    assert calls["n"] == 5 and list(tmp_path.iterdir()) == []


def run_archive(sweep: Path, dest: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "farlab.collect", "--archive", str(sweep), str(dest)], check=False,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_archive_cli(sweep: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a"
    res = run_archive(sweep, dest)
    assert res.returncode == 0, res.stderr
    assert "archived 9 job dirs" in res.stdout and f"python -m farlab.collect {dest}" in res.stdout
    assert (dest / "multirun.yaml").is_file()
    res = run_archive(sweep, dest)
    assert res.returncode == 2 and "already exists" in res.stderr
