"""One validator for a whole run config, before any model loads.

It holds no rules of its own: it asks each part (task handler, loss plan, models, teacher strategy, teacher
backend, trainer) for the problems it sees and raises one :class:`~farlab.errors.ConfigError` listing them,
each naming the bad value and the valid choices. A new part adds its own ``*_problems`` function and one line here.
"""

from __future__ import annotations

from omegaconf import DictConfig

from farlab.data import validate_task_config
from farlab.data.context import context_problems
from farlab.errors import ConfigError
from farlab.eval.harness import harness_problems
from farlab.losses.plan import LossPlan
from farlab.models.loading import model_problems
from farlab.rl.checks import rl_problems
from farlab.teachers.backends import teacher_problems
from farlab.teachers.generations import generate_problems
from farlab.teachers.strategies import strategy_problems
from farlab.teachers.tokenizers import vocab_align_problems
from farlab.trainer.fit import train_problems
from farlab.trainer.parallel import parallel_problems


def validate_config(cfg: DictConfig) -> LossPlan:
    """Refuse bad values early; returns the run's :class:`LossPlan` (the loss decided once).

    One normalisation happens on the way: ``teacher.backend=<name>`` set alone (rather than ``teacher=<name>``)
    gets that backend's settings section with its defaults, so later code always finds it.
    """
    if cfg.task is None:
        raise ConfigError("no task selected; pass task=<name>, e.g. task=cola")
    validate_task_config(cfg.task)  # raises DataError with the file and line where it can
    try:
        plan = LossPlan.from_config(cfg.loss)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    problems = [
        *model_problems(cfg.model),
        *vocab_align_problems(cfg.model.vocab_align),
        *strategy_problems(cfg.teacher_strategy, plan),
        *train_problems(cfg.train, cfg.wandb),
        *parallel_problems(cfg.train),
        *harness_problems(cfg.eval.harness, cfg.paths.get("data")),
        *context_problems(cfg.get("distill"), cfg.task, plan),
        *rl_problems(cfg),  # rl=grpo: rewards, generation batch, a generative student, the teacher's tokenizer
        *generate_problems(cfg.generate, cfg.task, cfg.teacher.backend),
    ]
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    teacher = teacher_problems(cfg, plan)
    if teacher:
        raise ConfigError("invalid teacher setup:\n  - " + "\n  - ".join(teacher))
    return plan
