"""KD step overhead: one KD training step vs (a student SFT step + a no-grad teacher forward).

The KD step must cost little more than the two pieces it cannot avoid; the ratio is measured side
by side in one process on the same batches (target <= 1.10). Writes benchmarks/results/kd_step.json.

    python benchmarks/bench_kd_step.py [--model minilm|tiny_bert|bench_bert] [--steps 20] [--batch 32]
        [--length 64] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from results_io import write_result  # benchmarks/ is on sys.path when run as a script
from transformers import AutoModelForSequenceClassification, set_seed

from farlab.config import REPO_ROOT, register_configs
from farlab.losses.objective import build_objective
from farlab.losses.spec import LossConfig
from farlab.models.loading import Head, build_model, load_tokenizer, model_shape
from farlab.trainer.pair import DistillationModule


def make_batch(tokenizer, batch: int, length: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(len(tokenizer) // 2, len(tokenizer) - 1, (batch, length))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (batch,)),
    }



def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", "loss=response_kl"])
    set_seed(0)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    head = Head(AutoModelForSequenceClassification, {"num_labels": 2})
    teacher = build_model(cfg.model.teacher, head, cfg.model.attn_implementation)
    student = build_model(cfg.model.student, head, cfg.model.attn_implementation, teacher=teacher)
    ce_only = OmegaConf.structured(LossConfig(name="ce", alpha=0.0, components={}))
    kd = DistillationModule(
        student, teacher, build_objective(cfg.loss, cfg.layer_map, cfg.projection, model_shape(student), model_shape(teacher))
    )
    sft = DistillationModule(student, None, build_objective(ce_only, cfg.layer_map, cfg.projection, model_shape(student), None))
    kd.to(args.device), sft.to(args.device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    batch = {k: v.to(args.device) for k, v in make_batch(tokenizer, args.batch, args.length).items()}
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(module: DistillationModule) -> None:
        with autocast:
            loss, _ = module(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def teacher_forward() -> None:
        with autocast:
            teacher(**{k: v for k, v in batch.items() if k != "labels"})

    kd.train()
    sft.train()
    for _ in range(args.warmup):
        step(kd), step(sft), teacher_forward()
    # Interleave the variants so drift (thermal, other load) hits all of them alike.
    kd_t, sft_t, teacher_t = [], [], []
    for _ in range(args.steps):
        kd_t.append(timed(lambda: step(kd), args.device))
        sft_t.append(timed(lambda: step(sft), args.device))
        teacher_t.append(timed(teacher_forward, args.device))
    kd_med, sft_med, teacher_med = (statistics.median(t) for t in (kd_t, sft_t, teacher_t))
    ratio = kd_med / (sft_med + teacher_med)
    tokens = args.batch * args.length
    result = {
        "model": args.model,
        "batch": args.batch,
        "length": args.length,
        "threads": args.threads,
        "steps": args.steps,
        "kd_step_s": kd_med,
        "sft_step_s": sft_med,
        "teacher_forward_s": teacher_med,
        "ratio_kd_over_sft_plus_teacher": ratio,
        "target_ratio": 1.10,
        "kd_tokens_per_s": tokens / kd_med,
        "sft_tokens_per_s": tokens / sft_med,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "torch": torch.__version__,
    }
    print(f"{'variant':<28}{'median s/step':>14}{'tokens/s':>12}")
    print(f"{'KD step':<28}{kd_med:>14.4f}{tokens / kd_med:>12.0f}")
    print(f"{'student SFT step':<28}{sft_med:>14.4f}{tokens / sft_med:>12.0f}")
    print(f"{'teacher no-grad forward':<28}{teacher_med:>14.4f}{tokens / teacher_med:>12.0f}")
    print(f"ratio KD / (SFT + teacher forward) = {ratio:.3f}  (target <= 1.10)")
    write_result(f"kd_step_{args.model}_{args.device}_{args.dtype}", result)


if __name__ == "__main__":
    main()
