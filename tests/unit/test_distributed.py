"""farlab.distributed's helpers in one process (plain calls) and in a real 2-process gloo group, and the checks of
farlab.trainer.parallel."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from farlab import distributed
from farlab.atomic import is_complete
from farlab.config import TrainConfig
from farlab.errors import ConfigError
from farlab.trainer.parallel import fsdp_arguments, parallel_problems


def build_into(calls: Path):
    """A build that leaves its mark: which rank built, and into which folder."""

    def build(folder: Path) -> None:
        (folder / "weights.txt").write_text("w")
        with open(calls, "a") as handle:
            handle.write(json.dumps({"rank": distributed.rank(), "folder": str(folder)}) + "\n")

    return build


def test_one_process_helpers_are_plain_calls(tmp_path):
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.on_main(lambda: {"a": 1}) == {"a": 1}
    assert distributed.broadcast([3]) == [3] and distributed.agreed_max(7) == 7 and distributed.summed([1.5]) == [1.5]
    entry, calls = tmp_path / "entry", tmp_path / "calls.jsonl"
    assert distributed.build_once_together(entry, build_into(calls)) is False
    assert distributed.build_once_together(entry, build_into(calls)) is True  # reused
    assert is_complete(entry) and len(calls.read_text().splitlines()) == 1


def _worker(rank: int, root: str) -> None:
    root_path = Path(root)
    dist.init_process_group("gloo", init_method=f"file://{root_path / 'rendezvous'}", rank=rank, world_size=2)
    out: dict = {"rank": distributed.rank(), "world": distributed.world_size()}
    out["on_main"] = distributed.on_main(lambda: {"from": distributed.rank()})
    try:
        distributed.on_main(lambda: 1 / 0)
    except distributed.RemoteError as err:
        out["error"] = ["RemoteError", str(err)]
    except ZeroDivisionError:
        out["error"] = ["ZeroDivisionError"]
    out["agreed"] = distributed.agreed_max(10 if rank == 1 else 0)  # a signal seen by rank 1 alone
    out["summed"] = distributed.summed([1.0, float(rank)])
    entry, calls = root_path / "store" / "entry", root_path / "calls.jsonl"
    out["built_reused"] = [distributed.build_once_together(entry, build_into(calls)),
                           distributed.build_once_together(entry, build_into(calls))]
    distributed.shutdown(wait=True)
    out["after_shutdown"] = [dist.is_initialized(), distributed.world_size()]
    distributed.shutdown(wait=True)  # twice: a no-op
    (root_path / f"rank{rank}.json").write_text(json.dumps(out))


def test_two_processes_agree(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["on_main"] == r1["on_main"] == {"from": 0}  # rank 0 ran it, rank 1 received its result
    assert r0["error"] == ["ZeroDivisionError"]
    assert r1["error"][0] == "RemoteError" and "ZeroDivisionError" in r1["error"][1]  # not left waiting
    assert r0["agreed"] == r1["agreed"] == 10
    assert r0["summed"] == r1["summed"] == [2.0, 1.0]
    assert r0["built_reused"] == r1["built_reused"] == [False, True]
    assert r0["after_shutdown"] == r1["after_shutdown"] == [False, 1]  # torn down: nothing left for interpreter exit
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert sorted(c["rank"] for c in calls) == [0, 1]  # both ranks took part in the one build ...
    assert [p.name for p in (tmp_path / "store").iterdir() if p.is_dir()] == ["entry"]  # ... published once
    scratch = next(Path(c["folder"]) for c in calls if c["rank"] == 1)
    assert not scratch.exists()  # rank 1's copy was thrown away


def train_cfg(**fields):
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), fields)


def test_parallel_problems(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert parallel_problems(train_cfg(unfreeze={"frozen_blocks": 2})) == []  # one process: fine
    monkeypatch.delenv("FARLAB_FSDP_UNVERIFIED", raising=False)
    [problem] = parallel_problems(train_cfg(fsdp={"enabled": True}))
    assert "not been run end to end" in problem and "FARLAB_FSDP_UNVERIFIED=1" in problem  # until a GPU check
    monkeypatch.setenv("FARLAB_FSDP_UNVERIFIED", "1")  # the GPU check script's way in
    [problem] = parallel_problems(train_cfg(fsdp={"enabled": True}))
    assert "torchrun" in problem and "train.fsdp.enabled" in problem
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    [problem] = parallel_problems(train_cfg(unfreeze={"frozen_blocks": 2}))
    assert "train.unfreeze.frozen_blocks=2" in problem and "2 processes" in problem
    assert parallel_problems(train_cfg(fsdp={"enabled": True})) == []


def test_fsdp_arguments(monkeypatch):
    off = train_cfg().fsdp
    assert fsdp_arguments(off) == {}
    on = train_cfg(fsdp={"enabled": True, "reshard_after_forward": False}).fsdp
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs CUDA"):
        fsdp_arguments(on)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    student = SimpleNamespace(_no_split_modules=["BertLayer"])
    teacher = SimpleNamespace(_no_split_modules=["BertLayer", "BertEmbeddings"])
    args = fsdp_arguments(on, student, teacher)
    assert args["fsdp"] is True
    assert args["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["BertEmbeddings", "BertLayer"]
    assert args["fsdp_config"]["reshard_after_forward"] is False and args["fsdp_config"]["version"] == 2
    from transformers import TrainingArguments

    monkeypatch.undo()  # the arguments' parsing needs no GPU; TrainingArguments would pick the (absent) CUDA device
    # The Trainer accepts them: its FSDP plugin arguments carry farlab's choices.
    parsed = TrainingArguments(output_dir="/tmp/unused", **args).fsdp_plugin_args
    assert parsed["transformer_cls_names_to_wrap"] == "BertEmbeddings,BertLayer"
    assert parsed["reshard_after_forward"] is False
