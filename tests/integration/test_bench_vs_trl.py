"""benchmarks/bench_vs_trl.py's pre-timing check at tiny size: on a real Europarl batch (prompt tokens labelled
-100), farlab's dense and chunked forward-KL training steps give TRL GKDTrainer's (lmbda=0, beta=0) loss and
student gradient norm, and all equal an independent forward KL(teacher || student) computed from the logits."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from farlab.config import REPO_ROOT

pytest.importorskip("trl")


def _bench_module():
    path = REPO_ROOT / "benchmarks" / "bench_vs_trl.py"
    spec = importlib.util.spec_from_file_location("bench_vs_trl", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_vs_trl", module)
    spec.loader.exec_module(module)
    return module


def test_farlab_dense_and_chunked_equal_trl_forward_kl():
    bench_vs_trl = _bench_module()
    args = bench_vs_trl.parser().parse_args(
        ["--vocab", "0", "--batch", "2", "--steps", "0", "--warmup", "0", "--chunk-size", "16", "--threads", "1",
         "--max-length", "48", "task.train_limit=8"]
    )
    bench = bench_vs_trl.Bench(args)
    labels = bench.batches[0]["labels"]
    assert (labels == -100).any() and (labels != -100).any()  # the prompt really is masked
    check = bench.check()
    assert set(check) == {"trl", "farlab_dense", "farlab_chunked"}
    assert bench.reference > 0
    assert bench_vs_trl.check_problems(check, bench.reference, "float32") == []
    # the check catches a loss that is off by 1e-3 (e.g. a different mask or temperature)
    off = {**check, "farlab_dense": (check["farlab_dense"][0] * 1.001, check["farlab_dense"][1])}
    problems = bench_vs_trl.check_problems(off, bench.reference, "float32")
    assert problems == ["farlab_dense (loss rel diff 1.0e-03 > 1e-05 or grad 0.0e+00 > 0.0001)"]
