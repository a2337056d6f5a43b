"""The chunked LM path end to end: same loss and gradients as the dense path, no full logits."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from farlab.losses.objective import ModelShape, build_objective
from farlab.losses.spec import LossConfig
from farlab.trainer.pair import DistillationModule
from tests.conftest import load_group

LLAMA = dict(vocab_size=97, intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=False)


def _llama(layers: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                  num_key_value_heads=1, **LLAMA)  # fmt: skip
    return AutoModelForCausalLM.from_config(config).float()


def _pair(chunk_size: int | None, loss: str) -> DistillationModule:
    cfg = load_group("loss", loss, LossConfig)
    cfg.components.response.chunk_size = chunk_size
    objective = build_objective(
        cfg, OmegaConf.create({"strategy": "uniform"}), OmegaConf.create({"type": "linear"}),
        ModelShape(2, 16, 2), ModelShape(3, 24, 2),
    )  # fmt: skip
    torch.manual_seed(3)
    for p in objective.parameters():  # identical projections in both pairs
        torch.nn.init.normal_(p, std=0.1)
    return DistillationModule(_llama(2, 16, 0), _llama(3, 24, 1), objective, kind="causal_lm")


@pytest.mark.parametrize("loss", ["response_kl", "combined_fr"])
def test_chunked_equals_dense_in_loss_and_student_gradients(loss):
    labels = torch.tensor([[-100, -100, 5, 6, 7, 2, -100, -100], [-100, 9, 8, 7, 6, 5, 4, 2]])
    batch = {
        "input_ids": torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[1] * 6 + [0] * 2, [1] * 8]),
        "labels": labels,
    }
    dense, chunked = _pair(None, loss), _pair(3, loss)
    chunked.load_state_dict(copy.deepcopy(dense.state_dict()))
    assert dense.chunk_size is None and chunked.chunk_size == 3

    full_logits = {"dense": 0, "chunked": 0}  # forwards of the student's head over the whole [B, T] batch
    for name, pair in (("dense", dense), ("chunked", chunked)):
        pair.student.get_output_embeddings().register_forward_hook(
            lambda module, args, out, name=name: full_logits.__setitem__(name, full_logits[name] + (out.dim() == 3))
        )

    results = {}
    for name, pair in (("dense", dense), ("chunked", chunked)):
        pair.train()
        total, parts = pair(**batch)
        total.backward()
        grads = {n: p.grad.clone() for n, p in pair.student.named_parameters()}
        results[name] = (total.detach(), parts, grads)

    (d_total, d_parts, d_grads), (c_total, c_parts, c_grads) = results["dense"], results["chunked"]
    torch.testing.assert_close(c_total, d_total, rtol=1e-5, atol=1e-6)
    for key in d_parts:
        # abs as for the total: a KL ~1e-2 is a sum of mixed-sign float32 terms (the chunked path's closed-form
        # gradient sums them in another order; both are ~1e-5 relative from a float64 reference at this size)
        assert c_parts[key] == pytest.approx(d_parts[key], rel=1e-5, abs=1e-6), key
    for name in d_grads:
        torch.testing.assert_close(c_grads[name], d_grads[name], rtol=1e-4, atol=1e-6)
    # The dense path applies the head to the whole batch; the chunked one never does.
    assert full_logits == {"dense": 1, "chunked": 0}


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_detached_lm_ce_is_the_models_own_ce_without_a_graph(chunk_size):
    """Pure distillation (ce_weight 0) logs the student's CE from its view: the value the model reports itself."""
    from farlab.models.forward import detached_lm_ce, run_model

    model = _llama(2, 16, 0)
    labels = torch.tensor([[-100, -100, 5, 6, 7, 2, -100, -100], [-100, 9, 8, 7, 6, 5, 4, 2]])
    batch = {"input_ids": torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.tensor([[1] * 6 + [0] * 2, [1] * 8])}
    expected = model(**batch, labels=labels).loss
    _, view = run_model(model, batch, {}, chunk_size)
    ce = detached_lm_ce(view, labels, chunk_size)
    assert not ce.requires_grad
    torch.testing.assert_close(ce, expected.detach(), rtol=1e-5, atol=1e-6)
