"""The q/k row permutation of the GGUF export, checked against HF Llama's own RoPE.

llama.cpp's ``llama`` graph rotates adjacent pairs (2i, 2i+1) of each head by ``pos * base^(-2i/d)`` (ggml's
"normal" rope mode); HF rotates (i, i + d/2) by the same angle (``rotate_half``). The export permutes q_proj /
k_proj rows so that the first, applied to the permuted projection, gives the same attention scores as HF's.
The pair rotation below is written from that definition, independently of the export code.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from farlab.export.gguf import permute, unpermute


def rope_adjacent_pairs(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """x [heads, T, d]: rotate (x[2i], x[2i+1]) by pos * base^(-2i/d), as llama.cpp does for LLM_ARCH_LLAMA."""
    d = x.shape[-1]
    theta = positions[:, None] * base ** (-np.arange(0, d, 2) / d)  # [T, d/2]
    cos, sin = np.cos(theta), np.sin(theta)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def rope_hf(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """HF Llama's RoPE (rotate_half) through transformers' own apply_rotary_pos_emb."""
    d = x.shape[-1]
    inv_freq = base ** (-np.arange(0, d, 2) / d)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = torch.tensor(np.cos(emb))[None], torch.tensor(np.sin(emb))[None]
    t = torch.tensor(x)[None]
    rotated, _ = apply_rotary_pos_emb(t, t, cos, sin)
    return rotated[0].numpy()


def heads(w: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """Project tokens x [T, hidden] with w [n*d, hidden] into [n, T, d]."""
    return (x @ w.T).reshape(x.shape[0], n, -1).transpose(1, 0, 2)


def test_permuted_projections_with_pair_rope_give_hf_attention_scores():
    rng = np.random.default_rng(0)
    n_head, n_kv, d, hidden, T, base = 4, 2, 8, 16, 7, 10000.0
    wq, wk = rng.normal(size=(n_head * d, hidden)), rng.normal(size=(n_kv * d, hidden))
    x, pos = rng.normal(size=(T, hidden)), np.arange(T, dtype=np.float64)

    q_hf, k_hf = rope_hf(heads(wq, x, n_head), pos, base), rope_hf(heads(wk, x, n_kv), pos, base)
    q_cpp = rope_adjacent_pairs(heads(permute(wq, n_head), x, n_head), pos, base)
    k_cpp = rope_adjacent_pairs(heads(permute(wk, n_kv), x, n_kv), pos, base)

    group = n_head // n_kv  # grouped-query attention: query head h reads key head h // group
    scores_hf = np.einsum("htd,hsd->hts", q_hf, np.repeat(k_hf, group, axis=0))
    scores_cpp = np.einsum("htd,hsd->hts", q_cpp, np.repeat(k_cpp, group, axis=0))
    np.testing.assert_allclose(scores_cpp, scores_hf, rtol=1e-10, atol=1e-10)
    # Without the permutation the pair rotation would compute something else.
    q_wrong = rope_adjacent_pairs(heads(wq, x, n_head), pos, base)
    k_wrong = rope_adjacent_pairs(heads(wk, x, n_kv), pos, base)
    assert not np.allclose(np.einsum("htd,hsd->hts", q_wrong, np.repeat(k_wrong, group, axis=0)), scores_hf)


def test_permutation_moves_rows_i_and_i_plus_half_next_to_each_other():
    d = 6  # one head: rows 0..5; halves [0,1,2] and [3,4,5] -> pairs (0,3), (1,4), (2,5)
    w = np.arange(2 * d, dtype=np.float32).reshape(2, d).T.copy()  # row r = [r, r + 6]
    assert permute(w, 1)[:, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert np.array_equal(unpermute(permute(w, 1), 1), w)
    bias_like = np.arange(12.0)  # two heads of 6: each head permuted on its own
    assert permute(bias_like, 2).tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
