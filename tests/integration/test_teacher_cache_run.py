"""Runs with teacher=cache: the first builds the cache, later ones never load the teacher, and all of
them train exactly like the in-process teacher at the same k."""

from __future__ import annotations

import subprocess
import sys

import pytest

from farlab.config import REPO_ROOT
from farlab.train import execute
from tests.conftest import tiny_overrides


def _overrides(store, cache_dir, **extra):
    base = {
        "task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base",
        "task.train_limit": 32, "task.eval_limit": 4, "task.generation.max_new_tokens": 4, "task.max_length": 64,
        "teacher.top_k": 8, "train.max_steps": 2, "train.save_steps": 2,
    }
    base.update(extra)
    if base.get("teacher") == "cache":  # the cache's settings exist only when teacher=cache selects them
        base.update({"teacher.cache.dir": str(cache_dir), "teacher.cache.dtype": "float32"})
    return tiny_overrides(store, **base)


def test_cache_runs_match_the_in_process_teacher_and_reuse_skips_it(compose_cfg, tmp_path, store_dir, monkeypatch):
    cache_dir = tmp_path / "cache"
    reference = _overrides(store_dir, cache_dir)
    want = execute(compose_cfg(reference), tmp_path / "hf", reference)

    cached = _overrides(store_dir, cache_dir, **{"teacher": "cache"})
    built = execute(compose_cfg(cached), tmp_path / "build", cached)
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "COMPLETE").is_file()

    monkeypatch.setattr("farlab.train.prepare_teacher", lambda ctx: pytest.fail("the teacher must not load"))
    reuse = _overrides(store_dir, cache_dir, **{"teacher": "cache", "teacher.cache.build": False})
    reused = execute(compose_cfg(reuse), tmp_path / "reuse", reuse)

    for got in (built, reused):
        assert got["loss_components"].keys() == want["loss_components"].keys()
        for key, value in want["loss_components"].items():
            assert got["loss_components"][key] == pytest.approx(value, abs=1e-6), key
        assert got["pre"] == want["pre"]  # teacher metrics recorded by the build, reported without the teacher
        assert got["train"]["teacher_forwards_per_step"] == 0.0
    assert want["train"]["teacher_forwards_per_step"] == 1.0
    assert built["post"] == reused["post"]


@pytest.mark.slow
def test_the_cache_cli_builds_what_train_then_uses(compose_cfg, tmp_path, store_dir):
    overrides = _overrides(store_dir, tmp_path / "cache", **{"teacher": "cache"})
    proc = subprocess.run([sys.executable, "-m", "farlab.teachers.cache", *overrides], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher cache:" in proc.stdout and "k=8" in proc.stdout
    built = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / "COMPLETE").is_file()
    run = overrides + ["teacher.cache.build=false"]
    metrics = execute(compose_cfg(run), tmp_path / "run", run)
    assert metrics["train"]["teacher_forwards_per_step"] == 0.0
