"""Students made from the teacher: block importance, width pruning (slicing) and their round trips."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from farlab.errors import ConfigError
from farlab.models.pruning import (
    BLOCK_IMPORTANCE,
    auto_block_count,
    block_importance,
    choose_blocks,
    drop_one_importance,
    width_importance,
    width_prune,
)


class _Toy(nn.Module):
    """Embedding then three hand-made blocks: identity, negation, a 90-degree rotation of channel pairs."""

    class Block(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, hidden_states, attention_mask=None):
            return (self.fn(hidden_states),)

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=3)
        self.embed = nn.Embedding(10, 4)
        rotate = lambda x: torch.stack([-x[..., 1], x[..., 0], -x[..., 3], x[..., 2]], dim=-1)  # noqa: E731
        self.layers = nn.ModuleList([self.Block(lambda x: x), self.Block(lambda x: -x), self.Block(rotate)])

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for block in self.layers:
            x = block(x, attention_mask)[0]
        return x


def test_block_importance_of_a_hand_made_model():
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1, 10, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    scores = block_importance(_Toy(), [batch])
    # 1 - cos: identity 0, negation 2, rotation by 90 degrees (cos 0) 1
    assert scores == pytest.approx([0.0, 2.0, 1.0], abs=1e-9)
    assert choose_blocks(scores, 2) == [2, 3] and choose_blocks(scores, 1) == [2]
    with pytest.raises(ConfigError, match="valid: auto:1..auto:3"):
        choose_blocks(scores, 4)
    assert auto_block_count("auto:3") == 3 and auto_block_count([1, 3]) is None
    with pytest.raises(ConfigError, match="auto:N"):
        auto_block_count("best:3")


def _llama(kv=2, depth=2):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=depth,
                                        num_attention_heads=4, num_key_value_heads=kv, head_dim=8,
                                        max_position_embeddings=32)).eval()


def _bert(depth=2):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                    num_hidden_layers=depth, num_attention_heads=4,
                                                    max_position_embeddings=32, num_labels=3)).eval()


def _batches():
    torch.manual_seed(1)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    return [{"input_ids": torch.randint(1, 64, (3, 7)), "attention_mask": mask}]


def _without_block(build, i):
    """The model rebuilt with block ``i`` (0-based) deleted from its list: dropping by hand, not by hook."""
    model = build(depth=3)
    blocks = model.model.layers if isinstance(model, LlamaForCausalLM) else model.bert.encoder.layer
    del blocks[i]
    model.config.num_hidden_layers = 2
    if isinstance(model, LlamaForCausalLM):
        for j, block in enumerate(blocks):
            block.self_attn.layer_idx = j
    return model.eval()


def _sharp_bert(depth=3):
    """A random BERT classifier's outputs are near uniform (KLs ~1e-8, float noise): a larger head sharpens them."""
    model = _bert(depth)
    model.classifier.weight.data *= 50
    return model


@pytest.mark.parametrize("build", [_llama, _sharp_bert])
def test_drop_one_importance_is_the_kl_to_the_model_without_the_block(build):
    """Against an independent computation: the model with the block deleted, KL written out as sum p (log p - log q)
    over the real tokens (a causal LM's padded position left out) or over the examples (a classifier)."""
    batch = _batches()[0]
    scores = drop_one_importance(build(depth=3), [batch])
    with torch.no_grad():
        p = torch.log_softmax(build(depth=3).eval()(**batch).logits.double(), -1)
        for i in range(3):
            q = torch.log_softmax(_without_block(build, i)(**batch).logits.double(), -1)
            kl = (p.exp() * (p - q)).sum(-1)
            expected = kl[batch["attention_mask"].bool()].mean() if kl.dim() == 2 else kl.mean()
            assert scores[i] == pytest.approx(float(expected), rel=1e-4, abs=1e-7)
    assert all(s > 0 for s in scores)


