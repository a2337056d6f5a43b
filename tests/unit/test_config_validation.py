"""Bad configs and inputs fail fast, before any model loads, with a message naming the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from farlab.config import REPO_ROOT, ConfigError
from farlab.data import DataError
from farlab.validate import validate_config
from tests.conftest import tiny_overrides


@pytest.mark.parametrize(
    ("extra", "error", "pattern"),
    [
        ({"loss.alpha": -0.5}, ConfigError, r"alpha.*-0.5"),
        ({"loss.temperature": 0}, ConfigError, r"temperature.*0"),
        ({"task.data_dir": "/nonexistent/cola"}, DataError, r"training file /nonexistent/cola/train.tsv not found"),
        ({"train.batch_size": 0}, ConfigError, r"train.batch_size=0 must be >= 1"),
        ({"teacher_strategy.init": "sftt"}, ConfigError, r"unknown teacher_strategy.init 'sftt'.*did you mean 'sft'"),
        ({"model.student.source": "magic"}, ConfigError, r"unknown model.student.source 'magic'.*from_teacher"),
        ({"wandb.mode": "loud"}, ConfigError, r"unknown wandb.mode 'loud'.*offline"),
        ({"task.primary_metric": "bleu"}, DataError, r"primary_metric='bleu'"),
        ({"loss.components.response.fn": "kll"}, ConfigError, r"kll.*did you mean 'kl'"),
        ({"train.bf16": True, "train.fp16": True}, ConfigError, "mutually exclusive"),
        (
            {"teacher": "openai", "teacher.openai.prompts_per_request": 0},
            ConfigError,
            r"teacher.openai.prompts_per_request=0 must be >= 1",
        ),
        (
            {"teacher_strategy": "cotrain_base", "loss.components.response.chunk_size": 64},
            ConfigError,
            "co-trained teacher .* cannot use",
        ),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(compose_cfg, store_dir, extra, error, pattern):
    cfg = compose_cfg(tiny_overrides(store_dir, **extra))
    with pytest.raises(error, match=pattern):
        validate_config(cfg)


def test_typo_in_key_and_wrong_type_fail_at_composition(compose_cfg, store_dir):
    with pytest.raises(ConfigCompositionException, match="alpah"):
        compose_cfg(tiny_overrides(store_dir, **{"loss.alpah": 0.3}))
    with pytest.raises((ConfigCompositionException, ValidationError), match="batch_size"):
        compose_cfg(tiny_overrides(store_dir, **{"train.batch_size": "many"}))


def test_unknown_config_group_option_lists_choices(compose_cfg, store_dir):
    with pytest.raises(ConfigCompositionException, match=r"(?s)response_kll.*response_kl"):
        compose_cfg(tiny_overrides(store_dir, loss="response_kll"))


def test_from_teacher_block_out_of_range_names_both_depths(compose_cfg, store_dir):
    from transformers import AutoModelForSequenceClassification

    from farlab.models.loading import Head, build_model

    cfg = compose_cfg(["model=minilm", "model.student.init_blocks=[1,3,7]"])
    head = Head(AutoModelForSequenceClassification, {"num_labels": 2})
    teacher = build_model(cfg.model.teacher, head, None)
    with pytest.raises(ConfigError, match=r"blocks \[7\] out of range; the teacher has 6 blocks \(valid: 1..6\)"):
        build_model(cfg.model.student, head, None, teacher=teacher)


def test_cli_bad_value_exits_nonzero_without_writing_metrics(tmp_path, store_dir):
    out = tmp_path / "run"
    args = [*tiny_overrides(store_dir, **{"loss.temperature": -1}), f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, "-m", "farlab.train", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "temperature" in proc.stderr
    assert not (out / "metrics.json").exists()
    assert '"status": "failed"' in (out / "run_metadata.json").read_text()


def test_student_blocks_beyond_the_teacher_are_refused_before_any_weights_load(compose_cfg, store_dir, monkeypatch):
    """The range check reads the teacher's config.json; no model is built."""
    import farlab.models.loading as loading

    monkeypatch.setattr(loading, "build_model", lambda *a, **k: pytest.fail("no model may load during validation"))
    cfg = compose_cfg(["model=minilm", "model.student.init_blocks=[1,3,7]"])
    with pytest.raises(ConfigError, match=r"blocks \[7\] out of range; the teacher has 6 blocks \(valid: 1..6\)"):
        validate_config(cfg)
