"""Several processes, one run: the few collective steps farlab adds around the Trainer's own DDP/FSDP.

``torchrun`` (or a multi-task SLURM job, see :func:`export_slurm_environment`) starts one process per device with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set. The Trainer (through accelerate) does
the data-parallel training itself; farlab adds only what the Trainer does not know about:

* the run dir's bookkeeping (config.yaml, run_metadata.json, metrics.json, final/) is written by rank 0 alone;
* evaluation runs once, on rank 0, and its result is broadcast (:func:`on_main`), so every rank sees the same
  metrics and callbacks that act on them (early stopping) decide alike; under FSDP every rank first gathers the
  whole parameters (:func:`unsharded`), so rank 0 alone can run forwards and write ``final/``;
* write-once folders that every rank needs are built once (:func:`build_once_together`);
* a stop signal is agreed across ranks (:func:`agreed_max`) so all ranks stop after the same step.

Every helper is a no-op in a single process, so the same code path serves one process and many. The process
group is created here (:func:`init_from_env`) before any model is built, because the run dir and the "build once"
decisions need collectives before the Trainer exists; accelerate reuses an initialised group.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from farlab.atomic import build_locked, build_once, entry_lock, is_complete

log = logging.getLogger(__name__)
T = TypeVar("T")


def world_size() -> int:
    """Number of processes of this run: the process group's size, else the launcher's ``WORLD_SIZE`` (1 alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that writes the run dir (global rank 0; the only process of a plain run)."""
    return rank() == 0


def launched() -> bool:
    """True under a distributed launcher (torchrun sets RANK, even for one process; a multi-task SLURM job)."""
    return "RANK" in os.environ or _slurm_tasks()


def _slurm_tasks() -> bool:
    """This process is one task of a multi-task SLURM job step (srun; submitit starts its tasks so). The batch
    script of an ``--ntasks=N`` job is not: it runs once, so it must not wait for N-1 peers."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def export_slurm_environment() -> bool:
    """In a multi-task SLURM job (``srun``/submitit with ``tasks_per_node`` or ``nodes`` > 1), set the variables
    ``init_process_group`` reads (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) from SLURM's, with submitit's
    helper. Returns True when it did; a launcher's own variables (torchrun inside SLURM) are left alone."""
    if "RANK" in os.environ or not _slurm_tasks():
        return False
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("SLURM task %d of %d: distributed environment from SLURM (master %s:%d)",
             env.rank, env.world_size, env.master_addr, env.master_port)
    return True


def init_from_env() -> None:
    """Create the process group when this process is one of several (idempotent; nothing in a single process).

    gloo on CPU, NCCL on CUDA (each process on the GPU of its ``LOCAL_RANK``).
    """
    export_slurm_environment()
    if world_size() <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    log.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)


def shutdown(*, wait: bool) -> None:
    """Destroy the process group before the interpreter exits (a no-op when there is none).

    Left to interpreter teardown, gloo's worker threads can abort a rank that finished cleanly ("terminate called
    without an active exception", SIGABRT): torchrun then fails the whole job. ``wait``: meet the other ranks first
    (a clean finish); a failing or preempted rank must not wait for peers that may never come.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not _active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


class RemoteError(RuntimeError):
    """Rank 0 failed in a step the other ranks were waiting for (its own traceback is in its log)."""


def on_main(fn: Callable[[], T], whole: nn.Module | None = None) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank (evaluation, run-dir decisions).

    ``whole``: a model ``fn`` reads (the training pair); when FSDP shards it, every rank gathers its whole
    parameters for the call (:func:`unsharded`). An exception on rank 0 is re-raised there and turned into
    :class:`RemoteError` on the others, so no rank is left waiting for a result that never comes.
    """
    if not _active():
        return fn()
    if whole is not None:
        with unsharded(whole):
            return on_main(fn)
    if is_main():
        try:
            result = fn()
        except BaseException as err:
            broadcast(("error", f"{type(err).__name__}: {err}"))
            raise
        return broadcast(("ok", result))[1]
    status, value = broadcast(None)
    if status == "error":
        raise RemoteError(f"rank 0 failed: {value}")
    return value


@contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Every FSDP2-sharded part of ``model`` holds its whole parameters in the block (a collective: every rank
    must enter), so one rank alone can run forwards and save the weights; sharded again on exit.

    Pass the module FSDP wrapped last (the training pair): its own parameters (e.g. embeddings that no wrapped
    block owns) belong to its group. Inside the block forwards leave the parameters whole
    (``set_reshard_after_forward(False)``, PyTorch's documented way to run evals) and ``state_dict()`` returns
    them whole (FSDP's pre-save hook, which would swap the shards back in, is suspended), so
    ``save_pretrained`` writes the whole model. Each module's own settings are restored afterwards. A no-op
    without FSDP.

    Hand-written because PyTorch offers no "whole model on one rank for a while" for FSDP2 (its full state dict
    helpers return tensors, not a module that can run forwards); it reads a few private FSDP2 attributes, so
    tests/integration/test_fsdp_unsharded.py pins the behaviour at the pinned torch version.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        yield
        return
    # Each module's reshard-after-forward state as fully_shard left it (no public getter), restored exactly.
    states = [m._get_fsdp_state() for m in sharded]
    before = [(st._auto_reshard_after_forward, [g.post_forward_mesh_info for g in st._fsdp_param_groups])
              for st in states]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()  # FSDP registers its state-dict hooks lazily, at the first unshard: take them after
    # Forwards record their order for the next backward's prefetching; rank 0's extra forwards here must not
    # reach it, or its all-gathers in the next backward would come in another order than the other ranks'.
    groups = [g for st in states for g in st._fsdp_param_groups]
    orders = {id(g.comm_ctx.post_forward_order): g.comm_ctx.post_forward_order for g in groups}
    orders_before = {key: list(order) for key, order in orders.items()}
    indices_before = [list(g._post_forward_indices) for g in groups]
    save_hooks = [(owner, handle.id, owner._state_dict_pre_hooks.pop(handle.id))
                  for st in states for g in st._fsdp_param_groups
                  for owner, handle in g._module_to_pre_save_state_dict_hook_handle.items()
                  if handle.id in owner._state_dict_pre_hooks]
    try:
        yield
    finally:
        for owner, hook_id, hook in save_hooks:
            owner._state_dict_pre_hooks[hook_id] = hook
        for key, order in orders.items():
            order[:] = orders_before[key]
        for group, indices in zip(groups, indices_before):
            group._post_forward_indices[:] = indices
        for module, state, (auto, infos) in zip(sharded, states, before):
            state._auto_reshard_after_forward = auto
            for group, info in zip(state._fsdp_param_groups, infos):
                group.post_forward_mesh_info = info
            module.reshard()


def agreed_max(value: int) -> int:
    """The largest ``value`` over all ranks (e.g. a signal number seen by any rank, 0 for none)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def summed(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (run totals: losses, counts, tokens)."""
    if not _active() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def build_once_together(entry: Path, build: Callable[[Path], None], what: str = "entry") -> bool:
    """:func:`farlab.atomic.build_once` for a build every rank takes part in (a DDP fine-tuning: its collectives
    need all ranks). Rank 0 holds the entry's lock, decides, builds into the staging folder and publishes; the
    other ranks run the same build into a scratch folder that is thrown away. Returns True when reused.

    In a single process this is exactly :func:`build_once`.
    """
    if not _active():
        return build_once(entry, build, what)
    lock = entry_lock(entry) if is_main() else nullcontext()
    with lock:  # against other jobs (a sweep) building the same entry; the ranks of this job wait in broadcast
        if broadcast(is_complete(entry) if is_main() else None):
            return True
        if is_main():
            build_locked(entry, build, what)
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f"farlab-rank{rank()}-"))
            try:
                build(scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        barrier()  # the entry is published before any rank reads it
    return False
