"""Build (or find) the teacher cache a training run with the same overrides would use.

    python -m farlab.teachers.cache task=europarl_en_fr model=llama_3b_1b teacher=cache teacher.top_k=20
    python -m farlab.teachers.cache task=cola teacher=cache teacher.cache.hidden_states=true loss=combined_fr

Arguments are the Hydra overrides of ``python -m farlab.train``; the cache key is computed from them exactly as
the run computes it, so the run later finds the entry and never loads the teacher. See docs/teachers.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.models.loading import load_tokenizer
from farlab.teachers.backends.cache import prepare_cache
from farlab.teachers.generations import teacher_targets
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher
from farlab.trainer.sft import sft_fine_tuner
from farlab.validate import validate_config

USAGE = "usage: python -m farlab.teachers.cache [OVERRIDE ...]   (the overrides of python -m farlab.train)"


def main(argv: list[str] | None = None) -> Path | None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(overrides):
        print(f"{USAGE}\n\n{__doc__}")
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "teacher.backend=cache"])
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.processor, cfg.model.pad_token)
    data = build_task_data(cfg.task, tokenizer, cfg.seed, cfg.get("distill"))  # + teacher prompts
    settings = TeacherSettings.from_run_config(cfg)
    fine_tune = sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed)
    gold = TeacherContext(settings, None, data, tokenizer, cfg.model.attn_implementation, plan, fine_tune=fine_tune)
    data = teacher_targets(cfg.generate, gold, prepare_teacher)  # task.targets=teacher: cache the generated rows
    ctx = TeacherContext(settings, None, data, tokenizer, cfg.model.attn_implementation, plan, fine_tune=fine_tune)
    prepared = prepare_cache(ctx, prepare_teacher, force_build=True)
    cache = prepared.cache
    assert cache is not None  # prepare_cache always opens one
    print(f"teacher cache: {cache.path} ({cache.nbytes() / 1e6:.1f} MB, {cache.meta['rows']} rows, k={cache.k})")
    return cache.path


if __name__ == "__main__":
    main()
