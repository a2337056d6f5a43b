"""Teacher generations for sequence-level KD: prompts, the keyed write-once dataset, retargeted training rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import build_task_data
from farlab.errors import ConfigError
from farlab.losses.plan import LossPlan
from farlab.teachers import generations
from farlab.teachers.generations import (
    GenerationRun,
    Generations,
    GenerationsKeyError,
    cut_at_stop,
    generate_problems,
    teacher_targets,
    training_prompts,
)
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher, sft_store_material
from farlab.validate import validate_config
from tests.conftest import tiny_overrides

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")


def _cfg(compose_cfg, tmp_path: Path, **extra):
    base = {"task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base",
            "task.train_limit": 6, "task.eval_limit": 2, "task.generation.max_new_tokens": 5,
            "generate.dir": str(tmp_path / "gen")}
    return compose_cfg(tiny_overrides(tmp_path / "store", **{**base, **extra}))


def _run(cfg) -> GenerationRun:
    data = build_task_data(cfg.task, TOKENIZER, cfg.seed)
    ctx = TeacherContext(TeacherSettings.from_run_config(cfg), None, data, TOKENIZER, None,
                         LossPlan.from_config(cfg.loss))
    return GenerationRun(ctx, cfg.generate, prepare_teacher)


def test_training_prompts_are_the_label_masked_prefix(compose_cfg, tmp_path):
    data = _run(_cfg(compose_cfg, tmp_path)).ctx.data
    for prompt, row in zip(training_prompts(data), data.train):
        n = len(prompt)
        assert row["labels"][:n] == [-100] * n and row["labels"][n] != -100
        assert TOKENIZER.decode(prompt, skip_special_tokens=True).endswith("French:")


def test_cut_at_stop():
    assert cut_at_stop(" Bonjour.\nEnglish: x", ["\n"]) == "Bonjour."
    assert cut_at_stop(" a b ", []) == "a b"
    assert cut_at_stop("x###y\nz", ["\n", "###"]) == "x"


def test_build_once_then_a_wrong_key_is_refused_naming_the_fields(compose_cfg, tmp_path):
    path = tmp_path / "explicit"
    greedy = _run(_cfg(compose_cfg, tmp_path, **{"generate.path": str(path)})).open_or_build()
    assert (path / "COMPLETE").is_file() and len(greedy.rows) == 6
    assert greedy.meta["key"]["decoding"] == {"mode": "greedy", "n": 1, "max_new_tokens": 5, "stop": ["\n"]}
    sampled = _run(_cfg(compose_cfg, tmp_path, **{"generate.path": str(path), "generate.mode": "sample",
                                                  "generate.n": 2}))
    with pytest.raises(GenerationsKeyError) as err:
        sampled.open_or_build()
    message = str(err.value)
    assert "decoding.mode: dataset has 'greedy', this run needs 'sample'" in message
    assert "decoding.n: dataset has 1, this run needs 2" in message and "decoding.seed" in message
    other_task = _run(_cfg(compose_cfg, tmp_path, **{"generate.path": str(path), "task.train_limit": 5}))
    with pytest.raises(GenerationsKeyError, match=r"prompts.n_examples: dataset has 6, this run needs 5"):
        other_task.open_or_build()


def test_an_interrupted_build_leaves_no_dataset_and_the_next_build_completes(compose_cfg, tmp_path, monkeypatch):
    run = _run(_cfg(compose_cfg, tmp_path))
    entry = run.entry(run.key())

    def dies(*args, **kwargs):
        (Path(next(entry.parent.glob(f".{entry.name}.staging-*"))) / "generations.jsonl").write_text('{"half"')
        raise KeyboardInterrupt  # e.g. Ctrl-C or a SLURM kill in the middle of generating

    with monkeypatch.context() as patch:
        patch.setattr(generations, "generate_local", dies)
        with pytest.raises(KeyboardInterrupt):
            run.open_or_build()
    assert not entry.exists() and not list(entry.parent.glob(f".{entry.name}.staging-*"))
    done = run.open_or_build()
    assert (entry / "COMPLETE").is_file() and len(done.rows) == 6


def test_generate_build_false_refuses_a_missing_dataset_with_the_command(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"python -m farlab.teachers.generate"):
        _run(_cfg(compose_cfg, tmp_path, **{"generate.build": "false"})).open_or_build()


def test_sampling_n_per_prompt_is_seeded_and_gives_one_training_row_per_generation(compose_cfg, tmp_path):
    extra = {"generate.mode": "sample", "generate.n": 3, "generate.temperature": 1.5, "task.targets": "teacher"}
    cfg = _cfg(compose_cfg, tmp_path, **extra)
    run = _run(cfg)
    first = run.open_or_build()
    again = _run(_cfg(compose_cfg, tmp_path / "again", **extra)).open_or_build()
    other = _run(_cfg(compose_cfg, tmp_path / "other", **extra, **{"generate.seed": 7})).open_or_build()
    assert first.rows == again.rows and first.rows != other.rows
    assert [(r["example_id"], r["sample"]) for r in first.rows] == [(e, j) for e in range(6) for j in range(3)]
    assert len({r["text"] for r in first.rows}) > 6  # sampled, not 3 copies of one text

    data = teacher_targets(cfg.generate, run.ctx, prepare_teacher)
    assert len(data.train) == 18 and data.train["example_id"] == list(range(18))
    assert data.sft_train is run.ctx.data.train and data.gold_only().train is run.ctx.data.train
    prompts = training_prompts(run.ctx.data)
    for i, row in enumerate(data.train):
        e, text = first.targets()[i]
        n = len(prompts[e])
        assert row["input_ids"][:n] == prompts[e] and row["labels"][:n] == [-100] * n
        target = row["labels"][n:]
        assert target[-1] == TOKENIZER.eos_token_id
        assert target[:-1] == TOKENIZER(" " + text, add_special_tokens=False)["input_ids"]


def test_gold_targets_leave_the_task_untouched(compose_cfg, tmp_path):
    cfg = _cfg(compose_cfg, tmp_path)
    run = _run(cfg)
    assert teacher_targets(cfg.generate, run.ctx, prepare_teacher) is run.ctx.data
    assert not (tmp_path / "gen").exists()


def test_generations_without_their_marker_are_never_read(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "meta.json").write_text(json.dumps({"key": {}}))
    with pytest.raises(ConfigError, match="not a complete"):
        Generations(tmp_path / "g")


def test_config_problems(compose_cfg, tmp_path):
    cfg = _cfg(compose_cfg, tmp_path, **{"generate.n": 2, "generate.top_p": 0, "task.targets": "teacher"})
    problems = generate_problems(cfg.generate, cfg.task, "selff")
    assert any("generate.n=2 with generate.mode=greedy" in p for p in problems)
    assert any("generate.top_p=0" in p for p in problems)
    assert any("unknown teacher.backend (to generate task.targets=teacher) 'selff'" in p for p in problems)
    with pytest.raises(ConfigError, match="generate.n=2"):
        validate_config(cfg)
    with pytest.raises(Exception, match=r"task.targets='silver'; valid: gold, teacher"):
        validate_config(_cfg(compose_cfg, tmp_path, **{"task.targets": "silver"}))


def test_the_sft_teacher_key_ignores_targets_and_transfer(compose_cfg, tmp_path):
    plain = TeacherSettings.from_run_config(_cfg(compose_cfg, tmp_path))
    seqkd = TeacherSettings.from_run_config(_cfg(compose_cfg, tmp_path, **{"task.targets": "teacher"}))
    assert sft_store_material(plain) == sft_store_material(seqkd)


def test_the_cache_cli_caches_the_generated_rows(tmp_path):
    from farlab.cli.cache import main as cache_main
    from farlab.teachers.cache import TeacherCache

    overrides = tiny_overrides(tmp_path / "store", **{
        "task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base", "task.train_limit": 4,
        "task.generation.max_new_tokens": 4, "generate.dir": str(tmp_path / "gen"), "task.targets": "teacher",
        "generate.mode": "sample", "generate.n": 2, "teacher": "cache", "teacher.cache.dir": str(tmp_path / "cache"), "teacher.top_k": 4})
    cache = TeacherCache(cache_main(overrides))
    assert cache.meta["n_examples"] == 8  # 4 prompts x 2 generations, not the 4 gold rows
