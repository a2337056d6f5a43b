"""Instruction / chat data from files: Alpaca records, ``messages`` conversations, prompt/completion pairs.

Every record becomes a conversation (a list of ``{"role", "content"}`` turns), rendered with the tokenizer's
chat template when it has one (``task.use_chat_template: null`` = auto) or a plain Alpaca-style layout when not.
The loss covers assistant turns only: the character span of each assistant turn in the rendered text is found by
rendering the conversation up to that turn (the generation prompt) and up to its end, and tokens whose offsets
fall inside a span keep their labels; everything else is -100. Multi-turn conversations train on every assistant
turn; the eval split's generation prompt is everything before the last assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from farlab.data.base import GenerationConfig, TaskData, check_eval_settings, metric_fields, typed_config
from farlab.data.files import Record, check_sources, hub_records, read_records, seeded_limit, split_or_load
from farlab.data.translation import CausalLMCollator
from farlab.errors import DataError
from farlab.registry import unknown_choice_message

RECORD_FORMATS = ("auto", "alpaca", "messages", "prompt_completion")
Conversation = list[dict[str, str]]


@dataclass
class InstructionColumns:
    """Where each format keeps its fields: map your own column names here."""

    instruction: str = "instruction"  # alpaca
    input: str = "input"  # alpaca, optional per record
    output: str = "output"  # alpaca
    messages: str = "messages"  # messages: a list of {role, content}
    prompt: str = "prompt"  # prompt_completion
    completion: str = "completion"  # prompt_completion
    system: str | None = None  # a per-record system prompt column (any format)
    role_key: str = "role"
    content_key: str = "content"
    assistant_role: str = "assistant"


@dataclass
class InstructionTaskConfig:
    name: str = "instruction"
    family: str = "instruction"
    train_file: str | None = None  # .jsonl or .json
    eval_file: str | None = None  # null: a seeded validation_fraction of train
    hub_name: str | None = None  # online machines: a datasets name (train_file: null)
    hub_config: str | None = None
    format: str = "auto"  # auto | alpaca | messages | prompt_completion (auto: from the first record's keys)
    file_format: str = "auto"  # auto (by suffix) | jsonl | json
    columns: InstructionColumns = field(default_factory=InstructionColumns)
    system_prompt: str | None = None  # prepended as a system turn when a record has none
    use_chat_template: bool | None = None  # null: the tokenizer's chat template when it has one
    max_length: int = 512  # tokens per conversation (longer ones are cut; ones left without a response dropped)
    validation_fraction: float = 0.1
    train_limit: int | None = None
    eval_limit: int | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: list[str] = field(default_factory=lambda: ["perplexity", "nll"])  # + chrf, rougeL, exact_match
    primary_metric: str | None = None


class InstructionHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_config(InstructionTaskConfig, task_cfg)
        if cfg.format not in RECORD_FORMATS:
            raise DataError(unknown_choice_message("task.format", cfg.format, RECORD_FORMATS))
        check_eval_settings(list(cfg.metrics), cfg.primary_metric)
        if cfg.max_length < 8:
            raise DataError(f"task.max_length={cfg.max_length} is too small (>= 8)")
        check_sources([cfg.train_file] if cfg.train_file else [], cfg.hub_name, cfg.file_format)
        if cfg.eval_file:
            check_sources([cfg.eval_file], None, cfg.file_format)

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> TaskData:
        cfg = typed_config(InstructionTaskConfig, task_cfg)
        train, given_eval = _read(cfg)
        fmt = cfg.format if cfg.format != "auto" else detect_format(train[0], cfg.columns)
        to_conv = lambda r: to_conversation(r, fmt, cfg.columns, cfg.system_prompt)  # noqa: E731
        splits = split_or_load([to_conv(r) for r in train],
                               None if given_eval is None else [to_conv(r) for r in given_eval],
                               cfg.validation_fraction, seed, Path(cfg.eval_file).name if cfg.eval_file else "eval")
        renderer = Renderer(tokenizer, cfg.use_chat_template)
        train_rows = [renderer.encode(c, cfg.max_length) for c in seeded_limit(splits.train, cfg.train_limit, seed)]
        eval_rows = [renderer.eval_example(c, cfg.max_length) for c in seeded_limit(splits.eval, cfg.eval_limit, seed)]
        kept_train = [r for r in train_rows if any(x != -100 for x in r["labels"])]
        kept_eval = [r for r in eval_rows if any(x != -100 for x in r["labels"])]
        if not kept_train or not kept_eval:
            raise DataError(f"task {cfg.name!r}: no example keeps a response token within task.max_length="
                            f"{cfg.max_length} (train {len(kept_train)}, eval {len(kept_eval)}); raise it")
        return TaskData(
            name=cfg.name,
            kind="causal_lm",
            train=datasets.Dataset.from_list([{**r, "example_id": i} for i, r in enumerate(kept_train)]),
            eval=datasets.Dataset.from_list(kept_eval),
            collator=CausalLMCollator(tokenizer.pad_token_id),
            label_names=[],
            **metric_fields(cfg),
            eval_split_name=splits.eval_name,
            tokenizer=tokenizer,
            generation=cfg.generation,
            info={"format": fmt, "chat_template": renderer.uses_template,
                  "dropped_without_response": {"train": len(train_rows) - len(kept_train),
                                               "eval": len(eval_rows) - len(kept_eval)}},
        )


def _read(cfg: InstructionTaskConfig) -> tuple[list[Record], list[Record] | None]:
    if cfg.train_file is not None:
        train = read_records(cfg.train_file, cfg.file_format)
    else:
        train = hub_records(cfg.hub_name, cfg.hub_config, "train")
    return train, read_records(cfg.eval_file, cfg.file_format) if cfg.eval_file else None


def detect_format(record: Record, cols: InstructionColumns) -> str:
    """The record format from the first record's keys (``task.format`` names it explicitly)."""
    keys = set(record.data)
    if cols.messages in keys:
        return "messages"
    if {cols.instruction, cols.output} <= keys:
        return "alpaca"
    if {cols.prompt, cols.completion} <= keys:
        return "prompt_completion"
    raise DataError(f"{record.where}: cannot tell the record format from its keys {sorted(keys)}; expected "
                    f"{cols.messages!r} (messages), {cols.instruction!r}+{cols.output!r} (alpaca) or "
                    f"{cols.prompt!r}+{cols.completion!r} (prompt_completion); set task.format and task.columns")


