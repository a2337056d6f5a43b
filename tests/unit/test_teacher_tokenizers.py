"""Vocabulary alignment of teacher and student views, and tokenizer comparison, on tensors and real tokenizers."""

from __future__ import annotations

import pytest
import torch

from farlab.config import REPO_ROOT
from farlab.losses.base import ModelView, TopK
from farlab.losses.divergences import divergence
from farlab.losses.response import ResponseLoss
from farlab.models.loading import load_tokenizer
from farlab.teachers.tokenizers import VOCAB_ALIGN, compare_tokenizers

ASSETS = REPO_ROOT / "farlab" / "assets"


def test_truncate_and_pad_reconcile_dense_logits():
    s, t = torch.randn(2, 3, 10), torch.randn(2, 3, 12)
    with pytest.raises(ValueError, match="vocab_align=truncate|pad"):
        VOCAB_ALIGN.get("error")(ModelView(logits=s), ModelView(logits=t))
    a, b = VOCAB_ALIGN.get("truncate")(ModelView(logits=s), ModelView(logits=t))
    assert a.logits.shape == b.logits.shape == (2, 3, 10) and torch.equal(b.logits, t[..., :10])
    a, b = VOCAB_ALIGN.get("pad")(ModelView(logits=s), ModelView(logits=t))
    assert a.logits.shape == b.logits.shape == (2, 3, 12) and torch.equal(b.logits, t)
    # Padding columns carry probability 0: with the extra teacher ids empty too, pad equals the shared-vocab loss.
    t_empty = torch.cat([t[..., :10], torch.full((2, 3, 2), -1e9)], -1)
    a, b = VOCAB_ALIGN.get("pad")(ModelView(logits=s), ModelView(logits=t_empty))
    torch.testing.assert_close(divergence("kl", a.logits, b.logits), divergence("kl", s, t[..., :10]))


def test_a_sparse_teacher_with_ids_beyond_the_student_is_aligned():
    s = torch.randn(1, 2, 6)
    top = TopK(ids=torch.tensor([[[0, 7, 2], [3, 4, 5]]]), logprobs=torch.log(torch.tensor([[[0.5, 0.3, 0.2]] * 2])))
    with pytest.raises(ValueError, match="token id 7"):
        VOCAB_ALIGN.get("error")(ModelView(logits=s), ModelView(topk=top))
    a, b = VOCAB_ALIGN.get("truncate")(ModelView(logits=s), ModelView(topk=top))
    loss = ResponseLoss("kl", temperature=1.0)
    kept = TopK(ids=torch.tensor([[[0, 2], [3, 4]]]), logprobs=torch.log(torch.tensor([[[0.5, 0.2], [0.5, 0.3]]])))
    dropped = loss.values(a.logits, b.topk)[0, 0]  # id 7 dropped: renormalised over ids 0 and 2
    torch.testing.assert_close(dropped, loss.values(s, kept)[0, 0])
    a, b = VOCAB_ALIGN.get("pad")(ModelView(logits=s), ModelView(topk=top))
    assert a.logits.shape[-1] == 8 and torch.isfinite(loss.values(a.logits, b.topk)).all()


def test_tokenizer_comparison_sees_a_different_tokenizer():
    bpe, wordpiece = load_tokenizer(str(ASSETS / "tiny_bpe_enfr")), load_tokenizer(str(ASSETS / "tiny_wordpiece"))
    texts = ["the committee approved the report", "nous avons voté pour ce rapport"]
    same = compare_tokenizers(bpe, bpe, texts)
    assert same.same_encodings and same.student_size == same.teacher_size == 1024
    other = compare_tokenizers(bpe, wordpiece, texts)
    assert not other.same_encodings and other.teacher_size == 2000
    assert "encode differently" in other.describe() and "special tokens differ" in other.describe()
