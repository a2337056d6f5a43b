"""Model-free checks of the ``rl`` block, run by farlab.validate before any model loads."""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from farlab import distributed
from farlab.data import TASK_FAMILIES
from farlab.losses.divergences import TOPK_TAILS
from farlab.models.loading import spec_config_fields
from farlab.registry import unknown_choice_message
from farlab.rl.rewards import reward_problems
from farlab.rl.teacher import ESTIMATORS, REDUCTIONS
from farlab.teachers.backends import TEACHER_BACKENDS

RL_METHODS = ("none", "grpo")
REFERENCES = ("init", "teacher")
INITS = ("none", "sft")
VLLM_MODES = ("colocate", "server")
HEAD_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "Model")
# Teacher backends that can score the student's fresh samples (the reward), and why the others cannot.
REWARD_BACKENDS = ("hf", "openai")
NOT_FOR_REWARD = {
    "cache": ("the cache holds the teacher's outputs on the task's fixed training sequences, and GRPO scores the "
              "student's own fresh samples, which no cache can hold"),
    "self": ("teacher=self is the student with its LoRA adapters disabled, i.e. the initial student: for that "
             "anchor use rl.reference=init with rl.beta > 0"),
}


def needs_teacher(rl: Any) -> bool:
    """The teacher takes part in an RL run as a reward (teacher_weight > 0) or as GRPO's KL anchor."""
    return rl.teacher_weight > 0 or (rl.reference == "teacher" and rl.beta > 0)


def generation_batch(train: Any, processes: int = 1) -> int:
    """TRL's generation batch: per-device batch x processes x steps_per_generation (= grad_accum_steps)."""
    return int(train.batch_size) * processes * int(train.grad_accum_steps)


def multiprocess_problem(processes: int) -> str:
    return (f"rl=grpo runs in one process; this is one of {processes} (torchrun or a multi-task SLURM job, "
            "WORLD_SIZE). TRL's GRPOTrainer could train data-parallel (its generation batch is train.batch_size x "
            "processes x train.grad_accum_steps, and rl.num_generations must divide it), but farlab's RL run does "
            "not yet coordinate its evaluation, SFT warm start, teacher and run dir across processes. Start it as "
            "one process (python -m farlab.train ...; on SLURM one task per job) and put the devices to use with a "
            "sweep, or rl.use_vllm for generation on a GPU")


def rl_problems(cfg: DictConfig) -> list[str]:
    """Everything wrong with ``cfg.rl`` that can be seen without loading a model; [] for ``rl=none``."""
    rl = cfg.rl
    if rl.name not in RL_METHODS:
        return [unknown_choice_message("rl.name", rl.name, RL_METHODS)]
    if rl.name == "none":
        return []
    problems = reward_problems(list(rl.rewards), None if rl.reward_weights is None else list(rl.reward_weights))
    processes = distributed.world_size() if distributed.launched() else 1
    if processes > 1:
        problems.append(multiprocess_problem(processes))
    problems += _generation_problems(rl, cfg.train, processes)
    for key, value, valid in (("reference", rl.reference, REFERENCES), ("init", rl.init, INITS),
                              ("vllm_mode", rl.vllm_mode, VLLM_MODES), ("teacher_kl", rl.teacher_kl, REDUCTIONS),
                              ("teacher_topk_tail", rl.teacher_topk_tail, TOPK_TAILS),
                              ("teacher_kl_estimator", rl.teacher_kl_estimator, ESTIMATORS)):
        if value not in valid:
            problems.append(unknown_choice_message(f"rl.{key}", value, valid))
    if rl.beta < 0 or rl.teacher_weight < 0:
        problems.append(f"rl.beta={rl.beta} and rl.teacher_weight={rl.teacher_weight} must be >= 0")
    if rl.reference == "teacher" and rl.beta == 0:
        problems.append("rl.reference=teacher anchors GRPO's KL term, which rl.beta=0 switches off: set rl.beta > 0")
    if rl.learning_rate is not None and rl.learning_rate <= 0:
        problems.append(f"rl.learning_rate={rl.learning_rate} must be > 0 (or null: train.learning_rate)")
    if rl.use_vllm and importlib.util.find_spec("vllm") is None:
        problems.append("rl.use_vllm=true needs the vllm package (GPU machines; docs/rl.md); set rl.use_vllm=false")
    problems += _task_problems(cfg.task)
    problems += _model_problems(cfg.model)
    if needs_teacher(rl):
        problems += _teacher_problems(cfg)
    return problems


def rl_family_problem(family: str) -> str:
    able = [name for name in TASK_FAMILIES if hasattr(TASK_FAMILIES.get(name), "rl_data")]
    return (f"rl=grpo needs prompts from the task handler; task family {family!r} has none "
            f"(families with RL prompts: {', '.join(able)})")


