"""Translation with decoder-only models: prompt + target, loss on the target tokens only.

Each example is ``prompt_ids + target_ids + eos``; labels are -100 on the prompt, so CE and every
distillation term (through the response/token masks built from labels) see target tokens only.
Data: two aligned plain-text files (line i of one translates line i of the other), e.g. Europarl,
split into seeded train/validation/test parts; or a datasets hub name on online machines.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig

from farlab.data.base import GenerationConfig, TaskData, check_eval_settings, metric_fields, typed_config
from farlab.data.context import TeacherPrompt
from farlab.errors import DataError


@dataclass
class TranslationTaskConfig:
    name: str = "europarl_en_fr"
    family: str = "translation"
    source_file: str | None = None
    target_file: str | None = None
    hub_name: str | None = None  # online machines: a datasets name with a "translation" column
    hub_config: str | None = None
    source_lang: str = "English"
    target_lang: str = "French"
    source_key: str = "en"  # keys inside the hub dataset's "translation" dicts
    target_key: str = "fr"
    prompt_template: str = "Translate {source_lang} to {target_lang}.\n{source_lang}: {source}\n{target_lang}:"
    use_chat_template: bool = False  # wrap the prompt with the tokenizer's chat template (instruct models)
    max_length: int = 256  # prompt + target tokens
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    eval_split: str = "validation"  # validation | test
    train_limit: int | None = None
    eval_limit: int | None = None
    targets: str = "gold"  # gold | teacher: train on the teacher's generations (farlab.teachers.generations)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: list[str] = field(default_factory=lambda: ["bleu", "chrf", "perplexity"])
    primary_metric: str | None = "bleu"


Pair = tuple[str, str]
TARGETS = ("gold", "teacher")


class TranslationHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_config(TranslationTaskConfig, task_cfg)
        fields = {name for _, name, _, _ in string.Formatter().parse(cfg.prompt_template) if name}
        if "source" not in fields:
            raise DataError(
                f"task.prompt_template={cfg.prompt_template!r} has no {{source}} field; the source sentence "
                "must appear in the prompt"
            )
        unknown = fields - {"source", "source_lang", "target_lang"}
        if unknown:
            raise DataError(f"task.prompt_template uses unknown fields {sorted(unknown)}; valid: source, source_lang, target_lang")
        check_eval_settings(cfg.metrics, cfg.primary_metric, cfg.eval_split)
        if cfg.targets not in TARGETS:
            raise DataError(f"task.targets={cfg.targets!r}; valid: {', '.join(TARGETS)} (teacher: the teacher's "
                            "generations for the training prompts, see docs/distillation_setups.md)")
        if cfg.source_file is None and cfg.hub_name is None:
            raise DataError(f"task {cfg.name!r}: set task.source_file and task.target_file, or task.hub_name")
        if cfg.source_file is not None:
            for role in ("source_file", "target_file"):
                path = getattr(cfg, role)
                if path is None or not Path(path).is_file():
                    raise DataError(f"task.{role}={path!r} not found")
            n_src, n_tgt = (_count_lines(Path(p)) for p in (cfg.source_file, cfg.target_file))
            if n_src != n_tgt:
                raise DataError(
                    f"misaligned parallel files: {cfg.source_file} has {n_src} lines but {cfg.target_file} has "
                    f"{n_tgt}; line i of one must translate line i of the other"
                )

    teacher_prompts = True  # builds a teacher sequence per row for distill.context (farlab.data.context)

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int,
              teacher_prompt: TeacherPrompt | None = None) -> TaskData:
        cfg = typed_config(TranslationTaskConfig, task_cfg)
        pairs, kept, unique, splits, train, evaluation = _pairs_and_splits(cfg, seed)
        teacher = None
        if teacher_prompt is not None:
            chat = cfg.use_chat_template if teacher_prompt.chat is None else teacher_prompt.chat
            teacher_cfg = replace(cfg, prompt_template=teacher_prompt.template or cfg.prompt_template,
                                  use_chat_template=chat)
            teacher = PromptEncoder(teacher_cfg, tokenizer, teacher_prompt.context, teacher_prompt.inline)
        encoder = PromptEncoder(cfg, tokenizer, teacher=teacher)
        # example_id: the row's index, so a teacher cache can look the row up (models never see it)
        rows = [{**encoder.training_example(s, t), "example_id": i} for i, (s, t) in enumerate(train)]
        prompts = [r["input_ids"][: r["labels"].count(-100)] for r in rows]  # what a generating teacher is shown
        extra_eval = {}
        if teacher is not None:  # the eval prompts as the teacher sees them: how much the context helps
            extra_eval[f"{cfg.eval_split}_with_context"] = datasets.Dataset.from_list(
                [encoder.eval_example(s, t, with_context=True) for s, t in evaluation])
        return TaskData(
            name=cfg.name,
            kind="causal_lm",
            train=datasets.Dataset.from_list(rows),
            eval=datasets.Dataset.from_list([encoder.eval_example(s, t) for s, t in evaluation]),
            collator=CausalLMCollator(tokenizer.pad_token_id),
            label_names=[],
            **metric_fields(cfg),
            eval_split_name=cfg.eval_split,
            tokenizer=tokenizer,
            info={
                "dropped_empty_pairs": len(pairs) - len(kept),
                "dropped_duplicate_pairs": len(kept) - len(unique),
                "split_sizes": {k: len(v) for k, v in splits.items()},
            },
            generation=cfg.generation,
            extra_eval=extra_eval,
            retarget=lambda targets: datasets.Dataset.from_list(
                [{**encoder.answer_example(prompts[e], text), "example_id": i} for i, (e, text) in enumerate(targets)]
            ),
        )

    def rl_data(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> tuple[TaskData, datasets.Dataset]:
        """For RL (farlab.rl): the task data as built for SFT/KD (its eval split scores the run), and the train split
        as prompts: ``prompt`` (text, or a chat for ``use_chat_template``, which TRL renders with the same chat
        template and generation prompt) and the ``reference`` translation the rewards compare with."""
        cfg = typed_config(TranslationTaskConfig, task_cfg)
        train = _pairs_and_splits(cfg, seed)[4]
        encoder = PromptEncoder(cfg, tokenizer)
        prompts = datasets.Dataset.from_list([{"prompt": encoder.rl_prompt(s), "reference": t} for s, t in train])
        return self.build(task_cfg, tokenizer, seed), prompts


def _pairs_and_splits(cfg: TranslationTaskConfig, seed: int) -> tuple[list[Pair], list[Pair], list[Pair],
                                                                        dict[str, list[Pair]], list[Pair], list[Pair]]:
    """All pairs, the kept (non-empty) ones, the unique ones, the seeded splits, and the limited train/eval parts."""
    pairs = _load_pairs(cfg)
    kept = [(s.strip(), t.strip()) for s, t in pairs if s.strip() and t.strip()]
    unique = list(dict.fromkeys(kept))  # repeated pairs ("(Applause)") would leak across splits
    splits = _split(unique, cfg, seed)
    train = _limit(splits["train"], cfg.train_limit, seed)
    evaluation = _limit(splits[cfg.eval_split], cfg.eval_limit, seed)
    if not train or not evaluation:
        raise DataError(
            f"task {cfg.name!r}: empty split after dropping {len(pairs) - len(kept)} pairs with an empty side "
            f"(train {len(train)}, {cfg.eval_split} {len(evaluation)})"
        )
    return pairs, kept, unique, splits, train, evaluation


class PromptEncoder:
    """Builds token ids for training (prompt + target + eos, labels masked on the prompt) and for eval.

    With a ``teacher`` encoder (context distillation) each training row also holds the teacher's sequence:
    its prompt (``context`` + prompt, its own template) + the same target, as ``teacher_*`` columns.
    """

    def __init__(self, cfg: TranslationTaskConfig, tokenizer: Any, context: str = "", inline: bool = False,
                 teacher: PromptEncoder | None = None) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise DataError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
                f"{'eos' if tokenizer.eos_token_id is None else 'pad'} token, which translation needs "
                "(Llama 3 tokenizers ship without a pad token): set model.pad_token=eos, or a new token such as "
                "model.pad_token='<|pad|>' (added to the tokenizer; teacher and student embeddings are resized)")
        if cfg.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"use_chat_template=true (task or distill.teacher_chat_template), but the tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template (base models usually have none): "
                "set it to false"
            )
        self.cfg, self.tokenizer, self.teacher = cfg, tokenizer, teacher
        self.context, self.inline = context, inline  # inline: the template has a {context} field

    def prompt_ids(self, source: str, budget: int | None = None) -> list[int]:
        """Token ids of the prompt; when longer than ``budget``, the source sentence is cut, not the template."""
        return self._fit(source, budget)[1]

    def _fit(self, source: str, budget: int | None) -> tuple[str, list[int]]:
        """(the source as kept, the prompt ids) with the prompt cut to ``budget`` tokens."""
        ids = self._encode_prompt(source)
        if budget is not None and len(ids) > budget:
            source = self._cut_source(source, len(ids) - budget)
            ids = self._encode_prompt(source)[-budget:]
        return source, ids

    def _cut_source(self, source: str, excess: int) -> str:
        source_ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(source_ids[: max(len(source_ids) - excess, 1)])

    def prompt_text(self, source: str) -> str:
        cfg = self.cfg
        return cfg.prompt_template.format(source=source, source_lang=cfg.source_lang, target_lang=cfg.target_lang,
                                          context=self.context)

    def rl_prompt(self, source: str) -> str | list[dict[str, str]]:
        """The eval prompt (source cut to half of max_length, as :meth:`eval_example`) in TRL's form: plain text
        (TRL tokenizes it as here, special tokens added) or a one-turn chat (TRL adds the generation prompt)."""
        excess = len(self._encode_prompt(source)) - self.cfg.max_length // 2
        text = self.prompt_text(self._cut_source(source, excess) if excess > 0 else source)
        return [{"role": "user", "content": text}] if self.cfg.use_chat_template else text

    def _encode_prompt(self, source: str) -> list[int]:
        text = self.prompt_text(source)
        prefix = self.context and not self.inline  # the context goes before the prompt (the system turn in chat)
        if self.cfg.use_chat_template:
            system = [{"role": "system", "content": self.context}] if prefix else []
            text = self.tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(f"{self.context}\n\n{text}" if prefix else text)["input_ids"]

    def _answer(self, target: str) -> list[int]:
        # after "Target:" a space separates; a chat template's assistant turn starts right after its header
        lead = "" if self.cfg.use_chat_template else " "
        return self.tokenizer(lead + target, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def training_example(self, source: str, target: str) -> dict[str, list[int]]:
        limit = self.cfg.max_length
        kept, prompt = self._fit(source, limit - min(len(self._answer(target)), limit // 2))
        row = self.answer_example(prompt, target)
        if self.teacher is not None:  # the same (possibly cut) source and answer; the context is never cut
            answer = row["labels"][len(prompt):]
            teacher_prompt = self.teacher.prompt_ids(kept)
            row |= {
                "teacher_input_ids": teacher_prompt + answer,
                "teacher_attention_mask": [1] * (len(teacher_prompt) + len(answer)),
                "teacher_labels": [-100] * len(teacher_prompt) + answer,
            }
        return row

    def answer_example(self, prompt: list[int], target: str) -> dict[str, list[int]]:
        """``prompt`` (kept whole) + the target's tokens + eos, cut at max_length; labels mask the prompt."""
        answer = self._answer(target)[: self.cfg.max_length - len(prompt)]
        return {
            "input_ids": prompt + answer,
            "attention_mask": [1] * (len(prompt) + len(answer)),
            "labels": [-100] * len(prompt) + answer,
        }

    def eval_example(self, source: str, target: str, with_context: bool = False) -> dict[str, Any]:
        """``prompt_ids`` to generate from, and the whole prompt + target sequence the likelihood metrics score
        (both the teacher's, context included, for ``with_context``)."""
        kept, prompt = self._fit(source, self.cfg.max_length // 2)
        sequence = self.training_example(source, target)
        own = {k: v for k, v in sequence.items() if not k.startswith("teacher_")}
        if with_context and self.teacher is not None:
            prompt = self.teacher.prompt_ids(kept)
            own = {k.removeprefix("teacher_"): v for k, v in sequence.items() if k.startswith("teacher_")}
        return {**own, "prompt_ids": prompt, "source": source, "reference": target}


class CausalLMCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) for training, and the teacher's
    ``teacher_*`` sequence when a row has one; passes example_id."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prefixes = ("", "teacher_") if "teacher_input_ids" in features[0] else ("",)
        batch = {}
        for prefix in prefixes:  # the teacher's sequence (context distillation) is padded to its own width
            width = max(len(f[prefix + "input_ids"]) for f in features)
            for key, value in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("labels", -100)):
                key = prefix + key
                batch[key] = torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])
        if "example_id" in features[0]:
            batch["example_id"] = torch.tensor([f["example_id"] for f in features])
        return batch


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _load_pairs(cfg: TranslationTaskConfig) -> list[Pair]:
    if cfg.source_file is not None:
        sources = Path(cfg.source_file).read_text(encoding="utf-8").splitlines()
        targets = Path(cfg.target_file).read_text(encoding="utf-8").splitlines()
        return list(zip(sources, targets, strict=True))
    ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split="train")  # online machines only
    return [(ex["translation"][cfg.source_key], ex["translation"][cfg.target_key]) for ex in ds]


def _split(pairs: list[Pair], cfg: TranslationTaskConfig, seed: int) -> dict[str, list[Pair]]:
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * cfg.validation_fraction))
    n_test = max(1, round(len(shuffled) * cfg.test_fraction))
    return {
        "validation": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
        "train": shuffled[n_val + n_test :],
    }


def _limit(pairs: list[Pair], limit: int | None, seed: int) -> list[Pair]:
    return pairs if limit is None else pairs[:limit]  # already shuffled by the seeded split


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("translation", TranslationHandler())
