"""A farlab-exported GGUF in a runtime nobody here wrote: llama-cpp-python (llama.cpp).

1. Parity: llama.cpp loads the exported tiny Llama student, tokenizes like the HF tokenizer, and its logits match
   PyTorch's ``final/`` within a float32 tolerance; greedy generation gives the same tokens.
2. Its OpenAI-compatible server (``python -m llama_cpp.server``) serving that GGUF: its echoed prompt logprobs
   are torch's log-softmax (with its quirks recorded), and farlab's ``teacher=openai`` backend, which sends token-id
   prompts, is refused by it (text prompts only) with a clear error after one request.
3. With ``teacher.openai.prompt_format=text`` it is a farlab KD teacher: the rows it gives are the in-process
   model's top-k (over the ids its token texts identify) at the aligned positions, and a KD run completes.

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


def _text_teacher_overrides(run: Path, store: Path, base_url: str) -> list[str]:
    return tiny_overrides(store, **{
        "task": "europarl_en_fr", "model": "tiny_llama", "loss": "response_kl", "teacher_strategy": "frozen_base",
        "task.train_limit": 8, "task.eval_limit": 2, "task.generation.max_new_tokens": 2, "task.max_length": 96,
        "train.max_steps": 2, "train.save_steps": 2, "train.batch_size": 4, "teacher": "openai",
        "teacher.openai.base_url": base_url, "teacher.openai.concurrency": 1, "teacher.openai.max_retries": 0,
        "teacher.openai.prompt_format": "text", "teacher.openai.text_extra_logprobs": 16, "teacher.top_k": 5,
        "loss.components.response.topk_tail": "bucket",
        "model.teacher.source": "pretrained", "model.teacher.path": str(run / "final")})


def test_llama_cpp_server_as_a_text_prompt_teacher_gives_the_torch_top_k(gguf_run, llama_server, compose_cfg,
                                                                           tmp_path):
    """prompt_format=text: every response row is torch's top-k over the ids the server's texts identify."""
    from torch.utils.data import DataLoader

    from farlab.data import build_task_data
    from farlab.data.kinds import TASK_KINDS
    from farlab.teachers.backends.openai import OpenAIBackend, make_client

    run, _ = gguf_run
    cfg = compose_cfg(_text_teacher_overrides(run, tmp_path / "store", llama_server))
    tok = AutoTokenizer.from_pretrained(run / "final")
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    data = build_task_data(cfg.task, tok, cfg.seed)
    client = make_client(cfg.teacher.openai, data.tokenizer)
    k, codec = cfg.teacher.top_k, client.text_codec
    backend = OpenAIBackend(client, k)
    identifiable = torch.tensor([len(codec.by_text[t]) == 1 for t in codec.texts])
    batch = next(iter(DataLoader(data.train, batch_size=4, collate_fn=data.collator)))
    topk = backend(batch, hidden_states=False, attentions=False, grad=False, detach=True).view.topk
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    _, response = TASK_KINDS.get("causal_lm").masks(batch)
    rows = response.bool()
    assert int(rows.sum()) > 20 and not bool(response[:, 0].any())
    ids, lps, torch_lp = topk.ids[rows], topk.logprobs[rows], ref[rows]
    nxt = torch.zeros_like(batch["input_ids"])
    nxt[:, :-1] = batch["input_ids"][:, 1:]
    # The ids a row may hold: those whose text identifies them, and the token that comes next (its own entry).
    allowed = identifiable.expand(len(ids), -1).clone().scatter_(-1, nxt[rows][:, None], True)
    assert bool(allowed.gather(-1, ids).all()) and bool((lps[:, :-1] >= lps[:, 1:]).all())
    assert (torch_lp.gather(-1, ids) - lps).abs().max() < LOGIT_ATOL  # the same numbers at the aligned positions
    outside = torch_lp.masked_fill(~allowed, -1e9).scatter(-1, ids, -1e9).max(-1).values
    assert (outside - lps[:, -1]).max() < LOGIT_ATOL  # no id it could hold is left out while beating the row
    # Where torch's own top-k holds only such ids, the rows are exactly torch's top-k.
    best = torch_lp.topk(k, -1)
    clean = allowed.gather(-1, best.indices).all(-1)
    assert int(clean.sum()) > len(ids) // 2, (int(clean.sum()), len(ids))
    torch.testing.assert_close(lps[clean], best.values[clean], rtol=0, atol=LOGIT_ATOL)
    print(f"text teacher: {len(ids)} response rows, {int(clean.sum())} with torch's top-{k} all identifiable, "
          f"{int((ids[clean] == best.indices[clean]).all(-1).sum())} of them with the same ids in the same order, "
          f"max |server - torch| {float((torch_lp.gather(-1, ids) - lps).abs().max()):.2e}, "
          f"entries left in the tail {codec.stats.ambiguous_entries} ({codec.stats.ambiguous_texts})")
    assert backend.masked_positions == batch["input_ids"].shape[0]  # one per sequence: BOS -> first text token
    client.close()


def test_a_kd_run_with_the_llama_cpp_server_as_text_prompt_teacher_completes(gguf_run, llama_server, compose_cfg,
                                                                              tmp_path):
    run, _ = gguf_run
    overrides = _text_teacher_overrides(run, tmp_path / "store", llama_server)
    execute(compose_cfg(overrides), tmp_path / "kd", overrides)
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert json.loads((tmp_path / "kd" / "run_metadata.json").read_text())["status"] == "completed"
    assert metrics["train"]["global_step"] == 2 and np.isfinite(metrics["train"]["final_loss"])
    assert metrics["train"].get("teacher_forwards_per_step", 1) == 1