def test_drop_one_scores_a_pass_through_block_zero_and_auto_drops_it_first():
    teacher = _llama(depth=3)
    block = teacher.model.layers[1]
    block.self_attn.o_proj.weight.data.zero_()  # both residual branches add zero: the block passes x through
    block.mlp.down_proj.weight.data.zero_()
    scores = drop_one_importance(teacher, _batches())
    assert scores[1] == pytest.approx(0.0, abs=1e-9) and min(scores[0], scores[2]) > 1e-6
    assert choose_blocks(scores, 2) == [1, 3]
    assert BLOCK_IMPORTANCE.names() == ["drop_one", "influence"]


def test_auto_blocks_use_the_configured_measure_and_record_it(monkeypatch):
    from omegaconf import OmegaConf

    from farlab.config import ModelSpec
    from farlab.models import loading, pruning

    monkeypatch.setattr(pruning, "importance_batches", lambda data, n: _batches())
    teacher = _llama(depth=3)
    teacher.model.layers[0].mlp.down_proj.weight.data.zero_()  # block 1: attention only
    head = SimpleNamespace(auto_class=AutoModelForCausalLM)
    for measure, score in (("influence", block_importance), ("drop_one", drop_one_importance)):
        spec = OmegaConf.merge(OmegaConf.structured(ModelSpec), {
            "source": "from_teacher", "init_blocks": "auto:2", "block_importance": measure})
        student = loading._from_teacher(spec, head, None, teacher=teacher, data=object())
        record = student.config.farlab_pruning["blocks"]
        assert record["measure"].startswith(f"{measure}: ")
        assert record["importance"] == pytest.approx(score(teacher, _batches()))
        assert record["chosen"] == choose_blocks(record["importance"], 2)


def _width(hidden=None, ffn=None, heads=None):
    return SimpleNamespace(hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads)


@pytest.mark.parametrize("build", [_llama, _bert])
def test_nothing_pruned_gives_the_teachers_outputs(build):
    teacher = build()
    batch = _batches()[0]
    student, record = width_prune(teacher, _width(32, 48, 4), width_importance(teacher, _batches()))
    student.eval()
    assert record["kept_hidden"] == list(range(32))
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, teacher(**batch).logits)


def test_pruned_heads_and_neurons_equal_the_teacher_with_them_zeroed():
    """Slicing check independent of the slicer: dropping KV groups / FFN neurons (hidden kept) must equal the teacher
    with the dropped heads' o_proj columns and the dropped neurons' down_proj columns set to zero."""
    teacher = _llama(kv=2)  # 4 query heads in 2 groups of 2
    student, record = width_prune(teacher, _width(32, 20, 2), width_importance(teacher, _batches()))
    masked = _llama(kv=2)
    for i, layer in enumerate(masked.model.layers):
        (group,) = record["kept_kv_groups"][str(i)]
        keep_cols = torch.zeros(32, dtype=torch.bool)
        keep_cols[group * 16 : (group + 1) * 16] = True  # 2 query heads x head_dim 8
        layer.self_attn.o_proj.weight.data[:, ~keep_cols] = 0
        scores = width_importance(teacher, _batches()).ffn[i]
        kept = torch.zeros(48, dtype=torch.bool)
        kept[torch.tensor(sorted(scores.argsort(descending=True)[:20].tolist()))] = True
        layer.mlp.down_proj.weight.data[:, ~kept] = 0
    batch = _batches()[0]
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(**batch).logits, masked(**batch).logits, rtol=1e-5, atol=1e-5)


def test_importance_finds_dead_heads_and_neurons():
    teacher = _llama(kv=4)  # no GQA: heads are pruned one by one
    layer = teacher.model.layers[0]
    layer.self_attn.v_proj.weight.data[8:16] = 0  # head 1 outputs zeros
    layer.mlp.up_proj.weight.data[[3, 7]] = 0  # neurons 3 and 7: silu(gate) * 0 = 0
    scores = width_importance(teacher, _batches())
    assert scores.heads[0][1] == 0 and scores.heads[0][0] > 0
    assert scores.ffn[0][3] == 0 and scores.ffn[0][7] == 0 and scores.ffn[0][0] > 0
    _, record = width_prune(teacher, _width(32, 46, 3), scores)
    assert record["kept_heads"]["0"] == [0, 2, 3]


