"""On-policy distillation for decoder-only tasks (GKD, Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes").

With probability ``loss.gkd.lambda_`` a training batch is replaced by the student's own sampled continuation
of each prompt (``temperature``, ``max_new_tokens``; cut after the first EOS), which the teacher then scores
through the run's backend (hf or openai: a server scores any token ids; a cache cannot hold new samples).
Everything downstream is farlab's usual path: masks from the new labels (prompt = -100), the configured
components (GKD proper is the ``jsd`` response fn with ``beta``; feature terms work with an hf teacher), and
CE is zeroed on on-policy batches (the student's own samples are not targets). ``conf/loss/gkd.yaml`` is
the paper's setup: pure generalized JSD, no CE.

Why not TRL's ``GKDTrainer``: it is an ``SFTTrainer`` subclass with its own collator (chat messages), a dense
in-process teacher and its own loss; farlab's runs need their own Trainer (checkpoints, extras, co-training,
run dirs), sparse teachers (cache, server), feature losses and one loss library. The math here is TRL's
(``jsd`` in :mod:`farlab.losses.divergences` matches ``generalized_jsd_loss``), the plumbing is farlab's.

The on-policy draw is a pure function of (seed, step, micro-batch index within the step), so a resumed run
draws the same batches; sampling uses the global torch RNG, which the Trainer checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor, nn

from farlab.errors import ConfigError


def gkd_problems(gkd: Any, plan: Any) -> list[str]:
    """Model-free checks of ``loss.gkd`` (range of each field, a teacher to score the samples)."""
    if gkd is None:
        return []
    problems = []
    if not 0.0 <= gkd.lambda_ <= 1.0:
        problems.append(f"loss.gkd.lambda_={gkd.lambda_} must be in [0, 1] (the fraction of on-policy batches)")
    if gkd.temperature <= 0:
        problems.append(f"loss.gkd.temperature={gkd.temperature} must be > 0 (student sampling temperature)")
    if gkd.max_new_tokens < 1:
        problems.append(f"loss.gkd.max_new_tokens={gkd.max_new_tokens} must be >= 1")
    if gkd.lambda_ > 0 and not plan.needs_teacher:
        problems.append("loss.gkd needs a teacher loss to score the student's samples (alpha > 0 and components)")
    return problems


class OnPolicySampler:
    """Decides which batches are on-policy and builds them from the student's samples."""

    def __init__(self, lambda_: float, temperature: float, max_new_tokens: int, pad_token_id: int,
                 eos_token_id: int | None, seed: int) -> None:
        self.lambda_, self.temperature, self.max_new_tokens = float(lambda_), float(temperature), int(max_new_tokens)
        self.pad_token_id, self.eos_token_id, self.seed = pad_token_id, eos_token_id, seed
        self._step, self._micro = -1, 0

    @classmethod
    def from_config(cls, gkd: Any, tokenizer: Any, seed: int) -> OnPolicySampler:
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        return cls(gkd.lambda_, gkd.temperature, gkd.max_new_tokens, tok.pad_token_id, tok.eos_token_id, seed)

    def use(self, step: int) -> bool:
        if step != self._step:
            self._step, self._micro = step, 0
        draw = random.Random(f"{self.seed}:{step}:{self._micro}").random()
        self._micro += 1
        return draw < self.lambda_

    @torch.no_grad()
    def sample(self, student: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prompt (the real tokens before the first label) + the student's sampled continuation, right-padded."""
        ids, mask, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
        target = (labels != -100) & mask
        lengths = mask.sum(1)
        prompt_lengths = torch.where(target.any(1), target.int().argmax(1), lengths).tolist()
        prompts = [ids[b, :n].tolist() for b, n in enumerate(prompt_lengths)]
        width = max(max(prompt_lengths), 1)
        left = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=ids.device)
        left_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=ids.device)
        was_training = student.training
        student.eval()
        try:
            generated = student.generate(
                input_ids=left, attention_mask=left_mask, do_sample=True, temperature=self.temperature,
                top_k=0, top_p=1.0, max_new_tokens=self.max_new_tokens,
                pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            )[:, width:].tolist()
        finally:
            student.train(was_training)
        rows, row_labels = [], []
        for prompt, completion in zip(prompts, generated):
            if self.eos_token_id is not None and self.eos_token_id in completion:
                completion = completion[: completion.index(self.eos_token_id) + 1]  # keep the EOS, drop the rest
            rows.append(prompt + completion)
            row_labels.append([-100] * len(prompt) + completion)
        full = max(len(r) for r in rows)

        def pad(seqs: list[list[int]], value: int) -> Tensor:
            return torch.tensor([s + [value] * (full - len(s)) for s in seqs], device=ids.device)

        return {
            "input_ids": pad(rows, self.pad_token_id),
            "attention_mask": pad([[1] * len(r) for r in rows], 0),
            "labels": pad(row_labels, -100),
        }


def build_on_policy(gkd: Any, task_kind: Any, tokenizer: Any, seed: int) -> OnPolicySampler | None:
    """The run's sampler for ``loss.gkd`` (None when unset); refuses tasks whose student does not generate text."""
    if gkd is None:
        return None
    if not task_kind.decoder_only:
        raise ConfigError(f"loss.gkd samples continuations from a decoder-only student; this task is "
                          f"{task_kind.name!r}: drop loss.gkd (e.g. a response_* loss)")
    return OnPolicySampler.from_config(gkd, tokenizer, seed)
