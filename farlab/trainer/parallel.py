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
        # Rank 0's evaluation and export gather the sharded pair first (farlab.distributed.unsharded, tested with
        # PyTorch's FSDP2 on CPU), but accelerate shards only on GPUs, so the Trainer-driven run has never been
        # checked end to end. Refused until benchmarks/gpu/fsdp_check.sh (which sets the variable) passes on one.
        problems.append("train.fsdp.enabled=true has not been run end to end yet (accelerate shards on GPUs only "
                        "and no GPU check has passed): train with DDP (torchrun without train.fsdp), or set "
                        "FARLAB_FSDP_UNVERIFIED=1 to try it as benchmarks/gpu/fsdp_check.sh does; "
                        "see docs/distributed.md")
    elif train_cfg.fsdp.enabled and not distributed.launched():
        problems.append("train.fsdp.enabled=true shards across processes: launch with torchrun --nproc_per_node=N "
                        "or a multi-task SLURM job (hydra.launcher.tasks_per_node=N), see docs/distributed.md")
    return problems
