"""``teacher.openai.prompt_format=text`` on answers recorded from llama-cpp-python 0.3.36's server (no network).

tests/data/llama_cpp_server/responses.json (tests/data/llama_cpp_server/record.py) holds two real answers for a
farlab-exported tiny Llama GGUF, with the PyTorch model's log-probs of the returned ids as the reference.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer

from farlab.config import REPO_ROOT
from farlab.teachers.backends.openai import OpenAIBackend
from farlab.teachers.openai_client import CompletionsClient, TeacherServerError, TeacherTokenizerMismatch
from farlab.teachers.openai_text import TextCodec

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "llama_cpp_server" / "responses.json").read_text())
ATOL = 1e-3  # llama.cpp float32 kernels vs torch (measured: 2e-4)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")


def _choice(rec):
    return copy.deepcopy(rec["response"]["choices"][0])


@pytest.mark.parametrize("which", [0, 1])
def test_recorded_rows_are_the_torch_top_k_over_identifiable_ids(tokenizer, which):
    rec = RECORDED[which]
    codec = TextCodec(tokenizer, rec["extra"])
    ids, k = rec["ids"], rec["k"]
    assert codec.prompt(ids) == rec["prompt"] == rec["request"]["prompt"]
    parsed = codec.parse(_choice(rec), ids, k)
    assert parsed.missing == [1]  # BOS left out: nothing for the first text token
    unique = {i for i, t in enumerate(codec.texts) if len(codec.by_text[t]) == 1}
    for j in range(2, len(ids)):
        ref = {int(i): v for i, v in rec["torch_logprobs"][j].items()}
        row_ids, row_lp = parsed.ids[j].tolist(), parsed.logprobs[j].tolist()
        assert len(set(row_ids)) == k and set(row_ids) <= unique | {ids[j]} and row_lp == sorted(row_lp, reverse=True)
        for i, v in zip(row_ids, row_lp):
            assert v == pytest.approx(ref[i], abs=ATOL), (j, i)
        # No identifiable id the row left out beats it (ids the server did not return are below them all).
        assert max(v for i, v in ref.items() if i in unique and i not in row_ids) <= row_lp[-1] + ATOL
    assert codec.stats.missing_rows == 1


def test_the_eos_at_the_end_is_echoed_as_empty_text_and_scored(tokenizer):
    rec = RECORDED[0]
    assert rec["ids"][-1] == tokenizer.eos_token_id
    echoed = rec["response"]["choices"][0]["logprobs"]["tokens"]
    assert echoed[len(rec["ids"]) - 2] == ""  # specials print as "" (detokenize(special=False))
    codec = TextCodec(tokenizer, rec["extra"])
    parsed = codec.parse(_choice(rec), rec["ids"], rec["k"])
    assert "" in codec.stats.ambiguous_texts  # "" is 4 specials + 128 partial UTF-8 bytes: left in the tail
    assert len(codec.by_text[""]) > 1 and tokenizer.eos_token_id in codec.by_text[""]
    assert parsed.logprobs[-1].max() < 0


def test_an_echo_that_differs_from_the_sent_ids_is_refused_naming_the_position(tokenizer):
    rec = RECORDED[1]
    choice = _choice(rec)
    choice["logprobs"]["tokens"][4] = " something"  # the server's 5th echoed token is ids[5]
    with pytest.raises(TeacherTokenizerMismatch, match=r"position 5: we sent id 15 \(','\).*' something'"):
        TextCodec(tokenizer, rec["extra"]).parse(choice, rec["ids"], rec["k"])


def test_a_returned_text_no_id_renders_to_is_refused_naming_the_position(tokenizer):
    rec = RECORDED[1]
    choice = _choice(rec)
    choice["logprobs"]["top_logprobs"][3]["\u2603snowman"] = -5.0
    with pytest.raises(TeacherTokenizerMismatch, match=r"position 4: .*'\u2603snowman', which no id"):
        TextCodec(tokenizer, rec["extra"]).parse(choice, rec["ids"], rec["k"])


def test_too_few_identifiable_entries_are_refused_with_the_fix(tokenizer):
    rec = RECORDED[0]
    with pytest.raises(TeacherServerError, match=r"fewer than teacher.top_k=9: raise teacher.openai.text_extra"):
        TextCodec(tokenizer, 0).parse(_choice(rec), rec["ids"], rec["k"] + rec["extra"])


def test_a_sequence_without_bos_is_refused(tokenizer):
    with pytest.raises(TeacherServerError, match="start with BOS"):
        TextCodec(tokenizer).prompt(RECORDED[1]["ids"][1:])


def _client(tokenizer, rec, seen):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=rec["response"])

    client = CompletionsClient("http://127.0.0.1:9/v1", model="student",
                               text_codec=TextCodec(tokenizer, rec["extra"]))
    client.http = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def test_the_backend_sends_text_and_shifts_rows_onto_student_positions(tokenizer):
    rec, seen = RECORDED[1], []
    client = _client(tokenizer, rec, seen)
    ids, k = rec["ids"], rec["k"]
    n = len(ids)
    labels = torch.tensor([[-100] * 4 + ids[4:] + [-100]])  # targets from token 4 on; one pad position
    batch = {"input_ids": torch.tensor([ids + [0]]), "attention_mask": torch.tensor([[1] * n + [0]]),
             "labels": labels}
    backend = OpenAIBackend(client, k)
    topk = backend(batch, hidden_states=False, attentions=False, grad=False, detach=True).view.topk
    assert seen == [{"model": "student", "prompt": rec["prompt"], "max_tokens": 1, "temperature": 1.0,
                     "echo": True, "logprobs": k + rec["extra"]}]
    expected = TextCodec(tokenizer, rec["extra"]).parse(_choice(rec), ids, k)
    for t in range(1, n - 1):  # student position t predicts token t + 1: the row of token t + 1
        assert topk.ids[0, t].tolist() == expected.ids[t + 1].tolist()
        assert torch.equal(topk.logprobs[0, t], torch.from_numpy(expected.logprobs[t + 1]))
    # Echo entry i is token i + 1 (BOS left out): the row of token 2 is the server's entry 1, token 2's own logprob.
    own = rec["response"]["choices"][0]["logprobs"]["token_logprobs"][1]
    assert own in expected.logprobs[2].tolist() or own < expected.logprobs[2].min()
    assert topk.ids[0, 0].tolist() == [0] * k  # filler: nothing predicts the first text token on this server
    assert backend.masked_positions == 1  # position 0 (BOS -> first text token): no teacher row, outside the loss
    # The same batch with the first text token as a target: the missing row would be read, so it is refused.
    batch["labels"] = torch.tensor([ids + [-100]])
    with pytest.raises(TeacherServerError, match=r"no distribution for token 1 of sequence 0.*training target"):
        backend(batch, hidden_states=False, attentions=False, grad=False, detach=True)
    client.close()


def test_prompt_format_is_validated_with_the_choices(compose_cfg, tmp_path):
    from farlab.teachers.backends.openai import validate_openai

    cfg = compose_cfg(["task=europarl_en_fr", "model=tiny_llama", "teacher=openai",
                       "teacher.openai.prompt_format=txt", "teacher.openai.text_extra_logprobs=-1"])
    problems = validate_openai(cfg, None)
    assert any("prompt_format 'txt'" in p and "valid: ids, text" in p and "did you mean 'text'" in p
               for p in problems)
    assert any("text_extra_logprobs=-1" in p for p in problems)
