"""Teacher/student vocabulary checks, before training, and logit-width alignment, during it.

farlab feeds both models the same token ids and compares next-token distributions id by id, so a teacher
with another tokenizer silently learns garbage targets. :func:`check_tokenizers` compares the two tokenizers
(vocab size, special tokens, encodings of a sample of the training text) before any model loads.

Within one family the tokenizers often agree while the models' logit widths differ (embedding rows padded to a
multiple of 64/128, or a student resized to the tokenizer): ``model.vocab_align`` decides what happens then,
applied to the two views before every loss (:data:`VOCAB_ALIGN`):

* ``error`` (default): refuse before training, naming both widths;
* ``truncate``: keep the shared ids ``[0, min(V_s, V_t))``; both distributions renormalise over them
  (a sparse teacher's ids beyond the student's width are dropped);
* ``pad``: widen the narrower side with ``NEG_LOGIT`` columns (probability 0 there). Use it when the extra ids
  are padding the tokenizer never emits; mass a teacher puts there is mass the student cannot match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from farlab.data.kinds import TASK_KINDS
from farlab.errors import ConfigError
from farlab.losses.base import ModelView, TopK
from farlab.losses.divergences import NEG_LOGIT
from farlab.models.loading import load_tokenizer
from farlab.registry import Registry, unknown_choice_message

log = logging.getLogger(__name__)

SAMPLE_SIZE = 64  # training rows whose text both tokenizers encode
SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


@dataclass
class TokenizerReport:
    student_size: int
    teacher_size: int
    special_differences: list[str] = field(default_factory=list)
    encoding_differences: list[str] = field(default_factory=list)
    sampled: int = 0

    @property
    def same_encodings(self) -> bool:
        return not self.special_differences and not self.encoding_differences

    def describe(self) -> str:
        parts = [f"vocab sizes: student {self.student_size}, teacher {self.teacher_size}"]
        if self.special_differences:
            parts.append("special tokens differ: " + "; ".join(self.special_differences[:4]))
        if self.encoding_differences:
            parts.append(f"{len(self.encoding_differences)} of {self.sampled} sampled training texts encode "
                         "differently, e.g. " + self.encoding_differences[0])
        return ", ".join(parts)


def _specials(tok: Any) -> dict[str, tuple[str | None, int | None]]:
    return {a: (getattr(tok, a, None), getattr(tok, f"{a}_id", None)) for a in SPECIAL_ATTRS}


def compare_tokenizers(student: Any, teacher: Any, texts: list[str]) -> TokenizerReport:
    """Vocab sizes, special tokens (string and id) and the ids each assigns to ``texts``."""
    student, teacher = getattr(student, "tokenizer", student), getattr(teacher, "tokenizer", teacher)
    report = TokenizerReport(len(student), len(teacher), sampled=len(texts))
    s_spec, t_spec = _specials(student), _specials(teacher)
    report.special_differences = [f"{a}: student {s_spec[a]}, teacher {t_spec[a]}" for a in SPECIAL_ATTRS
                                  if s_spec[a] != t_spec[a]]
    for text in texts:
        s_ids = student(text, add_special_tokens=False)["input_ids"]
        t_ids = teacher(text, add_special_tokens=False)["input_ids"]
        if s_ids != t_ids:
            report.encoding_differences.append(f"{text[:40]!r}: student {s_ids[:8]}..., teacher {t_ids[:8]}...")
    return report


def sample_texts(data: Any, tokenizer: Any, n: int = SAMPLE_SIZE) -> list[str]:
    """Text of the first ``n`` training rows, decoded back from the student's ids."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    rows = data.train.select(range(min(n, len(data.train))))["input_ids"]
    return [t for t in (tok.decode(r, skip_special_tokens=True) for r in rows) if t.strip()]


def check_tokenizers(model_cfg: Any, plan: Any, tokenizer: Any, data: Any) -> TokenizerReport | None:
    """Compare ``model.teacher_tokenizer`` with the student's; refuse distribution losses when they disagree."""
    path = model_cfg.get("teacher_tokenizer")
    if path is None or not plan.needs_teacher:
        return None
    report = compare_tokenizers(tokenizer, load_tokenizer(path), sample_texts(data, tokenizer))
    if report.same_encodings:
        if report.student_size != report.teacher_size:
            log.info("teacher and student tokenizers agree on the sample and on special tokens (%s); logit widths "
                     "are reconciled by model.vocab_align=%s", report.describe(), model_cfg.vocab_align)
        return report
    response = plan.distribution_components
    if response:
        raise ConfigError(
            f"the teacher's tokenizer ({path}) differs from the student's ({model_cfg.tokenizer}): "
            f"{report.describe()}. "
            f"Response losses ({', '.join(response)}) compare next-token distributions id by id and need one "
            "vocabulary: use a shared tokenizer (model.teacher_tokenizer=null, a teacher trained on the student's "
            "tokenizer) or feature-only losses (e.g. loss=feature_mse)"
        )
    log.warning("teacher and student tokenizers differ (%s): the teacher reads the student's token ids; feature "
                "and attention terms compare positions of that one tokenization", report.describe())
    return report


