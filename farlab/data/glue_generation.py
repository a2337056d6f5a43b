"""GLUE as generation: a decoder answers each row with a label word (the task's verbaliser, ``task.label_words``).

Used by RL runs (``rl=grpo task=cola``): the prompts are ``task.prompt_template`` around the row's text, the
reward compares the first generated word with the label word (``label_match``), and the eval split is scored
with the task's own metrics (MCC, accuracy, ...) on label ids, so an RL run and a classification run of the
task report comparable numbers. An answer whose first word is no label word counts as wrong (for a binary task
the other class); ``unparsed_rate`` reports how often that happened. The train split is also built as
prompt + label word + eos (CE on the answer only), which the SFT warm start (``rl.init=sft``) trains on.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

import datasets

from farlab.data.base import GenerationConfig, TaskData, metric_fields
from farlab.data.kinds import TASK_KINDS, text_decoder_kind
from farlab.data.translation import CausalLMCollator
from farlab.errors import DataError
from farlab.eval.metrics import answer_word, compute_metrics
from farlab.eval.predictions import TextPredictions

if TYPE_CHECKING:
    from farlab.data.glue import GlueHandler, GlueTaskConfig, Row

VERBALISED = "verbalised_label"  # the task kind: a causal LM whose generated first word is a class


def verbaliser_problems(cfg: GlueTaskConfig) -> list[str]:
    """A label word per label, distinct after normalisation, and a template with the row's text in it."""
    labels = list(cfg.layout.labels)
    words = list(cfg.label_words or [])
    if not words:
        return [(f"task {cfg.name!r} as generation (rl=grpo) needs task.label_words, one answer word per label "
                 f"{labels} in class-id order (e.g. task=cola_generative, or task.label_words=[unacceptable,acceptable]"
                 " for CoLA)")]
    problems = []
    if len(words) != len(labels):
        problems.append(f"task.label_words={words} has {len(words)} words for {len(labels)} labels {labels}")
    normalised = [answer_word(w) for w in words]
    if len(set(normalised)) != len(normalised) or "" in normalised:
        problems.append(f"task.label_words={words}: the answer words (first word, lower-cased: {normalised}) must "
                        "be distinct and non-empty")
    fields = {name for _, name, _, _ in string.Formatter().parse(cfg.prompt_template) if name}
    if "text" not in fields or not fields <= {"text", "text_b"}:
        problems.append(f"task.prompt_template={cfg.prompt_template!r} must contain {{text}} (and may contain "
                        "{text_b} for sentence pairs), nothing else")
    return problems


def score_verbalised(data: TaskData, predictions: TextPredictions, references: list[str]) -> dict[str, Any]:
    """The task's metrics on label ids read from the answer words; an unparsed answer counts as wrong."""
    texts = predictions.texts or []
    words = [answer_word(w) for w in data.label_names]
    n = len(words)
    ref_ids = [words.index(answer_word(r)) for r in references]
    pred_ids, unparsed = [], 0
    for text, ref in zip(texts, ref_ids, strict=True):
        word = answer_word(text)
        if word in words:
            pred_ids.append(words.index(word))
        else:
            unparsed += 1
            pred_ids.append((ref + 1) % n)
    return {**compute_metrics(data.metrics, pred_ids, ref_ids), "unparsed_rate": unparsed / max(len(texts), 1)}


TASK_KINDS.add(VERBALISED, text_decoder_kind(VERBALISED, score=score_verbalised))


def verbalised_task(handler: GlueHandler, cfg: GlueTaskConfig, tokenizer: Any,
                    seed: int) -> tuple[TaskData, datasets.Dataset]:
    """(TaskData of kind ``verbalised_label``, RL prompts with their ``reference`` label word)."""
    problems = verbaliser_problems(cfg)
    if problems:
        raise DataError("; ".join(problems))
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise DataError("GLUE as generation needs a tokenizer with eos and pad tokens (a decoder's tokenizer)")
    layout = handler._layout(cfg)
    train_rows, eval_rows, eval_name, _ = handler.rows(cfg, layout, seed)
    words = list(cfg.label_words or [])

    def prompt(row: Row) -> str:
        texts = row[0]
        return cfg.prompt_template.format(text=texts[0], text_b=texts[1] if len(texts) > 1 else "")

    def prompt_ids(row: Row) -> list[int]:
        return tokenizer(prompt(row), truncation=True, max_length=cfg.max_length)["input_ids"]

    def example(row: Row) -> dict[str, Any]:
        ids = prompt_ids(row)
        answer = tokenizer(" " + words[row[1]], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": ids + answer, "attention_mask": [1] * (len(ids) + len(answer)),
                "labels": [-100] * len(ids) + answer}

    train = datasets.Dataset.from_list([{**example(r), "example_id": i} for i, r in enumerate(train_rows)])
    evaluation = datasets.Dataset.from_list(
        [{**example(r), "prompt_ids": prompt_ids(r), "reference": words[r[1]]} for r in eval_rows])
    data = TaskData(
        name=cfg.name, kind=VERBALISED, train=train, eval=evaluation, collator=CausalLMCollator(tokenizer.pad_token_id),
        label_names=words, **metric_fields(cfg),
        eval_split_name=eval_name, tokenizer=tokenizer,
        generation=GenerationConfig(max_new_tokens=4, num_beams=1, batch_size=32),
        info={"train_rows": len(train_rows), "eval_rows": len(eval_rows)},
    )
    prompts = datasets.Dataset.from_list([{"prompt": prompt(r), "reference": words[r[1]]} for r in train_rows])
    return data, prompts