def to_conversation(record: Record, fmt: str, cols: InstructionColumns, system_prompt: str | None = None
                    ) -> Conversation:
    """One record as a list of role/content turns with at least one assistant turn."""
    turns: Conversation = []
    if fmt == "alpaca":
        instruction, extra = str(record.get(cols.instruction)), record.get(cols.input, required=False)
        user = f"{instruction}\n\n{extra}" if extra not in (None, "") else instruction
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": str(record.get(cols.output))}]
    elif fmt == "prompt_completion":
        turns = [{"role": "user", "content": str(record.get(cols.prompt))},
                 {"role": "assistant", "content": str(record.get(cols.completion))}]
    elif fmt == "messages":
        turns = _messages(record, cols)
    else:
        raise DataError(unknown_choice_message("task.format", fmt, RECORD_FORMATS))
    system = record.get(cols.system, required=False) if cols.system else None
    system = system or system_prompt
    if system and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": str(system)})
    return turns


def _messages(record: Record, cols: InstructionColumns) -> Conversation:
    raw = record.get(cols.messages)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{record.where}: {cols.messages!r} must be a non-empty list of "
                        f"{{{cols.role_key!r}, {cols.content_key!r}}} turns")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or cols.role_key not in turn or cols.content_key not in turn:
            raise DataError(f"{record.where}: turn {i} is not a {{{cols.role_key!r}, {cols.content_key!r}}} object "
                            f"({turn!r:.80}); set task.columns.role_key/content_key")
        role = "assistant" if turn[cols.role_key] == cols.assistant_role else str(turn[cols.role_key])
        turns.append({"role": role, "content": str(turn[cols.content_key])})
    if not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{record.where}: conversation has no assistant turn (roles: {[t['role'] for t in turns]}); "
                        f"nothing to train on (task.columns.assistant_role={cols.assistant_role!r})")
    return turns


class Renderer:
    """Conversation -> text (the chat template, or a plain layout) and token labels on assistant turns only."""

    def __init__(self, tokenizer: Any, use_chat_template: bool | None) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise DataError("the tokenizer needs eos and pad tokens for instruction data (set tokenizer.pad_token)")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise DataError(f"task.use_chat_template=true, but the tokenizer "
                            f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template; set it to null (auto)")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("instruction data needs a fast tokenizer (token offsets find the assistant turns)")
        self.tokenizer = tokenizer
        self.uses_template = has_template if use_chat_template is None else use_chat_template

    def render(self, turns: Conversation, generation_prompt: bool = False) -> str:
        if self.uses_template:
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
        return plain_render(turns, self.tokenizer.eos_token, generation_prompt)

    def assistant_spans(self, turns: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character span of every assistant turn in it."""
        text = self.render(turns)
        spans = []
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            prompt, through = self.render(turns[:i], generation_prompt=True), self.render(turns[: i + 1])
            if not (text.startswith(through) and through.startswith(prompt)):
                raise DataError("the chat template does not render a conversation as a prefix of its continuation; "
                                "set task.use_chat_template=false")
            spans.append((len(prompt), len(through.rstrip())))  # the turn's end marker, not the whitespace after
        return text, spans

    def encode(self, turns: Conversation, max_length: int) -> dict[str, list[int]]:
        text, spans = self.assistant_spans(turns)
        enc = self.tokenizer(text, add_special_tokens=not self.uses_template, return_offsets_mapping=True,
                             truncation=True, max_length=max_length)
        pairs = zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        labels = [tok if _inside(off, spans) else -100 for tok, off in pairs]
        return {"input_ids": enc["input_ids"], "attention_mask": [1] * len(enc["input_ids"]), "labels": labels}

    def eval_example(self, turns: Conversation, max_length: int) -> dict[str, Any]:
        """The training encoding plus the generation prompt (all before the last assistant turn) and reference."""
        last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
        prompt = self.render(turns[:last], generation_prompt=True)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=not self.uses_template)["input_ids"]
        return {**self.encode(turns, max_length), "prompt_ids": prompt_ids[-(max_length // 2):],
                "reference": turns[last]["content"].strip()}


def plain_render(turns: Conversation, eos: str, generation_prompt: bool = False) -> str:
    """The layout for tokenizers without a chat template (Alpaca's headers); the assistant turn ends with eos."""
    headers = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}
    parts = []
    for turn in turns:
        header = headers.get(turn["role"], f"### {turn['role'].capitalize()}:\n")
        end = eos if turn["role"] == "assistant" else ""
        parts.append(f"{header}{turn['content']}{end}\n\n")
    if generation_prompt:
        parts.append(headers["assistant"])
    return "".join(parts)


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """A real token (non-empty offsets) that starts inside an assistant span."""
    start, end = offset
    return end > start and any(s <= start < e for s, e in spans)


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("instruction", InstructionHandler())
