"""Build (or find) the teacher generations a ``task.targets=teacher`` run with the same overrides would use.

    python -m farlab.teachers.generate task=europarl_en_fr model=tiny_llama teacher_strategy=frozen_base
    python -m farlab.teachers.generate task=europarl_en_fr model=llama_3b_1b generate.mode=sample generate.n=4 \\
        teacher=openai teacher.openai.base_url=http://gpu-node:8000/v1

Arguments are the Hydra overrides of ``python -m farlab.train`` plus ``generate.*``; the dataset key is computed
from them exactly as the run computes it, so the run later finds the entry. ``--force`` rebuilds an existing entry.
See docs/distillation_setups.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.models.loading import load_tokenizer
from farlab.teachers.generations import GenerationRun
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher
from farlab.trainer.sft import sft_fine_tuner
from farlab.validate import validate_config

USAGE = "usage: python -m farlab.teachers.generate [--force] [OVERRIDE ...]   (python -m farlab.train's overrides)"


def main(argv: list[str] | None = None) -> Path | None:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(f"{USAGE}\n\n{__doc__}")
        return None
    force = "--force" in args
    overrides = [a for a in args if a != "--force"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "generate.build=true"])
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.processor)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)  # the gold task: its prompts are what the teacher sees
    ctx = TeacherContext(TeacherSettings.from_run_config(cfg), None, data, tokenizer, cfg.model.attn_implementation,
                         plan, fine_tune=sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed))
    generations = GenerationRun(ctx, cfg.generate, prepare_teacher).open_or_build(force=force)
    print(f"teacher generations: {generations.path} ({len(generations.rows)} rows, "
          f"{generations.meta['key']['decoding']})")
    return generations.path


if __name__ == "__main__":
    main()
