"""A farlab-exported GGUF in a runtime nobody here wrote: llama-cpp-python (llama.cpp).

1. Parity: llama.cpp loads the exported tiny Llama student, tokenizes like the HF tokenizer, and its logits match
   PyTorch's ``final/`` within a float32 tolerance; greedy generation gives the same tokens.
2. Its OpenAI-compatible server (``python -m llama_cpp.server``) serving that GGUF: its echoed prompt logprobs
   are torch's log-softmax (with its quirks recorded), and farlab's ``teacher=openai`` backend, which sends token-id
   prompts, is refused by it (text prompts only) with a clear error after one request.

Skipped when llama-cpp-python is not installed (``pip install 'farlab[llamacpp]'``; it compiles llama.cpp).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'farlab[llamacpp]'; builds llama.cpp)")

from farlab.export.cli import export
from farlab.teachers.openai_client import TeacherServerError
from farlab.train import execute
from tests.conftest import tiny_overrides, train_runs

LOGIT_ATOL = 1e-3  # float32 weights; llama.cpp's CPU kernels sum in another order than torch
PROMPTS = ["Translate English to French.\nEnglish: The session is resumed.\nFrench:",
           "Madam President, on a point of order."]


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama student trained (CE, Europarl) and exported to GGUF float32: (run dir, model.gguf)."""
    runs = train_runs(tmp_path_factory.mktemp("llamacpp_runs"), {"llama": {
        "loss": "ce", "task": "europarl_en_fr", "model": "tiny_llama", "task.train_limit": 48, "task.eval_limit": 4,
        "task.generation.max_new_tokens": 4, "task.max_length": 96, "train.learning_rate": 0.01}},
        **{"train.keep_checkpoints": "none"})
    result = export(runs["llama"], "gguf", dtype="float32")
    return runs["llama"], result["out_dir"] / "model.gguf"


def test_llama_cpp_logits_and_greedy_tokens_match_torch(gguf_run):
    run, path = gguf_run
    tok = AutoTokenizer.from_pretrained(run / "final")
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False, seed=0)
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids  # with BOS
        assert llm.tokenize(prompt.encode(), add_bos=True, special=False) == ids
        llm.reset()
        llm.eval(ids)
        ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < LOGIT_ATOL, np.abs(ours - ref).max()
        assert (ours.argmax(-1) == ref.argmax(-1)).all()
        # Greedy generation, 8 tokens, in both runtimes.
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        llm.reset()
        gen = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            gen.append(token)
            if len(gen) == 8:
                break
        assert gen == hf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(gguf_run, tmp_path_factory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on 127.0.0.1 serving the exported GGUF; yields its /v1 base URL."""
    _, path = gguf_run
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1", "--port",
             str(port), "--n_ctx", "256", "--logits_all", "true", "--n_threads", "1", "--model_alias", "student"],
            stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"llama_cpp.server exited: {log.read_text()[-2000:]}"
                try:
                    if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"llama_cpp.server did not start: {log.read_text()[-2000:]}"
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_llama_cpp_server_echo_logprobs_are_torch_logprobs_with_its_quirks(gguf_run, llama_server):
    """What the server returns for a text prompt with echo + logprobs (the quirks docs/teachers.md lists)."""
    run, _ = gguf_run
    tok = AutoTokenizer.from_pretrained(run / "final")
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    prompt, k = PROMPTS[1], 3
    body = {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": k, "temperature": 1.0}
    lp = httpx.post(f"{llama_server}/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    ids = tok(prompt).input_ids
    # Quirk: the echo leaves out BOS, so the first real token has no logprob (null) although BOS predicts it.
    assert lp["tokens"][: len(ids) - 1] == [tok.decode([i]) for i in ids[1:]]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    for j in range(1, len(ids) - 1):  # echoed position j is token ids[j + 1], predicted at torch position j
        top = lp["top_logprobs"][j]
        # Quirk: keyed by token text, k entries plus the prompt's own token when it is outside the top k.
        assert k <= len(top) <= k + 1 and tok.decode([ids[j + 1]]) in top
        assert lp["token_logprobs"][j] == pytest.approx(ref[j, ids[j + 1]].item(), abs=LOGIT_ATOL)
        best = ref[j].topk(k)
        for i, value in zip(best.indices.tolist(), best.values.tolist()):
            assert top[tok.decode([i])] == pytest.approx(value, abs=LOGIT_ATOL)


def test_farlab_refuses_the_llama_cpp_server_as_teacher_with_the_reason(gguf_run, llama_server, compose_cfg,
                                                                        tmp_path):
    """farlab's openai backend sends token ids; this server takes text only (HTTP 500): one request, a clear error."""
    run, _ = gguf_run
    overrides = tiny_overrides(tmp_path / "store", **{
        "task": "europarl_en_fr", "model": "tiny_llama", "loss": "response_kl", "teacher_strategy": "frozen_base",
        "task.train_limit": 16, "task.eval_limit": 2, "task.generation.max_new_tokens": 2, "task.max_length": 64,
        "train.max_steps": 2, "train.save_steps": 2, "teacher": "openai", "teacher.openai.base_url": llama_server,
        "teacher.openai.concurrency": 1, "teacher.openai.max_retries": 4, "teacher.top_k": 5,
        "model.teacher.source": "pretrained", "model.teacher.path": str(run / "final")})
    start = time.monotonic()
    with pytest.raises(TeacherServerError, match=r"token-id prompts refused.*llama-cpp-python"):
        execute(compose_cfg(overrides), tmp_path / "kd", overrides)
    assert time.monotonic() - start < 120
    assert json.loads((tmp_path / "kd" / "run_metadata.json").read_text())["status"] == "failed"
