"""What the Trainer needs to train across processes: its FSDP settings, and the checks of what DDP/FSDP cannot do.

Data parallelism itself (DDP under ``torchrun``) needs no setting: the Trainer wraps the pair when the process is one
of several. ``train.fsdp`` turns on sharding through the Trainer's own FSDP support (accelerate's FSDP2), so farlab
adds no sharding code: it only names the layer classes to shard separately, which the Trainer reads from the model
it is given, and the pair (a plain ``nn.Module`` holding student and teacher) has none of its own.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from farlab import distributed
from farlab.errors import ConfigError


def fsdp_arguments(fsdp: Any, *models: Any) -> dict[str, Any]:
    """``TrainingArguments`` keywords for ``train.fsdp`` (empty when off).

    The frozen teacher is part of the pair, so it is sharded with it, in the dtype it was loaded in; it has
    ``requires_grad=False`` and the Trainer builds the optimizer from trainable parameters only.
    """
    if not fsdp.enabled:
        return {}
    if not torch.cuda.is_available():
        # accelerate enables FSDP for accelerator devices only: on CPU it would silently train with plain DDP.
        raise ConfigError("train.fsdp.enabled=true needs CUDA GPUs (accelerate shards on accelerator devices only; "
                          "on CPU it would silently fall back to DDP): run without train.fsdp on CPU, "
                          "see docs/distributed.md")
    wrap = list(fsdp.wrap) if fsdp.wrap else sorted(layer_classes(*models))
    config: dict[str, Any] = {"version": 2, "reshard_after_forward": bool(fsdp.reshard_after_forward),
                              "cpu_offload": bool(fsdp.cpu_offload), "state_dict_type": "FULL_STATE_DICT"}
    if wrap:
        config.update(auto_wrap_policy="TRANSFORMER_BASED_WRAP", transformer_layer_cls_to_wrap=wrap)
    return {"fsdp": True, "fsdp_config": config}


def layer_classes(*models: Any) -> set[str]:
    """The block classes Hugging Face models declare as unsplittable (``_no_split_modules``): FSDP's wrap units."""
    names: set[str] = set()
    for model in models:
        if model is not None:
            names.update(getattr(model, "_no_split_modules", None) or [])
    return names


def parallel_problems(train_cfg: Any) -> list[str]:
    """Model-free checks of the settings that change across processes."""
    problems = []
    processes = distributed.world_size()
    if processes > 1 and train_cfg.unfreeze.frozen_blocks > 0:
        # DDP registers its gradient hooks on the parameters that require grad when it wraps the model: blocks
        # unfrozen later would train on each rank's half of the batch alone and drift apart.
        problems.append(f"train.unfreeze.frozen_blocks={train_cfg.unfreeze.frozen_blocks} cannot run across "
                        f"{processes} processes (DDP would not synchronise blocks unfrozen during training); "
                        "set it to 0, or train in one process")
    if train_cfg.fsdp.enabled and os.environ.get("FARLAB_FSDP_UNVERIFIED") != "1":
        # Evaluation and export run on rank 0 alone (farlab.distributed.on_main), which holds only a shard under
        # FSDP: the run would wait forever at its first evaluation. Refused until that path is built and checked
        # on GPUs; benchmarks/gpu/fsdp_check.sh sets the variable to exercise it.
        problems.append("train.fsdp.enabled=true is not usable yet: farlab evaluates and exports on rank 0 alone, "
                        "which needs the whole student (DDP), so a sharded run would hang at its first evaluation; "
                        "train with DDP (torchrun without train.fsdp), see docs/distributed.md")
    elif train_cfg.fsdp.enabled and not distributed.launched():
        problems.append("train.fsdp.enabled=true shards across processes: launch with torchrun --nproc_per_node=N "
                        "or a multi-task SLURM job (hydra.launcher.tasks_per_node=N), see docs/distributed.md")
    return problems