@pytest.mark.parametrize("build,auto,width", [
    (_llama, AutoModelForCausalLM, _width(24, 32, 2)),
    (_bert, AutoModelForSequenceClassification, _width(16, 24)),  # BERT: heads follow hidden / head size (8)
])
def test_pruned_model_round_trips_through_from_pretrained(tmp_path, build, auto, width):
    teacher = build()
    student, record = width_prune(teacher, width, width_importance(teacher, _batches()))
    student.config.farlab_pruning = record
    student.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert loaded.config.hidden_size == width.hidden_size and loaded.config.intermediate_size == width.intermediate_size
    assert loaded.config.num_attention_heads == (width.num_attention_heads or width.hidden_size // 8)
    assert loaded.config.farlab_pruning["kept_hidden"] == record["kept_hidden"]
    batch = _batches()[0]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, student.eval()(**batch).logits)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_bad_widths_are_refused():
    teacher = _bert()
    scores = width_importance(teacher, _batches())
    with pytest.raises(ConfigError, match="hidden_size=20 must equal num_attention_heads x head size 8"):
        width_prune(teacher, _width(20), scores)
    with pytest.raises(ConfigError, match=r"intermediate_size=64 must be in 1..48"):
        width_prune(teacher, _width(ffn=64), scores)
    with pytest.raises(ConfigError, match="multiple of the teacher's 2 query heads per KV head"):
        width_prune(_llama(kv=2), _width(heads=3), width_importance(_llama(kv=2), _batches()))
    assert math.isfinite(float(scores.hidden.sum()))


def test_model_problems_check_auto_blocks_and_width_before_loading():
    from omegaconf import OmegaConf

    from farlab.config import ModelPairConfig
    from farlab.models.loading import model_problems

    teacher = {"source": "config", "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4,
                                              "num_attention_heads": 4, "intermediate_size": 48}}

    def problems(**student):
        pair = OmegaConf.merge(OmegaConf.structured(ModelPairConfig), {"teacher": teacher, "student": student})
        return model_problems(pair)

    assert problems(source="from_teacher", init_blocks="auto:3") == []
    assert problems(source="from_teacher", init_blocks=None, width={"hidden_size": 16}) == []
    assert problems(source="from_teacher", init_blocks="auto:5") == [
        "model.student.init_blocks=auto:5: the teacher has 4 blocks (valid: auto:1..auto:4)"]
    assert "auto:N" in problems(source="from_teacher", init_blocks="top3")[0]
    assert "needs model.student.source=from_teacher" in problems(
        source="config", config={"model_type": "bert"}, width={"hidden_size": 16})[0]
    assert "give block numbers" in problems(source="from_teacher", init_blocks=["first"])[0]
    assert problems(source="from_teacher", init_blocks="auto:3", block_importance="drop_one") == []
    assert problems(source="from_teacher", init_blocks="auto:3", block_importance="drop-one") == [
        "model.student.block_importance: unknown block-importance measure 'drop-one'; valid: drop_one, influence; "
        "did you mean 'drop_one'?"]


def test_runs_stored_before_block_importance_existed_still_count_as_the_same_experiment():
    from farlab.run_record import config_differences

    stored = {"model": {"student": {"init_blocks": "auto:2"}}}
    new = {"model": {"student": {"init_blocks": "auto:2", "block_importance": "influence"}}}
    assert config_differences(stored, new) == []
    assert config_differences(stored, {"model": {"student": {"init_blocks": "auto:2",
                                                             "block_importance": "drop_one"}}}) == [
        "model.student.block_importance: (absent) -> 'drop_one'"]


@pytest.mark.parametrize("measure", [block_importance, drop_one_importance, width_importance])
def test_measures_run_without_dropout_and_give_the_model_back_in_its_mode(measure):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=32, num_labels=3,
                                                     hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    expected = measure(model.eval(), _batches())
    model.train()
    assert _flat(measure(model, _batches())) == _flat(expected)  # dropout at 0.5 would change every score
    assert model.training

    def failing():
        yield from _batches()
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        measure(model, failing())
    assert model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # no hook left behind


def _flat(scores):
    if isinstance(scores, list):
        return scores
    return [scores.hidden.tolist(), {i: v.tolist() for i, v in scores.heads.items()},
            {i: v.tolist() for i, v in scores.ffn.items()}]
