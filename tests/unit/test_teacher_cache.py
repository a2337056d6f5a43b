"""The teacher cache on real files: build, memory-mapped read equal to the live teacher, key checks, atomicity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, set_seed

from farlab.data import build_task_data
from farlab.models.loading import Head, build_model, load_tokenizer
from farlab.teachers.backends.cache import CacheBackend
from farlab.teachers.backends.hf import HFBackend
from farlab.teachers.cache import (
    CacheError,
    CacheKeyError,
    TeacherCache,
    cache_key,
    entry_path,
    open_or_build,
    write_cache,
)
from farlab.teachers.strategies import TeacherSettings
from tests.conftest import tiny_overrides

teacher_settings = TeacherSettings.from_run_config

K = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from farlab.config import REPO_ROOT, register_configs

    register_configs()
    root = tmp_path_factory.mktemp("cache")
    overrides = tiny_overrides(root / "store", task="europarl_en_fr", model="tiny_llama",
                               teacher_strategy="frozen_base",
                               **{"task.train_limit": 20, "task.eval_limit": 4, "task.max_length": 64,
                                  "teacher": "cache", "teacher.top_k": K, "teacher.cache.dir": str(root),
                                  "teacher.cache.dtype": "float32"})
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    set_seed(cfg.seed)
    teacher = build_model(cfg.model.teacher, Head(AutoModelForCausalLM), None).eval()
    return cfg, data, teacher


def _batches(data, size=6):
    return list(DataLoader(data.train, batch_size=size, shuffle=True, collate_fn=data.collator,
                           generator=torch.Generator().manual_seed(0)))


def test_built_cache_reads_back_the_live_teachers_topk_and_hidden_states(setup, tmp_path):
    cfg, data, teacher = setup
    key = cache_key(teacher_settings(cfg), data, K, hidden_layers=[2, 4])
    cache = open_or_build(tmp_path / "entry", key, lambda out: write_cache(teacher, data, out, key, batch_size=7))
    assert (tmp_path / "entry" / "COMPLETE").is_file() and isinstance(cache.ids, np.memmap)
    assert cache.meta["vocab_size"] == 1024 and cache.ids.dtype == np.uint16  # 1024 ids fit 16 bits
    live, cached = HFBackend(teacher, top_k=K), CacheBackend(cache, num_layers=4)
    for batch in _batches(data):  # shuffled batches: rows are found by example_id, not by order
        want = live(batch, hidden_states=True, attentions=False, grad=False, detach=True).view
        got = cached(batch, hidden_states=True, attentions=False, grad=False, detach=True)
        assert got.forwards == 0
        rows = batch["labels"][:, 1:] != -100  # response positions: prediction of a target token
        rows = torch.cat([rows, torch.zeros_like(rows[:, :1])], 1)
        assert torch.equal(got.view.topk.ids[rows], want.topk.ids[rows])
        torch.testing.assert_close(got.view.topk.logprobs[rows], want.topk.logprobs[rows], rtol=0, atol=1e-6)
        tokens = batch["labels"] != -100
        for layer in (2, 4):
            torch.testing.assert_close(got.view.hidden_states[layer][tokens], want.hidden_states[layer][tokens])
        assert got.view.hidden_states[1] is None  # unmapped layers are not stored


def test_a_cache_built_for_another_key_is_refused_naming_the_fields(setup, tmp_path):
    cfg, data, teacher = setup
    key = cache_key(teacher_settings(cfg), data, K, hidden_layers=[])
    open_or_build(tmp_path / "entry", key, lambda out: write_cache(teacher, data, out, key))
    other = copy.deepcopy(key)
    other["top_k"], other["data"]["fingerprint"] = 4, "0" * 32
    with pytest.raises(CacheKeyError) as err:
        open_or_build(tmp_path / "entry", other, lambda out: pytest.fail("must not rebuild over another key"))
    assert "top_k: cache has 8, this run needs 4" in str(err.value)
    assert "data.fingerprint" in str(err.value) and "teacher.cache.path" in str(err.value)
    # Different training data really changes the key: the fingerprint covers the token ids.
    assert cache_key(teacher_settings(cfg), data, K, [])["data"] == key["data"]
    assert cache_key(teacher_settings(cfg), type(data)(**{**data.__dict__, "train": data.train.select(range(10))}), K, [])["data"] \
        != key["data"]


def test_an_interrupted_build_is_never_taken_as_complete(setup, tmp_path):
    cfg, data, teacher = setup
    key = cache_key(teacher_settings(cfg), data, K, hidden_layers=[])
    entry = tmp_path / "entry"

    def crash(i):
        if i == 1:
            raise KeyboardInterrupt("killed mid-build")

    with pytest.raises(KeyboardInterrupt):
        open_or_build(entry, key, lambda out: write_cache(teacher, data, out, key, batch_size=4, on_batch=crash))
    assert not entry.exists() and not list(tmp_path.glob(".entry.staging-*"))
    with pytest.raises(CacheError, match="no complete teacher cache"):
        open_or_build(entry, key, None)

    # A process killed after the rename but before the COMPLETE marker: the files are all there, unmarked.
    write_cache(teacher, data, entry, key)
    with pytest.raises(CacheError, match="not a complete teacher cache"):
        TeacherCache(entry, key)
    cache = open_or_build(entry, key, lambda out: write_cache(teacher, data, out, key))  # rebuilt, then marked
    assert (entry / "COMPLETE").is_file() and cache.meta["rows"] > 0
    assert json.loads((entry / "meta.json").read_text())["key"] == key


def test_entry_names_follow_the_key(setup):
    cfg, data, _ = setup
    a, b = cache_key(teacher_settings(cfg), data, K, []), cache_key(teacher_settings(cfg), data, 2 * K, [])
    assert entry_path(teacher_settings(cfg), a) != entry_path(teacher_settings(cfg), b)
    assert entry_path(teacher_settings(cfg), a).name.startswith("europarl_en_fr-tiny-llama-4l-")