def _task_problems(task: Any) -> list[str]:
    """The task family builds RL prompts, and its own RL settings are complete (e.g. GLUE's verbaliser)."""
    handler = TASK_FAMILIES.get(task.family)
    if not hasattr(handler, "rl_data"):
        return [rl_family_problem(task.family)]
    return list(handler.rl_problems(task)) if hasattr(handler, "rl_problems") else []


def _generation_problems(rl: Any, train: Any, processes: int = 1) -> list[str]:
    problems = []
    batch = generation_batch(train, processes)
    if rl.num_generations < 2:
        problems.append(f"rl.num_generations={rl.num_generations} must be >= 2: GRPO compares completions of "
                        "one prompt with each other")
    elif batch % rl.num_generations:
        shown = (f"train.batch_size x train.grad_accum_steps = {train.batch_size} x {train.grad_accum_steps}"
                 if processes == 1 else f"train.batch_size x processes x train.grad_accum_steps = "
                 f"{train.batch_size} x {processes} x {train.grad_accum_steps}")
        problems.append(
            f"rl.num_generations={rl.num_generations} does not divide the generation batch {shown} = {batch} "
            "(TRL's rule: every prompt's group of completions fits in one batch); "
            "choose a divisor or change train.batch_size")
    if rl.max_completion_length < 1:
        problems.append(f"rl.max_completion_length={rl.max_completion_length} must be >= 1")
    if rl.temperature <= 0:
        problems.append(f"rl.temperature={rl.temperature} must be > 0 (GRPO needs sampling)")
    if not 0 < rl.top_p <= 1:
        problems.append(f"rl.top_p={rl.top_p} must be in (0, 1]")
    return problems


def _model_problems(model: Any) -> list[str]:
    """The policy must generate: a decoder (or vision-language) model, not an encoder or a classification head."""
    spec = model.teacher if model.student.source == "from_teacher" else model.student
    try:
        config = _spec_config(spec)
    except (OSError, ValueError):
        return []  # unreadable: the loader reports it with its own message
    model_type = config.model_type
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith(HEAD_SUFFIXES)]
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    generative = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    if heads or encoder or not generative:
        what = f"architectures {heads}" if heads else f"model_type {model_type!r}"
        return [(f"rl=grpo needs a generative student (a causal or vision-language LM that samples completions); "
                 f"model={model.name} student {spec.name!r} is an encoder/classification-head model ({what}). "
                 "Use a decoder model, e.g. model=tiny_llama or model=llama_3b_1b")]
    return []


def _spec_config(spec: Any) -> Any:
    if spec.source == "config":
        fields = spec_config_fields(spec)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(spec.path)


def _teacher_problems(cfg: DictConfig) -> list[str]:
    rl, model = cfg.rl, cfg.model
    use = f"rl.teacher_weight={rl.teacher_weight}" if rl.teacher_weight > 0 else "rl.reference=teacher"
    problems = []
    if model.teacher_tokenizer is not None and model.teacher_tokenizer != model.tokenizer:
        problems.append(
            f"{use} compares the teacher's and the student's next-token distributions on the student's sampled "
            f"tokens, which needs one tokenizer; model.teacher_tokenizer={model.teacher_tokenizer!r} differs from "
            f"model.tokenizer={model.tokenizer!r}. Use a teacher with the student's tokenizer, or rl.teacher_weight=0 "
            "and rl.reference=init")
    if rl.teacher_weight > 0 and model.processor is not None:
        problems.append(f"rl.teacher_weight={rl.teacher_weight}: the teacher reward scores text prompts only; "
                        f"model={model.name} is a vision-language pair (model.processor set). Set rl.teacher_weight=0")
    backend = cfg.teacher.backend
    if rl.teacher_weight > 0 and backend not in REWARD_BACKENDS:
        why = NOT_FOR_REWARD.get(backend, f"teacher={backend} cannot score new sequences")
        problems.append(f"rl.teacher_weight={rl.teacher_weight} needs a teacher that scores the student's sampled "
                        f"completions; {why}. Use teacher=hf (in process) or teacher=openai (a server's prompt "
                        "logprobs)")
    if rl.reference == "teacher" and rl.beta > 0 and not (backend in TEACHER_BACKENDS
                                                          and TEACHER_BACKENDS.get(backend).in_process):
        problems.append(f"rl.reference=teacher makes the teacher GRPO's reference model, which TRL runs in this "
                        f"process on full logits; teacher={backend} gives none: use teacher=hf, or rl.reference=init")
    if cfg.teacher_strategy.trainable:
        problems.append(f"{use} needs a frozen teacher; teacher_strategy={cfg.teacher_strategy.name} trains it")
    return problems
