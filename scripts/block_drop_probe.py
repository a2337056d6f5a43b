"""Which blocks can a depth-pruned student drop? Training-free: the perplexity of the reference answers for
students that keep ``auto:N`` blocks chosen by each block-importance measure (docs/pruning.md).

    python scripts/block_drop_probe.py model=smollm2 task=europarl_en_fr task.use_chat_template=true seed=1

The measures see the first ``--examples`` training rows; the perplexity is over the first ``--eval`` rows of the
task's eval split (teacher-forced, answer tokens only). Rows run one at a time (no padding). Writes JSON with
``--out``. A measurement tool for picking a recipe, not part of a run.
"""

from __future__ import annotations

import argparse
import json
import math
import dataclasses
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.data.base import TaskData
from farlab.eval.lm import target_nll
from farlab.models import pruning
from farlab.models.loading import build_model, head_for, load_tokenizer, shallow_copy


@torch.no_grad()
def perplexity(model: torch.nn.Module, data: TaskData) -> float:
    """Of the eval rows' reference answers, through the run's own likelihood metric (farlab.eval.lm)."""
    pairs = target_nll(model, data, batch_size=1, desc="perplexity", progress=False)
    return math.exp(sum(s for s, _ in pairs) / sum(n for _, n in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="farlab config overrides (model=..., task=..., seed=...)")
    parser.add_argument("--keep", default="26,24,22,20", help="block counts to try (comma-separated)")
    parser.add_argument("--examples", type=int, default=24, help="training rows the measures see")
    parser.add_argument("--eval", type=int, default=24, help="eval rows the perplexity is measured on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.get("processor"), cfg.model.get("pad_token"))
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    teacher = build_model(cfg.model.teacher, head_for(data), None).eval()
    batches = pruning.importance_batches(data, args.examples, batch_size=1)
    data = dataclasses.replace(data, eval=data.eval.select(range(min(args.eval, len(data.eval)))))
    result = {"overrides": args.overrides, "examples": args.examples, "eval_rows": len(data.eval),
              "teacher_perplexity": perplexity(teacher, data), "measures": {}}
    print(f"teacher ({cfg.model.teacher.name}): perplexity {result['teacher_perplexity']:.1f}")
    for name in pruning.BLOCK_IMPORTANCE.names():
        start = time.perf_counter()
        scores = pruning.BLOCK_IMPORTANCE.get(name).score(teacher, batches)
        seconds = time.perf_counter() - start
        entry = {"scores": scores, "seconds": round(seconds, 1), "students": {}}
        for n in (int(k) for k in args.keep.split(",")):
            blocks = pruning.choose_blocks(scores, n)
            ppl = perplexity(shallow_copy(teacher, blocks, None).eval(), data)
            entry["students"][n] = {"blocks": blocks, "perplexity": ppl}
            print(f"{name:10s} auto:{n:<3d} perplexity {ppl:12.1f}  drops "
                  f"{sorted(set(range(1, len(scores) + 1)) - set(blocks))}", flush=True)
        result["measures"][name] = entry
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
