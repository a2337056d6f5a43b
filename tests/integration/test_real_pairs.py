"""The issue-18 pairs on their real weights, when ``python -m farlab.models.materialize <name>`` has put them in
the models root (``$FARLAB_MODELS_DIR``, else ``~/.cache/farlab/models``); skipped cleanly otherwise. Each builds
the student from the teacher's blocks and runs one distillation forward with F, A and R terms across the pair."""

from __future__ import annotations

import pytest
import torch

from farlab.data import build_task_data
from farlab.models.loading import load_tokenizer
from farlab.models.materialize import models_root
from farlab.train import attention_implementation, build_setup
from farlab.validate import validate_config

pytestmark = pytest.mark.slow

TASKS = {
    "mpnet": ["task=cola", "task.train_limit=4", "task.eval_limit=4"],
    "mpnet_3": ["task=cola", "task.train_limit=4", "task.eval_limit=4"],
    "smollm2": ["task=europarl_en_fr", "task.use_chat_template=true", "task.train_limit=4", "task.eval_limit=2",
                "task.max_length=96"],
}
BLOCKS = {"mpnet": (12, 6), "mpnet_3": (12, 3), "smollm2": (30, 10)}


@pytest.mark.parametrize("pair", sorted(TASKS))
def test_real_pair_builds_and_distils_one_batch(pair, compose_cfg, tmp_path):
    folder = models_root() / pair.split("_")[0]
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is not materialised (python -m farlab.models.materialize {pair.split('_')[0]})")
    cfg = compose_cfg([f"model={pair}", "loss=combined_far", "teacher_strategy=frozen_base",
                       "train.progress_bar=false", *TASKS[pair]])
    assert cfg.model.teacher.path == str(folder)
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer, pad_token=cfg.model.pad_token)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    setup = build_setup(cfg, data, tokenizer, plan, attention_implementation(cfg.model, plan))
    teacher_depth, student_depth = BLOCKS[pair]
    assert setup.teacher.config.num_hidden_layers == teacher_depth
    assert setup.pair.student.config.num_hidden_layers == student_depth
    teacher_state = setup.teacher.state_dict()
    block = cfg.model.student.init_blocks[-1] - 1  # the student's last block is the teacher's block init_blocks[-1]
    name = next(k for k in setup.pair.student.state_dict() if f".{student_depth - 1}." in k and "weight" in k)
    assert torch.equal(setup.pair.student.state_dict()[name],
                       teacher_state[name.replace(f".{student_depth - 1}.", f".{block}.", 1)])
    batch = data.collator([data.train[i] for i in range(len(data.train))])
    with torch.no_grad():
        loss, parts = setup.pair(**batch)
    assert torch.isfinite(loss)
    assert {k.split("/")[0] for k in parts if k.endswith("/raw")} == {"response", "feature", "attention"}
