"""A client for OpenAI-compatible ``/v1/completions`` servers that return the teacher's *prompt* logprobs.

Token ids as the prompt, ``echo`` + ``logprobs=k`` + ``prompt_logprobs=k`` (vLLM's extension; vLLM maps
echo+logprobs onto it anyway), ``max_tokens=1`` (the servers refuse 0 or need a completion). One sequence per
request by default, ``concurrency`` requests in flight; ``prompts_per_request > 1`` sends a list of token-id
prompts per request instead (one choice per prompt, matched by its ``index``), which saves round trips to a
remote server. Works with vLLM, sglang's OpenAI layer and ``python -m farlab.teachers.serve``.
Text-only servers (llama-cpp-python): ``prompt_format=text`` sends the decoded text instead
(:mod:`farlab.teachers.openai_text`).

Known quirks, and what this client does about them:

* **Normalised log-probs, not logits.** Entries are ``log p_T=1(token | prefix)``; the loss works on those
  directly (``TopK.logprobs``), never on logits.
* **Temperature is not applied to prompt logprobs** (the request's ``temperature`` only shapes sampling). The
  response loss re-tempers on the client: over the k returned tokens,
  ``p_T(i) = p(i)^(1/T) / sum_j p(j)^(1/T) = softmax(logprob / T)`` (see
  :func:`farlab.losses.divergences.topk_logprobs`), exactly the dense ``softmax(z / T)`` restricted to the top-k.
* **vLLM caps k at 20** (``--max-logprobs``, default 20): a larger ``teacher.top_k`` gets HTTP 400
  "... greater than max allowed: 20"; the error says to relaunch with ``--max-logprobs K`` or lower k.
* **k + 1 entries**: a position's dict also carries the prompt's own token when it is outside the top-k;
  entries are sorted by log-prob and the first k kept.
* **The first position has none** (``None``): nothing predicts the first token. Logprobs at prompt position j
  predict token j, so the student's position t (which predicts t + 1) gets the server's entry t + 1.
* **Prefix caching** (vLLM ``--enable-prefix-caching``) can serve cached prefixes without prompt logprobs; a
  missing entry past position 0 is refused with the hint to launch with ``--no-enable-prefix-caching``.
* **Same tokenizer required**: the returned tokens are compared with the local tokenizer's decode of the ids
  we sent; a mismatch is refused (a different vocabulary would silently produce garbage targets).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from farlab.registry import Registry

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
TOKEN_MISMATCH_TOLERANCE = 0.02  # detokenizers differ on rare byte-level edge cases; more is a different tokenizer


class TeacherServerError(RuntimeError):
    """The teacher server is unreachable, refused a request, or answered something farlab cannot use."""


class TeacherTokenizerMismatch(TeacherServerError):
    """The server's tokenizer is not the student's."""


@dataclass
class PromptTopK:
    """Top-k log-probs of one sequence: row j holds the distribution of token j given tokens < j (row 0 unused)."""

    ids: np.ndarray  # int64 [L, k]
    logprobs: np.ndarray  # float32 [L, k]
    tokens: list[str | None]  # what the server says token j is (for the tokenizer check); None when absent
    missing: list[int] = field(default_factory=list)  # rows the server never returns (text prompts without BOS)


# --------------------------------------------------------------------------------------------------
# Response formats
# --------------------------------------------------------------------------------------------------


def _top(entries: list[tuple[int, float]], k: int, j: int) -> tuple[list[int], list[float]]:
    """The k most likely (id, logprob) of one position; drops the k+1-th (the prompt's own token)."""
    if len(entries) < k:
        raise TeacherServerError(
            f"prompt position {j}: the server returned {len(entries)} logprobs, fewer than teacher.top_k={k}"
        )
    entries = sorted(entries, key=lambda e: -e[1])[:k]
    return [e[0] for e in entries], [e[1] for e in entries]


def _missing(j: int) -> TeacherServerError:
    return TeacherServerError(
        f"the server returned no prompt logprobs for position {j}; with vLLM, prefix caching serves cached "
        "prefixes without them: launch it with --no-enable-prefix-caching"
    )


def _parse_prompt_logprobs(choice: dict[str, Any], ids: list[int], k: int) -> PromptTopK | None:
    """vLLM: ``choices[0].prompt_logprobs = [None, {"<id>": {"logprob", "rank", "decoded_token"}}, ...]``."""
    plp = choice.get("prompt_logprobs")
    if plp is None:
        return None
    if len(plp) < len(ids):
        raise TeacherServerError(f"the server returned {len(plp)} prompt positions for a {len(ids)}-token prompt")
    out_ids, out_lp = np.zeros((len(ids), k), np.int64), np.zeros((len(ids), k), np.float32)
    tokens: list[str | None] = [None] * len(ids)
    for j in range(1, len(ids)):
        entry = plp[j]
        if not entry:
            raise _missing(j)
        own = entry.get(str(ids[j])) or entry.get(ids[j])  # type: ignore[call-overload]
        tokens[j] = own.get("decoded_token") if isinstance(own, dict) else None
        top_ids, top_lp = _top([(int(t), float(v["logprob"])) for t, v in entry.items()], k, j)
        out_ids[j], out_lp[j] = top_ids, top_lp
    return PromptTopK(out_ids, out_lp, tokens)


def _parse_echo_logprobs(
    choice: dict[str, Any], ids: list[int], k: int, token_to_id: Callable[[str], int | None]
) -> PromptTopK | None:
    """OpenAI legacy echo: ``logprobs.tokens`` / ``top_logprobs`` keyed by token string or ``token_id:N``."""
    lp = choice.get("logprobs")
    if not lp or not lp.get("top_logprobs"):
        return None
    top, tokens_out = lp["top_logprobs"], lp.get("tokens") or []
    if len(top) < len(ids):
        raise TeacherServerError(f"the server echoed {len(top)} positions for a {len(ids)}-token prompt")

    def to_id(key: str) -> int:
        if key.startswith("token_id:"):
            return int(key[len("token_id:"):])
        tid = token_to_id(key)
        if tid is None:
            raise TeacherServerError(
                f"cannot map the returned token {key!r} to an id; ask for ids (return_tokens_as_token_ids) "
                "or use a server that returns prompt_logprobs"
            )
        return tid

    out_ids, out_lp = np.zeros((len(ids), k), np.int64), np.zeros((len(ids), k), np.float32)
    tokens: list[str | None] = [tokens_out[j] if j < len(tokens_out) else None for j in range(len(ids))]
    for j in range(1, len(ids)):
        if not top[j]:
            raise _missing(j)
        out_ids[j], out_lp[j] = _top([(to_id(t), float(v)) for t, v in top[j].items()], k, j)
    return PromptTopK(out_ids, out_lp, tokens)


ResponseParser = Callable[..., PromptTopK | None]
RESPONSE_FORMATS: Registry[ResponseParser] = Registry("teacher server response format")
RESPONSE_FORMATS.add("prompt_logprobs", lambda choice, ids, k, token_to_id: _parse_prompt_logprobs(choice, ids, k))
RESPONSE_FORMATS.add("echo_logprobs", _parse_echo_logprobs)
FORMAT_PREFERENCE = ("prompt_logprobs", "echo_logprobs")  # ids as keys beat token strings


def verify_tokens(ids: list[int], returned: list[str | None], decode: Callable[[int], str]) -> None:
    """Refuse a server whose tokens are not what the local tokenizer decodes our ids to."""
    compared, bad = 0, []
    for j, (tid, text) in enumerate(zip(ids, returned)):
        if text is None:
            continue
        compared += 1
        expected = f"token_id:{tid}" if text.startswith("token_id:") else decode(tid)
        if text != expected:
            bad.append((j, tid, text, expected))
    if compared and len(bad) > max(1, TOKEN_MISMATCH_TOLERANCE * compared):
        examples = "; ".join(f"position {j}: id {t} is {s!r} on the server, {e!r} locally" for j, t, s, e in bad[:3])
        raise TeacherTokenizerMismatch(
            f"the teacher server's tokenizer differs from the student's ({len(bad)} of {compared} tokens differ: "
            f"{examples}). Prompt logprobs are only usable with one shared vocabulary: serve a teacher with the "
            "student's tokenizer"
        )


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------


class CompletionsClient:
    """Prompt top-k logprobs from a server, with timeouts, retries with exponential backoff and a concurrency cap."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        concurrency: int = 8,
        prompts_per_request: int = 1,
        decode: Callable[[int], str] | None = None,
        token_to_id: Callable[[str], int | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        text_codec: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout_s, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency))
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher-http")
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.prompts_per_request = prompts_per_request
        self.decode, self.token_to_id, self.sleep = decode, token_to_id or (lambda _: None), sleep
        self._model = model
        self.text_codec = text_codec  # a farlab.teachers.openai_text.TextCodec: text prompts (prompt_format=text)
        self.retries = 0  # total retries so far (logged; tests read it)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        start, last = time.monotonic(), ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                self.retries += 1
                log.warning("teacher server %s: %s; retry %d/%d in %.1fs", url, last, attempt, self.max_retries, delay)
                self.sleep(delay)
            try:
                response = self.http.request(method, url, json=body)
            except httpx.TransportError as err:  # refused, reset, DNS, timeouts
                last = f"{type(err).__name__}: {err}"
                continue
            if _refuses_token_ids(response):  # a 500 that every retry would get again
                raise TeacherServerError(self._refusal(url, response))
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise TeacherServerError(self._refusal(url, response))
            return response.json()
        raise TeacherServerError(
            f"the teacher server at {self.base_url} did not answer after {self.max_retries + 1} attempts over "
            f"{time.monotonic() - start:.1f}s (last error: {last}). Is it running? Start one with "
            "`python -m farlab.teachers.serve --model <folder>` or vLLM (--no-enable-prefix-caching), and check "
            "teacher.openai.base_url"
        )

    @staticmethod
    def _refusal(url: str, response: httpx.Response) -> str:
        text = response.text[:500]
        hint = ""
        if _refuses_token_ids(response):
            text = "the prompt must be a string (token-id prompts refused)"
            hint = (" This server takes text prompts only (llama-cpp-python's server does, and answers HTTP 500); "
                    "farlab sends token ids so the teacher scores exactly the student's tokens: set "
                    "teacher.openai.prompt_format=text (text prompts, checked against the ids), or serve the "
                    "teacher with vLLM, sglang or `python -m farlab.teachers.serve` (docs/teachers.md)")
        elif "max allowed" in text or "max_logprobs" in text:
            hint = (" vLLM caps logprobs at --max-logprobs (default 20): relaunch it with --max-logprobs K, or "
                    "lower teacher.top_k")
        return f"the teacher server refused the request ({url}: HTTP {response.status_code}: {text}).{hint}"

    @property
    def model(self) -> str:
        if self._model is None:
            listed = self._request("GET", "/models").get("data") or []
            if not listed:
                raise TeacherServerError(f"{self.base_url}/models lists no model; set teacher.openai.model")
            self._model = str(listed[0]["id"])
        return self._model

    # ---- API --------------------------------------------------------------------------------------

    def prompt_topk_one(self, ids: list[int], k: int) -> PromptTopK:
        return self.prompt_topk_request([ids], k)[0]

    def prompt_topk_request(self, prompts: list[list[int]], k: int) -> list[PromptTopK]:
        """One request for ``prompts`` (a bare id list when there is one, as every server accepts that)."""
        if self.text_codec is not None:
            return self._text_request(prompts, k)
        body = {
            "model": self.model,
            "prompt": list(prompts[0]) if len(prompts) == 1 else [list(ids) for ids in prompts],
            "max_tokens": 1,
            "temperature": 1.0,  # irrelevant to prompt logprobs (never tempered); see the module docstring
            "echo": True,
            "logprobs": k,
            "prompt_logprobs": k,
            "return_tokens_as_token_ids": True,
        }
        choices = self._choices(body, len(prompts), "prompts", "it may not accept a list of prompts")
        return [self._parse_choice(choice, list(ids), k) for choice, ids in zip(choices, prompts)]

    def _text_request(self, prompts: list[list[int]], k: int) -> list[PromptTopK]:
        """``prompt_format=text``: decoded text prompts, answers mapped back onto the ids we sent."""
        codec = self.text_codec
        texts = [codec.prompt(list(ids)) for ids in prompts]
        body = {
            "model": self.model,
            "prompt": texts[0] if len(texts) == 1 else texts,
            "max_tokens": 1,  # llama-cpp-python reads 0 as "until the context is full"
            "temperature": 1.0,
            "echo": True,
            "logprobs": k + codec.extra,  # room for entries whose text several ids share (left out)
        }
        choices = self._choices(body, len(prompts), "text prompts", "llama-cpp-python takes one prompt per request")
        return [codec.parse(choice, list(ids), k) for choice, ids in zip(choices, prompts)]

    def _choices(self, body: dict[str, Any], n: int, what: str, why: str) -> list[dict[str, Any]]:
        """POST /completions; its choices in prompt order, refused unless there is one per prompt."""
        choices = self._request("POST", "/completions", body).get("choices") or []
        if len(choices) != n:
            hint = f"; {why}: set teacher.openai.prompts_per_request=1" if n > 1 else ""
            raise TeacherServerError(f"the teacher server answered {len(choices)} choices for {n} {what}{hint}")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _parse_choice(self, choice: dict[str, Any], ids: list[int], k: int) -> PromptTopK:
        for name in FORMAT_PREFERENCE:
            parsed = RESPONSE_FORMATS.get(name)(choice, ids, k, self.token_to_id)
            if parsed is not None:
                if self.decode is not None:
                    verify_tokens(ids, parsed.tokens, self.decode)
                return parsed
        raise TeacherServerError(
            "the teacher server returned neither prompt_logprobs nor echoed logprobs; it must support echo with "
            f"logprobs on /v1/completions (formats understood: {', '.join(RESPONSE_FORMATS)})"
        )

    def prompt_topk(self, sequences: list[list[int]], k: int) -> list[PromptTopK]:
        """``prompts_per_request`` sequences per request, at most ``concurrency`` in flight; order preserved."""
        step = self.prompts_per_request
        groups = [sequences[i : i + step] for i in range(0, len(sequences), step)]
        return [r for group in self.pool.map(lambda g: self.prompt_topk_request(g, k), groups) for r in group]

    def generate_one(self, ids: list[int], n: int, max_tokens: int, temperature: float, top_p: float = 1.0,
                     seed: int | None = None, stop: list[str] | None = None) -> list[str]:
        """``n`` completions of one token-id prompt (temperature 0 = greedy), in choice-index order."""
        body: dict[str, Any] = {"model": self.model, "prompt": list(ids), "max_tokens": max_tokens,
                                "temperature": temperature, "n": n}
        if temperature > 0:
            body["top_p"] = top_p
            if seed is not None:
                body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        choices = self._request("POST", "/completions", body).get("choices") or []
        if len(choices) != n:
            raise TeacherServerError(f"the teacher server answered {len(choices)} choices for n={n}")
        return [str(c.get("text") or "") for c in sorted(choices, key=lambda c: c.get("index", 0))]

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None) -> list[list[str]]:
        """Completions of each prompt (``/v1/completions``), ``concurrency`` requests in flight; prompt i is
        sampled with ``seed + i`` so a rebuild gives the same texts on servers that honour ``seed`` (vLLM)."""
        def one(i: int) -> list[str]:
            return self.generate_one(prompts[i], n, max_tokens, temperature, top_p,
                                     None if seed is None else seed + i, stop)

        return list(self.pool.map(one, range(len(prompts))))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _refuses_token_ids(response: httpx.Response) -> bool:
    """llama-cpp-python's server: a pydantic error on ``prompt`` (str | list[str]) for our id list, as HTTP 500."""
    return response.status_code >= 400 and "'prompt'" in response.text and "valid string" in response.text


def retemper(logprobs: np.ndarray, temperature: float) -> np.ndarray:
    """``log(p^(1/T) / sum p^(1/T))`` over the last axis: the client-side temperature for top-k logprobs."""
    z = logprobs / temperature
    return z - (np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) + z.max(-1, keepdims=True))


def api_key_from_env(name: str) -> str | None:
    return os.environ.get(name) or None


__all__ = ["CompletionsClient", "PromptTopK", "TeacherServerError", "TeacherTokenizerMismatch", "retemper",
           "verify_tokens", "RESPONSE_FORMATS"]
