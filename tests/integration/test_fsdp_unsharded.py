"""farlab's rank-0 work under FSDP: evaluation and export read whole parameters (farlab.distributed.unsharded).

Rank 0 alone runs the post-training evaluation and writes ``final/``; with FSDP each rank holds a shard, so a plain
rank-0 forward would wait forever for the others. Here PyTorch's own FSDP2 (``fully_shard``, which runs on CPU
with gloo) shards a tiny BERT pair across 2 real processes; :func:`farlab.distributed.on_main` with ``whole=pair``
lets rank 0 run two forwards and save the student after a training step: its logits and weights equal those of
one unsharded process that took the same step on the whole batch, and the pair is sharded again afterwards and
trains on. (accelerate shards only on GPUs, so the
Trainer-driven path, ``train.fsdp``, is checked by ``benchmarks/gpu/fsdp_check.sh``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

PROBE = Path(__file__).with_name("fsdp_probe.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT_S = 180


def test_rank0_reads_whole_parameters_of_an_fsdp_sharded_pair(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    try:  # ~10 s; a rank-0 step that needs the other rank hangs instead of failing
        proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(PROBE), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the 2-process FSDP job hung for {TIMEOUT_S}s (a collective only one rank entered?): {err}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["max_abs_logits"] == ranks[1]["max_abs_logits"]  # on_main hands rank 0's result to both
    for got in ranks:
        # Float sums in another order (two half-batch gradients averaged): within the DDP tests' tolerance.
        assert got["max_abs_logits"] < 1e-5 and got["max_abs_weights"] < 1e-5 and got["same_keys"]
        assert got["repeat_equal"]  # the second forward ran on whole parameters too
        assert got["sharded_after"] and got["next_loss"] > 0  # sharded again, and trained on
    saved = safetensors.torch.load_file(str(tmp_path / "student.safetensors"))
    assert saved["bert.embeddings.word_embeddings.weight"].shape == (97, 32)  # whole, not a shard (49 rows)
