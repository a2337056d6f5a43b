"""A small OpenAI-compatible teacher server: a local Hugging Face causal LM's prompt logprobs, vLLM's format.

    python -m farlab.teachers.serve --model <HF folder> [--tokenizer <folder>] [--host 127.0.0.1]
                                    [--port 8000 (0 = any free port)] [--max-logprobs 20] [--name NAME]
                                    [--dtype float32|bfloat16|float16]

For users without vLLM, and for the tests (a real HTTP server process). Endpoints: ``GET /health``,
``GET /v1/models``, ``POST /v1/completions`` with ``prompt`` as text, token ids, or a list of either;
``echo``, ``logprobs`` (top-k per echoed/generated token, OpenAI legacy shape), ``prompt_logprobs`` (vLLM's
extension: ``[None, {"<id>": {"logprob", "rank", "decoded_token"}}, ...]``, top-k plus the prompt's own token),
``max_tokens`` (greedy at ``temperature`` 0, else sampled with ``top_p``), ``n`` completions per prompt
(choice ``p * n + j``, vLLM's order) and ``seed`` (sample ``j`` uses ``seed + j``). Log-probs are ``log_softmax`` of the raw logits
(T = 1), as vLLM returns them; requests over ``--max-logprobs`` get vLLM's 400 error. One forward at a time
(a lock), requests handled on threads. Prints ``serving <name> on http://host:port/v1`` once listening.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from farlab.models.precision import MODEL_DTYPES

log = logging.getLogger("farlab.teachers.serve")


class BadRequest(ValueError):
    """Answered with HTTP 400 and the message (vLLM's error shape)."""


class LogprobModel:
    """The served model: prompt top-k logprobs and short greedy/sampled completions."""

    def __init__(self, model_dir: str, tokenizer_dir: str | None, name: str, max_logprobs: int,
                 dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=MODEL_DTYPES.get(dtype)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
        self.name, self.max_logprobs = name, max_logprobs
        self.lock = threading.Lock()

    def _decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            return [self.tokenizer(prompt)["input_ids"]]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt:
            return [p for item in prompt for p in self._prompts(item)]
        raise BadRequest("prompt must be a string, a list of token ids, or a list of either")

    def _check_k(self, what: str, k: int | None) -> None:
        if k is not None and (k < 0 or k > self.max_logprobs):
            raise BadRequest(f"Requested {what} logprobs of {k}, which is greater than max allowed: "
                             f"{self.max_logprobs}")

    def _entries(self, logprobs: torch.Tensor, k: int, own: int | None) -> list[tuple[int, float, int]]:
        """(id, logprob, rank) of the top-k, plus the given token (with its true rank) when outside them."""
        values, ids = logprobs.topk(k)
        out = [(int(i), float(v), r + 1) for r, (v, i) in enumerate(zip(values.tolist(), ids.tolist()))]
        if own is not None and own not in ids.tolist():
            out.append((own, float(logprobs[own]), int((logprobs > logprobs[own]).sum()) + 1))
        return out

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = self._prompts(body.get("prompt"))
        echo, k_echo, k_prompt = bool(body.get("echo")), body.get("logprobs"), body.get("prompt_logprobs")
        self._check_k("sample", k_echo)
        self._check_k("prompt", k_prompt)
        max_tokens, temperature = int(body.get("max_tokens") or 16), float(body.get("temperature", 1.0) or 0.0)
        n, seed, top_p = int(body.get("n") or 1), body.get("seed"), float(body.get("top_p") or 1.0)
        choices = []
        for p, ids in enumerate(prompts):  # vLLM's order: choice p * n + j is sample j of prompt p
            for j in range(n):
                with self.lock, torch.no_grad():
                    if seed is not None:
                        torch.manual_seed(int(seed) + j)
                    generated, gen_logprobs = self._generate(ids, max_tokens, temperature, top_p)
                choices.append(self._choice(p * n + j, ids, generated, gen_logprobs, echo, k_echo, k_prompt))
        n_prompt = sum(len(p) for p in prompts)
        n_gen = sum(len(c["_generated"]) for c in choices)
        for c in choices:
            del c["_generated"]
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
            "model": self.name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen},
        }

    def _generate(self, ids: list[int], max_tokens: int, temperature: float,
                  top_p: float = 1.0) -> tuple[list[int], torch.Tensor]:
        """Greedy/sampled (nucleus ``top_p``) continuation; returns it and the log-probs of every position."""
        seq = list(ids)
        for _ in range(max_tokens):
            logits = self.model(torch.tensor([seq])).logits[0, -1].float()
            nxt = int(torch.multinomial(_nucleus(torch.softmax(logits / temperature, -1), top_p), 1)) \
                if temperature > 0 else int(logits.argmax())
            seq.append(nxt)
            if nxt == self.tokenizer.eos_token_id:
                break
        logprobs = torch.log_softmax(self.model(torch.tensor([seq])).logits[0].float(), dim=-1)
        return seq[len(ids):], logprobs

    def _choice(self, index: int, ids: list[int], generated: list[int], logprobs: torch.Tensor, echo: bool,
                k_echo: int | None, k_prompt: int | None) -> dict[str, Any]:
        seq = ids + generated
        choice: dict[str, Any] = {"index": index, "finish_reason": "length", "_generated": generated,
                                  "text": self.tokenizer.decode(seq if echo else generated, skip_special_tokens=not echo),
                                  "stop_reason": None}
        if k_prompt is not None:
            # Row j: distribution of token j given tokens < j, i.e. the logits at j - 1; nothing predicts token 0.
            choice["prompt_logprobs"] = [None] + [
                {str(i): {"logprob": lp, "rank": r, "decoded_token": self._decode(i)}
                 for i, lp, r in self._entries(logprobs[j - 1], k_prompt, ids[j])}
                for j in range(1, len(ids))
            ]
            choice["prompt_token_ids"] = ids
        if k_echo is not None:
            shown = range(0 if echo else len(ids), len(seq))
            tokens = [self._decode(seq[j]) for j in shown]
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": [None if j == 0 else float(logprobs[j - 1, seq[j]]) for j in shown],
                "top_logprobs": [None if j == 0 else {self._decode(i): lp for i, lp, _ in
                                                      self._entries(logprobs[j - 1], k_echo, seq[j])} for j in shown],
                "text_offset": offsets,
            }
        return choice


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (1.0 = all)."""
    if top_p >= 1.0:
        return probs
    values, order = probs.sort(descending=True)
    keep = values.cumsum(-1) - values < top_p  # a token stays while the mass before it is below top_p
    return torch.zeros_like(probs).scatter(-1, order, values * keep)


def make_handler(model: LogprobModel, verbose: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": model.name, "object": "model", "owned_by": "farlab", "max_logprobs": model.max_logprobs}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._error(404, f"no route {self.path}; this server has /v1/completions")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if body.get("model") not in (None, model.name):
                    raise BadRequest(f"The model `{body.get('model')}` does not exist; this server has {model.name!r}")
                self._send(200, model.complete(body))
            except (BadRequest, json.JSONDecodeError) as err:
                self._error(400, str(err))
            except Exception as err:  # noqa: BLE001 - a server answers 500 instead of dying
                log.exception("request failed")
                self._error(500, f"{type(err).__name__}: {err}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            if verbose:
                super().log_message(format, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m farlab.teachers.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local Hugging Face causal-LM folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--name", default=None, help="served model name (default: the --model path)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port (printed at start)")
    parser.add_argument("--max-logprobs", type=int, default=20, help="largest k a request may ask for (vLLM's cap)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES.names(),
                        help="the served weights' dtype (as model.teacher.dtype for in-process teachers)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = LogprobModel(args.model, args.tokenizer, args.name or args.model, args.max_logprobs, args.dtype)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, args.verbose))
    host, port = server.server_address[:2]
    print(f"serving {model.name} on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
