"""Tiny CoLA runs with a transfer set: the in-process teacher and the cache give the same losses over the
labelled + transfer rows, the SFT teacher is the plain run's, and a cache built without the transfer rows is
refused naming the fields that differ."""

from __future__ import annotations

import pytest

from farlab.errors import ConfigError
from farlab.teachers.cache import CacheError
from farlab.train import execute
from tests.conftest import tiny_overrides

TRANSFER = {"task.transfer.source": "rest", "task.transfer.ratio": 0.5, "teacher.top_k": 2}


def _run(compose_cfg, tmp_path, name, **extra):
    ovr = tiny_overrides(tmp_path / "store", **{"task.train_limit": 32, "task.eval_limit": 16, **extra})
    return execute(compose_cfg(ovr), tmp_path / name, ovr)


def test_transfer_rows_train_through_hf_and_cache_alike(compose_cfg, tmp_path):
    one_cache = {"teacher": "cache", "teacher.cache.path": str(tmp_path / "one_cache"), "teacher.top_k": 2}
    plain = _run(compose_cfg, tmp_path, "plain", **one_cache)  # its cache holds the 32 labelled rows
    hf = _run(compose_cfg, tmp_path, "hf", **TRANSFER)
    assert len([p for p in (tmp_path / "store").iterdir() if p.is_dir()]) == 1  # one SFT teacher for both runs
    assert hf["pre"]["teacher"] == plain["pre"]["teacher"]
    cache = {"teacher": "cache", "teacher.cache.dir": str(tmp_path / "cache"), "teacher.cache.dtype": "float32"}
    cached = _run(compose_cfg, tmp_path, "cache", **TRANSFER, **cache)  # builds a cache over all 64 rows
    for key, value in hf["loss_components"].items():
        assert cached["loss_components"][key] == pytest.approx(value, abs=1e-5), key
    assert hf["loss_components"]["response/raw"] > 0 and hf["loss_components"] != plain["loss_components"]
    with pytest.raises(CacheError, match=r"data.n_examples: cache has 32, this run needs 64"):
        _run(compose_cfg, tmp_path, "refused", **{**TRANSFER, **one_cache})


def test_a_server_teacher_is_refused_for_a_classification_transfer_set(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="serves decoder-only teachers"):
        _run(compose_cfg, tmp_path, "openai", **TRANSFER, teacher="openai", teacher_strategy="frozen_base")
