"""The OpenAI-compatible client's handling of the servers' quirks, on recorded-shape payloads (no network)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from farlab.losses.divergences import topk_logprobs
from farlab.teachers.openai_client import (
    CompletionsClient,
    TeacherServerError,
    TeacherTokenizerMismatch,
    _parse_echo_logprobs,
    _parse_prompt_logprobs,
    retemper,
    verify_tokens,
)

IDS = [1, 7, 9]
VOCAB = {1: "<s>", 5: "a", 7: "b", 8: "c", 9: "d"}


def _entry(pairs, own=None):
    out = {str(i): {"logprob": lp, "rank": r + 1, "decoded_token": VOCAB[i]} for r, (i, lp) in enumerate(pairs)}
    if own is not None:
        out[str(own[0])] = {"logprob": own[1], "rank": 40, "decoded_token": VOCAB[own[0]]}
    return out


def test_vllm_prompt_logprobs_none_first_and_k_plus_one_entries():
    choice = {"prompt_logprobs": [
        None,
        _entry([(5, -0.5), (8, -1.5)], own=(7, -4.0)),  # the prompt's own token outside the top-2: 3 entries
        _entry([(9, -0.1), (5, -2.5)]),  # the prompt's token is the top-1: 2 entries
    ]}
    parsed = _parse_prompt_logprobs(choice, IDS, k=2)
    assert parsed.ids[1].tolist() == [5, 8] and parsed.logprobs[1].tolist() == [-0.5, -1.5]
    assert parsed.ids[2].tolist() == [9, 5]
    assert parsed.tokens == [None, "b", "d"]
    with pytest.raises(TeacherServerError, match="fewer than teacher.top_k=3"):
        _parse_prompt_logprobs(choice, IDS, k=3)


def test_missing_prompt_logprobs_point_at_prefix_caching():
    with pytest.raises(TeacherServerError, match="--no-enable-prefix-caching"):
        _parse_prompt_logprobs({"prompt_logprobs": [None, None, _entry([(9, -0.1)])]}, IDS, k=1)


def test_echo_logprobs_map_strings_and_token_ids():
    choice = {"logprobs": {"tokens": ["<s>", "b", "d", "a"], "top_logprobs": [
        None, {"a": -0.5, "token_id:8": -1.5, "b": -4.0}, {"d": -0.1, "a": -2.5}, {"a": -0.2}]}}
    lookup = {v: k for k, v in VOCAB.items()}.get
    parsed = _parse_echo_logprobs(choice, IDS, 2, lookup)
    assert parsed.ids[1].tolist() == [5, 8] and parsed.ids[2].tolist() == [9, 5]
    assert parsed.tokens[:3] == ["<s>", "b", "d"]


def test_a_different_tokenizer_is_refused():
    verify_tokens(IDS, [None, "b", "d"], VOCAB.get)
    with pytest.raises(TeacherTokenizerMismatch, match="tokenizer differs"):
        verify_tokens(IDS, [None, "x", "y"], VOCAB.get)


def test_client_side_temperature_formula_is_the_losses():
    """p_T(i) = p(i)^(1/T) / sum_j p(j)^(1/T) over the returned k: what topk_logprobs does to the teacher side."""
    lp = np.log(np.array([0.5, 0.2, 0.1], dtype=np.float64))
    manual = np.log(np.exp(lp) ** 0.5 / (np.exp(lp) ** 0.5).sum())
    np.testing.assert_allclose(retemper(lp, 2.0), manual, rtol=1e-12)
    _, teacher = topk_logprobs(torch.zeros(1, 5), torch.tensor([[0, 1, 2]]), torch.from_numpy(lp[None]).float(),
                               temperature=2.0)
    np.testing.assert_allclose(teacher[0].numpy(), manual, rtol=1e-6)


def test_a_server_that_stays_down_gives_retries_then_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    delays: list[float] = []
    client = CompletionsClient(f"http://127.0.0.1:{port}/v1", model="m", max_retries=3, backoff_s=0.5,
                               max_backoff_s=1.0, sleep=delays.append)
    with pytest.raises(TeacherServerError, match=r"did not answer after 4 attempts.*Is it running"):
        client.prompt_topk_one([1, 2, 3], 2)
    assert delays == [0.5, 1.0, 1.0] and client.retries == 3  # exponential, capped
    client.close()


def test_a_server_that_answers_fewer_choices_than_prompts_is_refused(monkeypatch):
    """A server that ignores a prompt list (answers one choice) must not shift targets onto the wrong sequences."""
    client = CompletionsClient("http://127.0.0.1:9/v1", model="m", prompts_per_request=2)
    choice = {"index": 0, "prompt_logprobs": [None, _entry([(5, -0.5)]), _entry([(9, -0.1)])]}
    monkeypatch.setattr(client, "_request", lambda *a, **kw: {"choices": [choice]})
    with pytest.raises(TeacherServerError, match="1 choices for 2 prompts.*prompts_per_request=1"):
        client.prompt_topk([IDS, IDS], 1)
    client.close()


# llama-cpp-python 0.3.36's server, recorded here: a token-id prompt fails its pydantic schema (str | list[str]),
# answered as HTTP 500. Every retry would get the same answer, so the client stops at once and says why.
LLAMA_CPP_IDS_REFUSAL = (
    '{"error":{"message":"4 validation errors:\\n  {\'type\': \'string_type\', \'loc\': (\'body\', \'prompt\', '
    '\'str\'), \'msg\': \'Input should be a valid string\', \'input\': [1, 55, 85]}\\n  {\'type\': \'string_type\', '
    '\'loc\': (\'body\', \'prompt\', \'list[str]\', 0), \'msg\': \'Input should be a valid string\', \'input\': 1}"'
    ',"type":"internal_server_error","param":null,"code":null}}'
)


def test_a_text_only_server_is_refused_at_once_with_the_reason():
    import httpx

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(500, text=LLAMA_CPP_IDS_REFUSAL)

    client = CompletionsClient("http://127.0.0.1:9/v1", model="m", max_retries=3, sleep=lambda _: None)
    client.http = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(TeacherServerError, match=r"token-id prompts refused.*llama-cpp-python.*farlab.teachers.serve"):
        client.prompt_topk_one([1, 55, 85], 2)
    assert seen == ["/v1/completions"] and client.retries == 0
    client.close()
