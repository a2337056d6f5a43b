"""``teacher.backend=openai``: teacher top-k prompt logprobs from an OpenAI-compatible server (vLLM, sglang,
``python -m farlab.teachers.serve``; llama-cpp-python with ``prompt_format=text``). Decoder-only tasks, response
losses only: a server returns no hidden states or attention maps. Quirks and the client-side temperature: :mod:`farlab.teachers.openai_client`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from farlab.losses.base import ModelView
from farlab.registry import unknown_choice_message
from farlab.teachers.backends.base import DEFAULT_TOP_K, PreparedTeacher, TeacherBackend, TeacherOutput, filler_topk
from farlab.teachers.openai_client import CompletionsClient, TeacherServerError, api_key_from_env
from farlab.teachers.openai_text import TextCodec

PROMPT_FORMATS = ("ids", "text")  # teacher.openai.prompt_format: token-id prompts, or decoded text (text-only servers)

log = logging.getLogger(__name__)


class OpenAIBackend(TeacherBackend):
    name = "openai"

    def __init__(self, client: CompletionsClient, k: int) -> None:
        self.client, self.k = client, k
        self.masked_positions, self._reported = 0, False  # rows the server never returns (text prompts)

    def __call__(
        self, batch: dict[str, Tensor], *, hidden_states: bool, attentions: bool, grad: bool, detach: bool
    ) -> TeacherOutput:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = mask.sum(1).tolist()
        if any(not bool(mask[b, :n].all()) or bool(mask[b, n:].any()) for b, n in enumerate(lengths)):
            raise TeacherServerError("the openai teacher backend needs right-padded batches")
        sequences = [ids[b, :n].tolist() for b, n in enumerate(lengths)]
        results = self.client.prompt_topk(sequences, self.k)
        self._check_missing(batch, results)
        out = filler_topk(tuple(ids.shape), self.k)
        for b, (n, result) in enumerate(zip(lengths, results)):
            if n > 1:  # the server's row j predicts token j; the student's position t predicts t + 1
                out.ids[b, : n - 1] = torch.from_numpy(result.ids[1:n])
                out.logprobs[b, : n - 1] = torch.from_numpy(result.logprobs[1:n])
        out.ids, out.logprobs = out.ids.to(ids.device), out.logprobs.to(ids.device)
        return TeacherOutput(view=ModelView(topk=out), loss=None, forwards=1)

    def _check_missing(self, batch: dict[str, Tensor], results: list[Any]) -> None:
        """Rows the server never returned (text prompts, BOS left out: the first text token's row) get a filler
        row at the student position before them, which must lie outside every loss's response mask."""
        labels = batch.get("labels")
        for b, result in enumerate(results):
            for row in result.missing:  # row j is read by the student position j - 1, a target iff labels[j] is
                if labels is None or int(labels[b, row]) != -100:
                    raise TeacherServerError(
                        f"the teacher server returns no distribution for token {row} of sequence {b} (a text-only "
                        "server leaves out BOS, so the first text token is never scored), but that token is a "
                        "training target here: prompt_format=text needs at least one prompt token before the "
                        "response, or use prompt_format=ids with vLLM, sglang or farlab.teachers.serve")
            self.masked_positions += len(result.missing)
        if self.masked_positions and not self._reported:
            self._reported = True
            log.info("teacher server: %d position(s) in the first batch have no teacher row (the text prompt's "
                     "first token, BOS left out by the server); each lies outside the response mask",
                     self.masked_positions)


def _token_to_id(tokenizer: Any) -> Any:
    """Map a returned token string back to its id (echo format without ids); None when absent or ambiguous."""
    table: dict[str, int | None] = {}

    def lookup(text: str) -> int | None:
        if not table:
            for i in range(len(tokenizer)):
                piece = tokenizer.decode([i])
                table[piece] = None if piece in table else i
        return table.get(text)

    return lookup


def make_client(o: Any, tokenizer: Any) -> CompletionsClient:
    """A client for the ``teacher.openai`` settings ``o``."""
    return CompletionsClient(
        base_url=o.base_url,
        model=o.model,
        api_key=api_key_from_env(o.api_key_env),
        timeout_s=o.timeout_s,
        max_retries=o.max_retries,
        backoff_s=o.backoff_s,
        max_backoff_s=o.max_backoff_s,
        concurrency=o.concurrency,
        prompts_per_request=o.prompts_per_request,
        decode=lambda i: tokenizer.decode([i]),
        token_to_id=_token_to_id(tokenizer),
        text_codec=TextCodec(tokenizer, o.text_extra_logprobs) if o.prompt_format == "text" else None,
    )


def prepare_openai(ctx: Any, load_teacher: Any = None) -> PreparedTeacher:
    """A client for the configured server; the teacher model is never loaded here (``load_teacher`` unused)."""
    from farlab.errors import ConfigError
    from farlab.losses.objective import ModelShape
    from farlab.models.loading import head_for, spec_shape

    if not ctx.data.task_kind.decoder_only:
        raise ConfigError(f"teacher.backend=openai serves decoder-only teachers; task {ctx.data.name!r} is "
                          f"{ctx.data.kind!r}: use teacher=hf or teacher=cache")
    settings = ctx.settings
    k = settings.backend.top_k or DEFAULT_TOP_K
    client = make_client(settings.backend.openai, ctx.tokenizer)
    log.info("teacher server %s (model %s), top-k %d", settings.backend.openai.base_url, client.model, k)
    if settings.model.teacher.get("dtype", "float32") != "float32":  # the server's weights are the server's business
        log.info("model.teacher.dtype=%s: a server runs its own dtype (python -m farlab.teachers.serve --dtype %s, "
                 "vLLM --dtype)", settings.model.teacher.dtype, settings.model.teacher.dtype)
    try:
        shape = spec_shape(settings.model.teacher, head_for(ctx.data))
    except Exception:  # noqa: BLE001 - the teacher may exist only on the server; response losses need no shape
        shape = ModelShape(num_layers=0, hidden_size=0)
    return PreparedTeacher(model=None, shape=shape, vocab_size=None, metrics=None,
                           make_backend=lambda _teacher: OpenAIBackend(client, k))


def validate_openai(cfg: Any, plan: Any) -> list[str]:
    o = cfg.teacher.openai
    problems = []
    if not str(o.base_url).startswith(("http://", "https://")):
        problems.append(f"teacher.openai.base_url={o.base_url!r} must start with http:// or https://")
    if o.timeout_s <= 0:
        problems.append(f"teacher.openai.timeout_s={o.timeout_s} must be > 0")
    if o.max_retries < 0:
        problems.append(f"teacher.openai.max_retries={o.max_retries} must be >= 0")
    if o.concurrency < 1:
        problems.append(f"teacher.openai.concurrency={o.concurrency} must be >= 1")
    if o.prompt_format not in PROMPT_FORMATS:
        problems.append(unknown_choice_message("teacher.openai.prompt_format", o.prompt_format, PROMPT_FORMATS))
    if o.text_extra_logprobs < 0:
        problems.append(f"teacher.openai.text_extra_logprobs={o.text_extra_logprobs} must be >= 0")
    if o.prompts_per_request < 1:
        problems.append(f"teacher.openai.prompts_per_request={o.prompts_per_request} must be >= 1")
    if o.backoff_s < 0 or o.max_backoff_s < o.backoff_s:
        problems.append(f"teacher.openai backoff: need 0 <= backoff_s ({o.backoff_s}) "
                        f"<= max_backoff_s ({o.max_backoff_s})")
    return problems