# --------------------------------------------------------------------------------------------------
# Logit widths
# --------------------------------------------------------------------------------------------------


def logit_width(model: Any, kind: str) -> int:
    """Width of a model's output distribution: its LM head's rows, or its number of labels."""
    if not TASK_KINDS.get(kind).vocabulary_logits:
        return int(model.config.num_labels)
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)


def check_logit_widths(vocab_align: str, plan: Any, student_width: int, teacher_width: int | None) -> None:
    """Refuse mismatched widths before training when ``model.vocab_align=error`` and a distribution loss runs."""
    if teacher_width is None or teacher_width == student_width or vocab_align != "error":
        return
    response = plan.distribution_components
    if response:
        raise ConfigError(
            f"the student's logits have {student_width} entries but the teacher's have {teacher_width}; response "
            f"losses ({', '.join(response)}) need one vocabulary. If both use one tokenizer and only the embedding "
            "rows differ (padding, a resized student), set model.vocab_align=truncate or pad; otherwise use "
            "feature-only losses (e.g. loss=feature_mse) or a shared tokenizer"
        )


VocabAlign = Callable[[ModelView, ModelView], tuple[ModelView, ModelView]]
VOCAB_ALIGN: Registry[VocabAlign] = Registry("model.vocab_align")


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] >= width else F.pad(x, (0, width - x.shape[-1]), value=NEG_LOGIT)


def _replace(view: ModelView, **changes: Any) -> ModelView:
    return ModelView(**{**view.__dict__, **changes})


@VOCAB_ALIGN.register("error")
def _error(s: ModelView, t: ModelView) -> tuple[ModelView, ModelView]:
    if s.logits is None:
        return s, t
    v = s.logits.shape[-1]
    if t.logits is not None and t.logits.shape[-1] != v:
        raise ValueError(f"student logits have {v} entries, teacher logits {t.logits.shape[-1]}; "
                         "set model.vocab_align=truncate|pad if the two share a tokenizer")
    if t.topk is not None and t.topk.ids.numel() and int(t.topk.ids.max()) >= v:
        raise ValueError(f"the teacher returned token id {int(t.topk.ids.max())} but the student's logits have {v} "
                         "entries; set model.vocab_align=truncate|pad if the two share a tokenizer")
    return s, t


@VOCAB_ALIGN.register("truncate")
def _truncate(s: ModelView, t: ModelView) -> tuple[ModelView, ModelView]:
    if s.logits is None:
        return s, t
    v = s.logits.shape[-1]
    if t.logits is not None:
        n = min(v, t.logits.shape[-1])
        return _replace(s, logits=s.logits[..., :n]), _replace(t, logits=t.logits[..., :n])
    if t.topk is None or not t.topk.ids.numel() or int(t.topk.ids.max()) < v:
        return s, t
    # Ids beyond the student's width go to one extra NEG column on the student side, with teacher mass 0 there:
    # both renormalise over the shared ids.
    outside = t.topk.ids >= v
    ids = torch.where(outside, torch.full_like(t.topk.ids, v), t.topk.ids)
    logprobs = torch.where(outside, torch.full_like(t.topk.logprobs, NEG_LOGIT), t.topk.logprobs)
    return _replace(s, logits=_pad_last(s.logits, v + 1)), _replace(t, topk=TopK(ids=ids, logprobs=logprobs))


@VOCAB_ALIGN.register("pad")
def _pad(s: ModelView, t: ModelView) -> tuple[ModelView, ModelView]:
    if s.logits is None:
        return s, t
    if t.logits is not None:
        n = max(s.logits.shape[-1], t.logits.shape[-1])
        return _replace(s, logits=_pad_last(s.logits, n)), _replace(t, logits=_pad_last(t.logits, n))
    if t.topk is None or not t.topk.ids.numel():
        return s, t
    return _replace(s, logits=_pad_last(s.logits, int(t.topk.ids.max()) + 1)), t


def vocab_aligner(mode: str, kind: str) -> VocabAlign | None:
    """The aligner for a run: None for classifiers (logits are labels, not a vocabulary)."""
    return VOCAB_ALIGN.get(mode) if TASK_KINDS.get(kind).vocabulary_logits else None


def vocab_align_problems(mode: str) -> list[str]:
    return [] if mode in VOCAB_ALIGN else [unknown_choice_message("model.vocab_align", mode, VOCAB_ALIGN.names())]
