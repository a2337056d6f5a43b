"""``teacher.openai.prompt_format=text``: prompt logprobs from a server that takes *text* prompts only.

llama-cpp-python's OpenAI server refuses token-id prompts. This mode sends the decoded text instead and maps
the answer back onto the student's ids, refusing anything it cannot map exactly (wrong targets would be silent):

* **Prompt**: ``decode(ids[1:])`` with special tokens kept as text (the server parses them, and adds BOS itself);
  the sequence must start with BOS.
* **Echo check**: the echoed tokens must be the per-id texts of the ids we sent, position by position (the server
  re-tokenized our text; a different split is refused, naming the position).
* **BOS left out** (llama-cpp-python): the echo starts at the first text token, whose entry is null although
  BOS predicts it. Server entry ``i`` is then token ``i + 1``; the row of token 1 is *missing* (``PromptTopK.missing``)
  and the backend refuses a batch whose loss would read it. A server that echoes BOS is aligned without a shift.
* **Keys are token texts** (legacy ``top_logprobs``), rendered like llama.cpp renders them: special tokens as ``""``
  and incomplete UTF-8 bytes dropped. A text that no id renders to is refused (another tokenizer); a text that
  several ids render to (``""``: specials and partial UTF-8 bytes) cannot be told apart and is left out, its mass
  staying in the tail (``topk_tail: bucket`` keeps it). The server is asked for ``k + extra`` entries so that k
  identified ones remain; the row is then exactly the teacher's top k over the identifiable ids, or refused.
* **The prompt's own token** is taken from ``token_logprobs`` (exact even when its text is ambiguous).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farlab.teachers.openai_client import PromptTopK, TeacherServerError, TeacherTokenizerMismatch

ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids form, understood when a server sends it


@dataclass
class TextStats:
    """What text mode could not map, summed over requests (logged by the backend)."""

    ambiguous_entries: int = 0  # returned top-k entries whose text several ids render to (left in the tail)
    missing_rows: int = 0  # rows the server never returns (the first text token when BOS is left out)
    ambiguous_texts: dict[str, int] = field(default_factory=dict)


class TextCodec:
    """Turns student ids into a text prompt and a text-keyed answer back into ids, for one tokenizer."""

    def __init__(self, tokenizer: Any, extra: int = 8) -> None:
        self.tokenizer, self.extra = tokenizer, extra
        self.bos = tokenizer.bos_token_id
        self.texts = [self.render(i) for i in range(len(tokenizer))]
        by_text: dict[str, list[int]] = defaultdict(list)
        for i, text in enumerate(self.texts):
            by_text[text].append(i)
        self.by_text = dict(by_text)
        self.stats = TextStats()

    def render(self, i: int) -> str:
        """The text a llama.cpp-style server prints for id ``i``: specials empty, partial UTF-8 bytes dropped."""
        text = self.tokenizer.decode([i], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.replace("\ufffd", "")  # HF marks incomplete UTF-8 with U+FFFD; llama.cpp ignores the bytes

    def prompt(self, ids: list[int]) -> str:
        if self.bos is None or not ids or ids[0] != self.bos:
            raise TeacherServerError(
                f"teacher.openai.prompt_format=text needs sequences that start with BOS (id {self.bos}); this one "
                f"starts with {ids[:1]}: a text-only server adds BOS itself, so it would score another sequence "
                "(a prompt cut from the left by task.max_length loses its BOS: raise task.max_length)"
            )
        return self.tokenizer.decode(ids[1:], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def key_ids(self, key: str, j: int) -> list[int]:
        if key.startswith(ID_PREFIX):
            return [int(key[len(ID_PREFIX):])]
        found = self.by_text.get(key)
        if not found:
            raise TeacherTokenizerMismatch(
                f"text prompt position {j}: the server returned the token text {key!r}, which no id of the "
                "student's tokenizer renders to: the server's tokenizer is not the student's"
            )
        return found

    def offset(self, ids: list[int], echoed: list[str]) -> int:
        """1 when the echo leaves out BOS (llama-cpp-python), 0 when it includes it; else refuse."""
        expected = [self.texts[i] for i in ids]
        n = len(ids)
        if echoed[: n - 1] == expected[1:]:
            return 1
        if echoed[:n] == expected:
            return 0
        bad = next((i for i in range(n - 1) if i >= len(echoed) or echoed[i] != expected[i + 1]), n - 1)
        got = echoed[bad] if bad < len(echoed) else "<nothing>"
        raise TeacherTokenizerMismatch(
            f"text prompt position {bad + 1}: we sent id {ids[bad + 1]} ({expected[bad + 1]!r}) but the server's "
            f"echo there is {got!r} ({len(echoed)} echoed tokens for {n - 1} text tokens): it re-tokenized the "
            "decoded text into other ids (a different tokenizer, or text that does not round-trip through it)"
        )

    def parse(self, choice: dict[str, Any], ids: list[int], k: int) -> PromptTopK:
        """Row j: the teacher's top-k over the identifiable ids for token j given tokens < j (see module doc)."""
        lp = choice.get("logprobs") or {}
        echoed, top, own_lp = lp.get("tokens"), lp.get("top_logprobs"), lp.get("token_logprobs")
        if not echoed or top is None or own_lp is None:
            raise TeacherServerError(
                "the text-prompt teacher server returned no echoed logprobs (logprobs.tokens / top_logprobs / "
                "token_logprobs); llama-cpp-python needs --logits_all true for echo with logprobs"
            )
        offset = self.offset(ids, [str(t) for t in echoed])
        n = len(ids)
        out_ids, out_lp = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
        missing: list[int] = []
        for j in range(1, n):
            i = j - offset
            if i < 0 or top[i] is None or own_lp[i] is None:
                if i <= 0:  # nothing returned for the first echoed token: the server's convention
                    missing.append(j)
                    continue
                raise TeacherServerError(f"text prompt position {j}: the server returned no logprobs there")
            out_ids[j], out_lp[j] = self._row(top[i], ids[j], float(own_lp[i]), k, j)
        self.stats.missing_rows += len(missing)
        return PromptTopK(out_ids, out_lp, [None] * n, missing=missing)

    def _row(self, entries: dict[str, float], own: int, own_lp: float, k: int, j: int) -> tuple[list[int], list[float]]:
        others: list[tuple[int, float]] = []
        for key, value in entries.items():
            found = self.key_ids(key, j)
            if len(found) > 1:  # several ids print as this text: the value may be any of theirs
                self.stats.ambiguous_entries += 1
                self.stats.ambiguous_texts[key] = self.stats.ambiguous_texts.get(key, 0) + 1
            elif found[0] != own:
                others.append((found[0], float(value)))
        others.sort(key=lambda e: -e[1])
        # Every id the server did not return is below every returned one; the own token's value is exact.
        if len(others) >= k or (len(others) == k - 1 and others and own_lp >= others[-1][1]):
            best = sorted(others[:k] + [(own, own_lp)], key=lambda e: -e[1])[:k]
            return [e[0] for e in best], [e[1] for e in best]
        raise TeacherServerError(
            f"text prompt position {j}: only {len(others)} of the {len(entries)} returned entries map to one id each "
            f"(texts that several ids print as cannot be told apart), fewer than teacher.top_k={k}: raise "
            f"teacher.openai.text_extra_logprobs (now {self.extra})"
        )
