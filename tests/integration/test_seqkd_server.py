"""Sequence-level KD against a real OpenAI-compatible server (``python -m farlab.teachers.serve`` on 127.0.0.1):
its greedy generations equal the in-process teacher's, sampling gives n seeded choices per prompt, and the CLI plus
a ``task.targets=teacher`` run work end to end through it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.data import build_task_data
from farlab.losses.plan import LossPlan
from farlab.teachers.generations import GenerationRun, training_prompts
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher
from farlab.train import execute
from tests.conftest import tiny_overrides
from tests.integration.test_teacher_server import Server, teacher_folder  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def server(teacher_folder, tmp_path_factory) -> Iterator[Server]:  # noqa: F811
    srv = Server(teacher_folder, tmp_path_factory.mktemp("server") / "server.log")
    yield srv
    srv.stop()


def overrides(tmp_path, folder, **extra) -> list[str]:
    base = {"task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base",
            "model.teacher.source": "pretrained", "model.teacher.path": str(folder),
            "task.train_limit": 8, "task.eval_limit": 2, "task.max_length": 64, "task.generation.max_new_tokens": 6,
            "generate.dir": str(tmp_path / "gen"), "generate.batch_size": 1}
    return tiny_overrides(tmp_path / "store", **{**base, **extra})


def _run(cfg) -> GenerationRun:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    ctx = TeacherContext(TeacherSettings.from_run_config(cfg), None, data, tokenizer, None,
                         LossPlan.from_config(cfg.loss))
    return GenerationRun(ctx, cfg.generate, prepare_teacher)


def test_server_greedy_generations_equal_the_in_process_teacher(server, teacher_folder, compose_cfg,  # noqa: F811
                                                                tmp_path):
    local = _run(compose_cfg(overrides(tmp_path, teacher_folder))).open_or_build()
    remote = _run(compose_cfg(overrides(tmp_path, teacher_folder, **{
        "teacher": "openai", "teacher.openai.base_url": server.base_url}))).open_or_build()
    assert local.path != remote.path  # one entry per teacher identity
    assert remote.meta["key"]["teacher"] == {"served_model": "tiny-teacher"}
    assert remote.meta["built_with"] == "openai" and remote.meta["base_url"] == server.base_url
    assert [r["text"] for r in local.rows] == [r["text"] for r in remote.rows]
    assert sum(bool(r["text"]) for r in local.rows) >= 6  # non-empty texts were compared


def test_server_sampling_gives_n_seeded_choices_per_prompt(server, teacher_folder, compose_cfg,  # noqa: F811
                                                           tmp_path):
    ovr = overrides(tmp_path, teacher_folder, **{"teacher": "openai", "teacher.openai.base_url": server.base_url,
                                                 "generate.mode": "sample", "generate.n": 2,
                                                 "generate.temperature": 2.0, "task.train_limit": 4})
    run = _run(compose_cfg(ovr))
    first = run.open_or_build()
    rebuilt = run.open_or_build(force=True)
    assert [(r["example_id"], r["sample"]) for r in first.rows] == [(e, j) for e in range(4) for j in range(2)]
    assert first.rows == rebuilt.rows  # the request seed (seed + prompt index) makes a rebuild identical
    assert len({r["text"] for r in first.rows}) > 4


def test_cli_then_a_teacher_targets_run_through_the_server(server, teacher_folder, compose_cfg,  # noqa: F811
                                                           tmp_path):
    ovr = overrides(tmp_path, teacher_folder, **{"teacher": "openai", "teacher.openai.base_url": server.base_url,
                                                 "teacher.top_k": 20, "loss.components.response.topk_tail": "bucket",
                                                 "task.targets": "teacher"})
    cli = [sys.executable, "-m", "farlab.teachers.generate", *ovr]
    out = subprocess.run(cli, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "teacher generations:" in out.stdout and "(8 rows" in out.stdout
    metrics = execute(compose_cfg(ovr), tmp_path / "run", ovr)
    assert metrics["train"]["global_step"] == 4 and metrics["loss_components"]["response/raw"] > 0
    data = _run(compose_cfg(ovr)).ctx.data
    assert len(training_prompts(data)) == 8
