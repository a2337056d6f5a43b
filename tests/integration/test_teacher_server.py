"""A real OpenAI-compatible teacher server (``python -m farlab.teachers.serve`` as a subprocess on 127.0.0.1):
KD through it equals KD with the in-process teacher at the same k, and a server that dies mid-run gives retries,
then a clear error, with the last checkpoint intact. The RL teacher reward through it equals the in-process
top-k reward, and a GRPO run through it equals one with the in-process top-k teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from farlab.config import REPO_ROOT
from farlab.data import build_task_data
from farlab.data.kinds import TASK_KINDS
from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.response import ResponseLoss
from farlab.models.loading import Head, build_model
from farlab.rl.teacher import TeacherReward, prompt_token_ids
from farlab.teachers.backends.hf import HFBackend
from farlab.teachers.backends.openai import OpenAIBackend, make_client
from farlab.teachers.openai_client import TeacherServerError
from farlab.train import execute
from tests.conftest import tiny_overrides

K = 20


class Server:
    def __init__(self, folder: Path, log: Path) -> None:
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "farlab.teachers.serve", "--model", str(folder), "--port", "0",
             "--name", "tiny-teacher", "--threads", "1"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()  # "serving tiny-teacher on http://127.0.0.1:PORT/v1"
        assert "serving" in line, f"server did not start: {line!r}, log: {log.read_text()[-2000:]}"
        self.base_url = line.split(" on ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def overrides(store: Path, folder: Path, **extra: object) -> list[str]:
    base = {
        "task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base",
        "task.train_limit": 32, "task.eval_limit": 4, "task.generation.max_new_tokens": 4, "task.max_length": 64,
        "model.teacher.source": "pretrained", "model.teacher.path": str(folder), "teacher.top_k": K,
        "loss.components.response.topk_tail": "bucket",
    }
    base.update(extra)
    return tiny_overrides(store, **base)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    """The tiny Llama teacher, saved as a Hugging Face folder the server and the hf backend both load."""
    from hydra import compose, initialize_config_dir

    from farlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny_llama"])
    folder = tmp_path_factory.mktemp("teacher") / "tiny-teacher"
    set_seed(0)
    build_model(cfg.model.teacher, Head(AutoModelForCausalLM), None).save_pretrained(folder)
    AutoTokenizer.from_pretrained(cfg.model.tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shared_server(teacher_folder, tmp_path_factory) -> Iterator[Server]:
    srv = Server(teacher_folder, tmp_path_factory.mktemp("server") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def server(teacher_folder, tmp_path) -> Iterator[Server]:
    """A server of its own, for the test that kills it."""
    srv = Server(teacher_folder, tmp_path / "server.log")
    yield srv
    srv.stop()


def test_server_topk_equals_the_in_process_teacher_batch_by_batch(shared_server, teacher_folder, compose_cfg, tmp_path):
    cfg = compose_cfg(overrides(tmp_path, teacher_folder, **{"teacher": "openai",
                                                            "teacher.openai.base_url": shared_server.base_url}))
    data = build_task_data(cfg.task, AutoTokenizer.from_pretrained(teacher_folder), cfg.seed)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_folder).eval()
    hf, remote = HFBackend(teacher, top_k=K), OpenAIBackend(make_client(cfg.teacher.openai, data.tokenizer), K)
    student_logits = torch.randn(64, 64, 1024, generator=torch.Generator().manual_seed(0))
    for batch in list(DataLoader(data.train, batch_size=8, collate_fn=data.collator))[:2]:
        flags = dict(hidden_states=False, attentions=False, grad=False, detach=True)
        a, b = hf(batch, **flags).view.topk, remote(batch, **flags).view.topk
        token_mask, response = TASK_KINDS.get("causal_lm").masks(batch)
        rows = response.bool()
        assert torch.equal(a.ids[rows], b.ids[rows])
        torch.testing.assert_close(a.logprobs[rows], b.logprobs[rows], rtol=0, atol=1e-5)
        s = student_logits[: batch["input_ids"].shape[0], : batch["input_ids"].shape[1]]
        for tail in ("renormalize", "bucket"):
            loss = ResponseLoss("kl", temperature=2.0, topk_tail=tail)
            values = [loss(DistillBatch(ModelView(logits=s), ModelView(topk=t), token_mask, response)) for t in (a, b)]
            assert abs(float(values[0] - values[1])) < 1e-5, tail


def test_prompt_lists_give_the_same_topk_in_fewer_requests(shared_server, teacher_folder, compose_cfg, tmp_path):
    """prompts_per_request=3 packs 8 sequences into 3 requests; every row equals the one-per-request answer."""
    answers, requests = {}, {}
    for per_request in (1, 3):
        cfg = compose_cfg(overrides(tmp_path, teacher_folder, **{
            "teacher": "openai", "teacher.openai.base_url": shared_server.base_url,
            "teacher.openai.prompts_per_request": per_request}))
        data = build_task_data(cfg.task, AutoTokenizer.from_pretrained(teacher_folder), cfg.seed)
        client = make_client(cfg.teacher.openai, data.tokenizer)
        sent: list[str] = []
        plain_request = client._request

        def counted(method: str, path: str, body: dict | None = None, plain=plain_request, sent=sent) -> dict:
            sent.append(path)
            return plain(method, path, body)

        client._request = counted
        sequences = [row["input_ids"] for row in data.train.select(range(8))]
        answers[per_request], requests[per_request] = client.prompt_topk(sequences, K), sent.count("/completions")
        client.close()
    assert requests == {1: 8, 3: 3}
    for one, packed in zip(answers[1], answers[3], strict=True):
        assert np.array_equal(one.ids, packed.ids) and np.array_equal(one.logprobs, packed.logprobs)


def test_kd_through_the_server_equals_kd_with_the_in_process_teacher(shared_server, teacher_folder, compose_cfg,
                                                                    tmp_path):
    local = overrides(tmp_path / "store", teacher_folder)
    remote = overrides(tmp_path / "store", teacher_folder, **{"teacher": "openai",
                                                              "teacher.openai.base_url": shared_server.base_url})
    a = execute(compose_cfg(local), tmp_path / "hf", local)
    b = execute(compose_cfg(remote), tmp_path / "openai", remote)
    assert a["loss_components"].keys() == b["loss_components"].keys()
    for key, value in a["loss_components"].items():
        assert abs(value - b["loss_components"][key]) < 1e-5, key
    assert a["train"]["teacher_forwards_per_step"] == b["train"]["teacher_forwards_per_step"] == 1.0
    assert "teacher" in a["pre"] and "teacher" not in b["pre"]  # a server teacher is not evaluated locally


def test_a_server_killed_mid_run_gives_retries_then_a_clear_error_and_the_checkpoint_survives(
    server, teacher_folder, compose_cfg, tmp_path, monkeypatch, caplog
):
    calls = {"n": 0}
    original = OpenAIBackend.__call__

    def kill_on_third_step(self, batch, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after checkpoint-2 was published
            server.proc.kill()
            server.proc.wait(timeout=30)
        return original(self, batch, **kw)

    monkeypatch.setattr(OpenAIBackend, "__call__", kill_on_third_step)
    run_dir = tmp_path / "run"
    ovr = overrides(tmp_path / "store", teacher_folder, **{
        "teacher": "openai", "teacher.openai.base_url": server.base_url, "teacher.openai.max_retries": 2,
        "teacher.openai.backoff_s": 0.05, "teacher.openai.max_backoff_s": 0.1, "train.max_steps": 6})
    caplog.set_level("WARNING", logger="farlab.teachers.openai_client")
    with pytest.raises(TeacherServerError, match=r"did not answer after 3 attempts.*Is it running"):
        execute(compose_cfg(ovr), run_dir, ovr)
    assert "retry 2/2" in caplog.text
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["status"] == "failed" and "TeacherServerError" in meta["error"]
    ckpt = run_dir / "checkpoint-2"
    assert (ckpt / "COMPLETE").is_file() and not (run_dir / "checkpoint-4").exists()
    AutoModelForCausalLM.from_pretrained(ckpt)  # loadable: a resume starts from here


def test_rl_teacher_reward_through_the_server_equals_the_in_process_topk_reward(shared_server, teacher_folder,
                                                                                compose_cfg, tmp_path):
    cfg = compose_cfg(overrides(tmp_path, teacher_folder, **{"teacher": "openai",
                                                            "teacher.openai.base_url": shared_server.base_url}))
    tokenizer = AutoTokenizer.from_pretrained(teacher_folder)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_folder).eval()
    set_seed(1)
    student = build_model(cfg.model.student, Head(AutoModelForCausalLM), None).eval()
    prompts = ["Translate English to French.\nEnglish: The session is resumed.\nFrench:",
               "Translate English to French.\nEnglish: Thank you very much, Mr President.\nFrench:"]
    completions = []  # the student's own samples, of different lengths (padding must not leak in)
    for ids, n in zip(prompt_token_ids(tokenizer, prompts), (5, 9), strict=True):
        out = student.generate(torch.tensor([ids]), do_sample=True, max_new_tokens=n, min_new_tokens=n)
        completions.append(out[0, len(ids):].tolist())
    call = {"prompts": prompts, "completions": ["", ""], "completion_ids": completions}
    remote = OpenAIBackend(make_client(cfg.teacher.openai, tokenizer), K)
    dense = TeacherReward(teacher, tokenizer, "mean", estimator="analytic").bind(student)(**call)
    for tail in ("bucket", "renormalize"):
        for reduction in ("mean", "sum"):
            for estimator in ("analytic", "sampled"):
                case = (reduction, tail, estimator)
                local = TeacherReward(HFBackend(teacher, top_k=K), tokenizer, *case).bind(student)(**call)
                served = TeacherReward(remote, tokenizer, *case).bind(student)(**call)
                assert served == pytest.approx(local, abs=1e-4), case
                assert estimator == "sampled" or all(v < 0 for v in served)
    # bucket merges the outcomes outside the top-k into one: a lower bound of the full KL (data processing)
    bucket = TeacherReward(remote, tokenizer, "mean", "bucket", "analytic").bind(student)(**call)
    assert all(b >= d - 1e-5 for b, d in zip(bucket, dense, strict=True)) and bucket != pytest.approx(dense)


def test_grpo_with_a_server_teacher_equals_grpo_with_the_in_process_topk_teacher(shared_server, teacher_folder,
                                                                                 compose_cfg, tmp_path):
    rl = {"rl": "grpo", "rl.teacher_weight": 0.5, "rl.num_generations": 4, "rl.max_completion_length": 6,
          "train.batch_size": 8, "train.max_steps": 2, "train.logging_steps": 1, "train.num_threads": 1,
          "task.train_limit": 16, "task.generation.max_new_tokens": 4}
    local = overrides(tmp_path / "store", teacher_folder, **rl)
    remote = overrides(tmp_path / "store", teacher_folder, **rl, **{
        "teacher": "openai", "teacher.openai.base_url": shared_server.base_url})
    a = execute(compose_cfg(local), tmp_path / "hf", local)
    b = execute(compose_cfg(remote), tmp_path / "openai", remote)
    assert a["rl"]["rewards"] == b["rl"]["rewards"] == ["chrf", "teacher_reverse_kl"]
    assert "teacher" in a["pre"] and "teacher" not in b["pre"]  # a server teacher is not evaluated locally
    logs = [[e for e in json.loads((d / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
             if "reward" in e] for d in (tmp_path / "hf", tmp_path / "openai")]
    assert len(logs[0]) == len(logs[1]) == 2
    for x, y in zip(*logs, strict=True):
        assert x["teacher/reverse_kl"] > 0  # the analytic per-token KL, logged whatever the estimator
        for key in ("rewards/teacher_reverse_kl/mean", "teacher/reverse_kl", "rewards/chrf/mean", "reward"):
            assert y[key] == pytest.approx(x[key], abs=1e-4), key
