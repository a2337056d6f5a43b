"""Context distillation: teacher prompts in the data, response-position alignment, and losses on aligned rows."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from farlab.config import REPO_ROOT, DistillConfig
from farlab.data import build_task_data
from farlab.data.context import (
    align_view,
    aligned_index,
    gather_positions,
    student_side,
    teacher_prompt,
    teacher_side,
    with_teacher_prompts,
)
from farlab.data.kinds import lm_masks
from farlab.errors import ConfigError, DataError
from farlab.losses.base import ModelView, TopK
from farlab.losses.objective import ModelShape, build_objective
from farlab.losses.plan import LossPlan
from farlab.models.forward import model_inputs
from farlab.models.loading import Head, build_model
from farlab.teachers.backends.hf import HFBackend
from farlab.trainer.pair import DistillationModule
from farlab.validate import validate_config
from tests.conftest import SHARED_DATA, load_group, tiny_overrides

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
EUROPARL = SHARED_DATA / "europarl_en_fr"
CONTEXT = "You are a careful translator of European Parliament debates."


def _task(**fields):
    return OmegaConf.create({
        "name": "europarl_en_fr", "family": "translation", "train_limit": 6, "eval_limit": 3, "max_length": 96,
        "source_file": str(EUROPARL / "europarl-v7.fr-en.first3000.en"),
        "target_file": str(EUROPARL / "europarl-v7.fr-en.first3000.fr"), **fields})


def _distill(**fields):
    return OmegaConf.merge(OmegaConf.structured(DistillConfig), fields)


# ---------------------------------------------------------------------------------------------- alignment


def test_aligned_index_pairs_the_kth_response_positions_of_rows_with_different_offsets():
    # Row 0: student response at 1..3, teacher (2 more prompt tokens) at 3..5; row 1: student at 0..1, teacher at
    # 4..5 (teacher sequence wider than the student's); padding after both.
    student = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    teacher = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0]])
    index = aligned_index(student, teacher)
    assert index.tolist() == [[0, 3, 4, 5, 0, 0], [4, 5, 0, 0, 0, 0]]
    values = torch.arange(2 * 8).reshape(2, 8, 1).float() * torch.ones(1, 1, 3)  # x[b, t] = 8 b + t
    gathered = gather_positions(values, index)
    assert gathered.shape == (2, 6, 3)
    assert gathered[0, 1:4, 0].tolist() == [3.0, 4.0, 5.0] and gathered[1, :2, 2].tolist() == [12.0, 13.0]


def test_aligned_index_handles_a_teacher_shorter_than_the_student():
    student = torch.tensor([[0, 0, 0, 1, 1, 0]])
    teacher = torch.tensor([[0, 1, 1]])
    assert aligned_index(student, teacher).tolist() == [[0, 0, 0, 1, 2, 0]]


def test_aligned_index_refuses_responses_of_different_lengths():
    with pytest.raises(DataError, match="row 1: the student has 2 response positions but the teacher 1"):
        aligned_index(torch.tensor([[1, 0], [1, 1]]), torch.tensor([[0, 1, 0], [0, 0, 1]]))


def test_align_view_moves_logits_topk_final_hidden_and_hidden_states():
    # Student: prompt 2, response 3 (labels at 2..4 -> response positions 1..3); teacher: prompt 4 (positions 3..5).
    s_labels = torch.tensor([[-100, -100, 5, 6, 7, -100]])
    t_labels = torch.tensor([[-100, -100, -100, -100, 5, 6, 7]])
    student = {"labels": s_labels, "attention_mask": torch.ones_like(s_labels)}
    teacher = {"labels": t_labels, "attention_mask": torch.ones_like(t_labels)}
    pos = torch.arange(7).float().reshape(1, 7, 1)
    view = ModelView(logits=pos.expand(1, 7, 4), final_hidden=pos.expand(1, 7, 2) + 100,
                     topk=TopK(ids=pos.long().expand(1, 7, 2), logprobs=-pos.expand(1, 7, 2)),
                     hidden_states=(pos.expand(1, 7, 2) + 200,), lm_head=torch.nn.Identity())
    out = align_view(view, teacher, student, lm_masks)
    assert out.logits[0, 1:4, 0].tolist() == [3.0, 4.0, 5.0]  # response positions: predictions of tokens 5, 6, 7
    assert out.final_hidden[0, 1:4, 0].tolist() == [103.0, 104.0, 105.0]
    assert out.topk.ids[0, 1:4, 1].tolist() == [3, 4, 5] and out.topk.logprobs[0, 3, 0] == -5.0
    assert out.hidden_states[0][0, 2:5, 0].tolist() == [204.0, 205.0, 206.0]  # target tokens themselves
    assert out.lm_head is view.lm_head and out.logits.shape == (1, 6, 4)
    assert align_view(view, student, student, lm_masks) is view  # no teacher prompt: untouched


# ---------------------------------------------------------------------------------------------- data


def test_teacher_prompt_resolves_text_or_file_and_is_none_without_differences(tmp_path):
    assert teacher_prompt(_distill()) is None
    assert teacher_prompt(_distill(context="be formal")).context == "be formal"
    path = tmp_path / "ctx.txt"
    path.write_text("from a file\n", encoding="utf-8")
    assert teacher_prompt(_distill(context_file=str(path))).context == "from a file"
    with pytest.raises(DataError, match="distill.context_file='/nope.txt' not found"):
        teacher_prompt(_distill(context_file="/nope.txt"))


def test_rows_hold_the_teacher_sequence_with_the_context_and_the_same_answer():
    plain = build_task_data(_task(), TOKENIZER, seed=0)
    data = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(context=CONTEXT))
    assert "teacher_input_ids" not in plain.train.column_names
    context_ids = TOKENIZER(f"{CONTEXT}\n\n", add_special_tokens=False)["input_ids"]
    for row, base in zip(data.train, plain.train):
        assert row["input_ids"] == base["input_ids"] and row["labels"] == base["labels"]  # student unchanged
        n = sum(label != -100 for label in row["labels"])
        assert row["teacher_labels"][-n:] == row["labels"][-n:] == row["teacher_input_ids"][-n:]
        assert sum(label != -100 for label in row["teacher_labels"]) == n
        prompt = row["teacher_input_ids"][:-n]
        assert TOKENIZER.decode(prompt, skip_special_tokens=True).startswith(CONTEXT + "\n\nTranslate English")
        assert len(prompt) >= len(row["input_ids"]) - n + len(context_ids) - 1  # the context is never cut
    with_ctx = data.extra_eval["validation_with_context"]
    assert with_ctx["reference"] == data.eval["reference"]
    assert all(len(a) > len(b) for a, b in zip(with_ctx["prompt_ids"], data.eval["prompt_ids"]))
    for ctx_row, row in zip(with_ctx, data.eval):  # perplexity with the context scores the teacher's sequence
        n = sum(label != -100 for label in row["labels"])
        assert ctx_row["labels"][-n:] == row["labels"][-n:] and sum(x != -100 for x in ctx_row["labels"]) == n
        assert TOKENIZER.decode(ctx_row["input_ids"][:-n], skip_special_tokens=True).startswith(CONTEXT)


def test_teacher_template_places_the_context_and_chat_puts_it_in_the_system_turn():
    data = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(
        context="CTX", teacher_template="{source_lang}: {source}\n[{context}] {target_lang}:"))
    row = data.train[0]
    n = sum(label != -100 for label in row["labels"])
    text = TOKENIZER.decode(row["teacher_input_ids"][:-n], skip_special_tokens=True)
    assert text.startswith("English: ") and text.endswith("[CTX] French:")

    chat = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    chat.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    data = build_task_data(_task(), chat, seed=0, distill=_distill(context="CTX", teacher_chat_template=True))
    row = data.train[0]
    n = sum(label != -100 for label in row["labels"])
    text = chat.decode(row["teacher_input_ids"][:-n])
    assert text.startswith("<system>CTX\n<user>Translate English to French.") and text.endswith("<assistant>")
    assert not chat.decode(row["input_ids"]).startswith("<system>")  # the student keeps the plain template


def test_collator_pads_each_side_to_its_own_width_and_models_never_see_the_teacher_keys():
    data = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(context=CONTEXT))
    batch = data.collator([data.train[i] for i in range(4)])
    assert batch["teacher_input_ids"].shape[1] == max(len(r) for r in data.train[:4]["teacher_input_ids"])
    assert batch["input_ids"].shape[1] == max(len(r) for r in data.train[:4]["input_ids"])
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask", "labels"}
    t = teacher_side(batch)
    assert t["input_ids"] is batch["teacher_input_ids"] and t["example_id"] is batch["example_id"]
    assert "teacher_input_ids" not in student_side(batch) and teacher_side(student_side(batch)) is not t
    lengths = lambda mask: mask.sum(1).tolist()
    assert lengths(lm_masks(t)[1]) == lengths(lm_masks(batch)[1])  # same response lengths on both sides


# ---------------------------------------------------------------------------------------------- losses


def _tiny(role: str, seed: int):
    set_seed(seed)
    return build_model(load_group("model", "tiny_llama")[role], Head(AutoModelForCausalLM), None)


def _pair(student, teacher, top_k=None, chunk=None):
    loss = load_group("loss", "response_kl")
    loss.components.response.chunk_size = chunk
    plan = LossPlan.from_config(loss)
    objective = build_objective(plan, load_group("layer_map", "uniform"), load_group("projection", "linear"),
                                ModelShape.from_hf_config(student.config), ModelShape.from_hf_config(teacher.config))
    return DistillationModule(student, teacher, objective, kind="causal_lm",
                              backend=HFBackend(teacher, top_k=top_k, chunk_size=chunk))


@pytest.mark.parametrize("top_k,chunk", [(None, None), (5, None), (None, 3)])
def test_loss_is_unchanged_when_the_teacher_sees_the_same_prompt_in_another_layout(top_k, chunk):
    """A teacher batch holding the student's own sequences (padded wider) gives exactly the loss of no teacher
    prompt: alignment is exact on the dense, top-k and chunked paths."""
    data = build_task_data(_task(), TOKENIZER, seed=0)
    batch = data.collator([data.train[i] for i in range(4)])
    wide = lambda x, v: torch.cat([x, torch.full((x.shape[0], 3), v)], dim=1)
    with_teacher = {**batch, "teacher_input_ids": wide(batch["input_ids"], 0),
                    "teacher_attention_mask": wide(batch["attention_mask"], 0), "teacher_labels": wide(batch["labels"], -100)}
    pair = _pair(_tiny("student", 0), _tiny("teacher", 1), top_k, chunk).eval()
    with torch.no_grad():
        base, base_parts = pair(**batch)
        aligned, _ = pair(**with_teacher)
    assert base_parts["response/raw"] > 0
    torch.testing.assert_close(aligned, base, rtol=1e-5, atol=1e-6)


def test_teacher_equal_to_student_with_an_empty_context_gives_zero_kl_and_a_context_changes_it():
    student = _tiny("student", 0)
    pair = _pair(student, student).eval()
    same = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(context="", teacher_template=_task_template()))
    ctx = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(context=CONTEXT))
    rows = lambda d: d.collator([d.train[i] for i in range(4)])
    with torch.no_grad():
        _, parts_same = pair(**rows(same))
        _, parts_ctx = pair(**rows(ctx))
    assert "teacher_input_ids" in rows(same)  # the teacher side runs, with the student's own prompt
    assert parts_same["response/raw"] == pytest.approx(0.0, abs=1e-8)
    assert parts_ctx["response/raw"] > 1e-6  # the same (random, near-uniform) model, prompted with the context, predicts differently


def _task_template() -> str:
    return load_group("task", "europarl_en_fr").prompt_template


# ---------------------------------------------------------------------------------------------- validation


def _cfg(compose_cfg, tmp_path, **extra):
    base = {"task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base"}
    return compose_cfg(tiny_overrides(tmp_path / "store", **{**base, **extra}))


@pytest.mark.parametrize("extra,message", [
    ({"distill.context": "x", "distill.context_file": "/a.txt"}, "distill.context and distill.context_file are both"),
    ({"distill.context_file": "/nope.txt"}, "distill.context_file='/nope.txt' not found"),
    ({"distill.context": "x", "loss": "combined_a"}, "attention losses compare"),
    ({"distill.context": "x", "loss": "ce"}, "the loss uses no teacher"),
    ({"distill.context": "x", "distill.teacher_template": "'{src}'"}, "has no {source} field"),
    ({"distill.context": "x", "task": "cola", "model": "tiny_bert"}, "need a task family that builds teacher"),
])
def test_context_settings_are_refused_early_with_the_reason(compose_cfg, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        validate_config(_cfg(compose_cfg, tmp_path, **extra))


def test_context_settings_pass_validation(compose_cfg, tmp_path):
    validate_config(_cfg(compose_cfg, tmp_path, **{"distill.context": "be formal", "loss": "combined_fr"}))
    validate_config(_cfg(compose_cfg, tmp_path, **{"distill.context": "be formal", "loss": "gkd"}))


# ---------------------------------------------------------------------------------------------- on-policy


def test_on_policy_rows_get_the_teacher_prompt_plus_the_students_sample():
    original = {  # student prompt [5, 6], teacher prompt [9, 9, 5, 6]; gold answers [7, 2] and [8, 2]
        "input_ids": torch.tensor([[5, 6, 7, 2], [5, 6, 8, 2]]), "labels": torch.tensor([[-100, -100, 7, 2]] * 2),
        "teacher_input_ids": torch.tensor([[9, 9, 5, 6, 7, 2, 0], [9, 5, 6, 8, 2, 0, 0]]),
        "teacher_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]]),
        "teacher_labels": torch.tensor([[-100, -100, -100, -100, 7, 2, -100], [-100, -100, -100, 8, 2, -100, -100]]),
    }
    original["attention_mask"] = torch.ones_like(original["input_ids"])
    sampled = {  # the student's samples: [3, 4, 2] and [3]
        "input_ids": torch.tensor([[5, 6, 3, 4, 2], [5, 6, 3, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 3, 4, 2], [-100, -100, 3, -100, -100]]),
    }
    out = with_teacher_prompts(original, sampled, pad_id=0)
    assert out["teacher_input_ids"].tolist() == [[9, 9, 5, 6, 3, 4, 2], [9, 5, 6, 3, 0, 0, 0]]
    assert out["teacher_labels"].tolist() == [[-100] * 4 + [3, 4, 2], [-100] * 3 + [3, -100, -100, -100]]
    assert out["teacher_attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert out["input_ids"] is sampled["input_ids"]
    index = aligned_index(lm_masks(out)[1], lm_masks(teacher_side(out))[1])
    assert index[0, 1:4].tolist() == [3, 4, 5] and index[1, 1].tolist() == 2  # teacher prompts of 4 and 3
    assert with_teacher_prompts(sampled, sampled, 0) is sampled  # no teacher prompt: the samples as they are


def test_on_policy_batches_reach_the_teacher_with_its_context():
    from farlab.losses.gkd import OnPolicySampler

    data = build_task_data(_task(), TOKENIZER, seed=0, distill=_distill(context=CONTEXT))
    batch = data.collator([data.train[i] for i in range(3)])
    seen = []

    class Recording(HFBackend):
        def __call__(self, b, **kw):
            seen.append(b)
            return super().__call__(b, **kw)

    student, teacher = _tiny("student", 0), _tiny("teacher", 1)
    pair = _pair(student, teacher)
    pair.teacher_backend = Recording(teacher)
    pair.on_policy = OnPolicySampler(1.0, 1.0, 4, TOKENIZER.pad_token_id, TOKENIZER.eos_token_id, seed=0)
    _, parts = pair(**batch)
    assert pair.on_policy_batches == 1 and parts["response/raw"] > 0
    got = seen[0]
    for b in range(3):
        n_prompt = int((batch["teacher_labels"][b] == -100).long().argmin())  # the teacher's prompt, with the context
        sample = got["labels"][b][got["labels"][b] != -100]
        assert got["input_ids"][b, :n_prompt].tolist() == batch["teacher_input_ids"][b, :n_prompt].tolist()
        assert got["input_ids"][b, n_prompt:n_prompt + len(sample)].tolist() == sample.tolist()
        assert 1 <= len(sample) <= 4  # the student's own continuation, not the gold answer


def test_a_teacher_cache_built_with_the_context_serves_the_aligned_teacher(compose_cfg, tmp_path):
    from torch.utils.data import DataLoader

    from farlab.teachers.backends.cache import CacheBackend
    from farlab.teachers.cache import cache_key, open_or_build, write_cache
    from farlab.teachers.strategies import TeacherSettings

    extra = {"task.train_limit": 12, "task.max_length": 64, "teacher": "cache", "teacher.top_k": 8,
             "teacher.cache.dir": str(tmp_path), "teacher.cache.dtype": "float32", "distill.context": f"'{CONTEXT}'"}
    cfg = _cfg(compose_cfg, tmp_path, **extra)
    data = build_task_data(cfg.task, TOKENIZER, cfg.seed, cfg.distill)
    plain = build_task_data(cfg.task, TOKENIZER, cfg.seed)
    settings = TeacherSettings.from_run_config(cfg)
    key = cache_key(settings, data, 8, hidden_layers=[])
    assert key["data"]["fingerprint"] != cache_key(settings, plain, 8, [])["data"]["fingerprint"]  # a new entry
    teacher = _tiny("teacher", 1).eval()
    cache = open_or_build(tmp_path / "entry", key, lambda out: write_cache(teacher, data, out, key, batch_size=5))
    live, cached = HFBackend(teacher, top_k=8), CacheBackend(cache, num_layers=4)
    flags = {"hidden_states": False, "attentions": False, "grad": False, "detach": True}
    for batch in DataLoader(data.train, batch_size=4, shuffle=True, collate_fn=data.collator,
                            generator=torch.Generator().manual_seed(0)):
        t = teacher_side(batch)
        want = align_view(live(t, **flags).view, t, batch, lm_masks).topk
        got = align_view(cached(t, **flags).view, t, batch, lm_masks).topk
        rows = lm_masks(batch)[1].bool()
        assert torch.equal(got.ids[rows], want.ids[rows])
        torch.testing.assert_close(got.logprobs[rows], want.logprobs[rows], rtol=0, atol=1e-6)
