"""farlab vs TRL, side by side in one process: forward-KL distillation of one causal-LM pair on the same batches.

Variants (each its own copy of the same freshly initialised student; the frozen teacher is shared):

* ``trl``: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (never on-policy) and ``seq_kd=False``, so every
  step trains on the dataset's own (prompt, target) rows, and ``beta=0``. TRL 1.x's ``trl.DistillationTrainer``
  always generates its completions (fully on-policy, it takes a ``prompt`` column only), so it cannot train on
  fixed targets; GKD with ``lmbda=0`` is TRL's off-policy forward-KL trainer.
* ``farlab_dense`` / ``farlab_chunked``: farlab's :class:`DistillationModule` in its Trainer (``make_trainer``), loss
  ``response_kl`` with ``ce_weight=0, alpha=1`` (pure KD), dense logits or ``chunk_size`` rows per chunk.

Equal losses. ``GKDTrainer.generalized_jsd_loss`` at ``beta=0`` is ``F.kl_div(log p_s, log p_t, log_target=True)``
summed over the vocabulary = ``sum p_t (log p_t - log p_s)`` = KL(teacher || student), the forward KL (beta=1 is
the reverse KL). ``GKDTrainer.compute_loss`` passes no temperature to it, so TRL's loss is always at T=1
(``GKDConfig.temperature`` only sets the sampling temperature of on-policy generation); farlab runs at
``loss.temperature=1`` (its T^2 factor is then 1). Both mask the prompt and padding the same way: position t
counts when label t+1 != -100 (farlab's ``lm_masks``), and both average over those positions. Before any timing
the script runs one training step of every variant on the same batch from identical weights and checks that
the losses and the student's gradient norms agree with each other and with an independent forward KL computed
here from the two models' logits; it stops if they do not.

Timing: each variant takes one step (its Trainer's ``training_step``: forward, loss, backward; then the
optimizer step of the same AdamW from ``create_optimizer``) on the same batches, variants interleaved step by
step so drift on a shared machine hits all alike; tokens/s counts non-padding tokens over the summed step times.
Peak memory per step above the memory resident before it: CUDA ``torch.cuda.max_memory_allocated``; CPU the
process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``; glibc is told to return
every allocation >= 64 KiB at once so the mark follows live tensors), as ``bench_lm_loss.py`` measures. The
reported peak is the largest over the timed steps. Writes ``benchmarks/results/vs_trl_<model>_v<vocab>_<device>_<dtype>.json``.

    python benchmarks/bench_vs_trl.py                                   # CPU: tiny Llama pair, 32k vocab
    python benchmarks/bench_vs_trl.py --device cuda --dtype bfloat16 --model bench_llama --vocab 131072 \\
        --batch 8 --steps 20 --chunk-size 1024
    python benchmarks/bench_vs_trl.py model.student.config.hidden_size=64   # any Hydra override
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __name__ == "__main__" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    # Freed tensors must leave RSS at once for the CPU peak to follow live tensors: restart with glibc told so.
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

import torch
from hydra import compose, initialize_config_dir
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result

from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.data.kinds import TASK_KINDS, lm_masks
from farlab.losses.objective import build_objective
from farlab.models.loading import build_model, load_tokenizer, model_shape
from farlab.trainer.fit import FitSettings, make_trainer
from farlab.trainer.pair import DistillationModule

VARIANTS = ("trl", "farlab_dense", "farlab_chunked")
LOSS_RTOL = {"float32": 1e-5, "bfloat16": 2e-2}
GRAD_RTOL = {"float32": 1e-4, "bfloat16": 5e-2}


# --------------------------------------------------------------------------- memory probes


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMeter:
    """Peak bytes above the resident baseline over one block: CUDA allocator counters, or VmHWM on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.method = "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM reset"
        if not self.cuda and not self._reset():
            raise SystemExit("the CPU peak needs /proc/self/clear_refs (Linux); run with --device cuda elsewhere")

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = (_status_kb("VmRSS") or 0) * 1024
            self._reset()

    def stop(self) -> tuple[float, float]:
        """(peak above the baseline, absolute peak) in MB."""
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = (_status_kb("VmHWM") or 0) * 1024
        return (peak - self.base) / 2**20, peak / 2**20


# --------------------------------------------------------------------------- the pair, the data, the trainers


def compose_config(args: argparse.Namespace) -> Any:
    register_configs()
    overrides = [
        f"model={args.model}", "task=europarl_en_fr", "loss=response_kl",
        "loss.temperature=1.0", "loss.alpha=1.0", "loss.ce_weight=0.0",  # pure forward KL at T=1, as TRL's GKD
        f"task.max_length={args.max_length}", f"seed={args.seed}",
    ]
    if args.vocab:
        overrides += [f"model.teacher.config.vocab_size={args.vocab}", f"model.student.config.vocab_size={args.vocab}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides + list(args.overrides))


def build_batches(cfg: Any, tokenizer: Any, args: argparse.Namespace) -> tuple[Any, list[dict[str, torch.Tensor]], Any]:
    """farlab's Europarl rows (prompt tokens labelled -100), collated by farlab's collator into fixed batches."""
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    n = args.batch * (1 + args.warmup + args.steps)
    rows = data.train.select(range(min(n, len(data.train)))).remove_columns(["example_id"])
    if len(rows) < n:
        raise SystemExit(f"need {n} training rows, the task has {len(rows)}")
    batches = [data.collator([rows[j] for j in range(i, i + args.batch)]) for i in range(0, n, args.batch)]
    return rows, batches, data.collator


def trl_trainer(student: Any, teacher: Any, tokenizer: Any, rows: Any, collator: Any, out: Path,
                args: argparse.Namespace) -> Any:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    config = GKDConfig(
        output_dir=str(out / "trl"), lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
        per_device_train_batch_size=args.batch, learning_rate=args.lr, weight_decay=0.01, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=False, fp16=False,  # autocast is applied around both alike
        report_to="none", max_length=None, disable_tqdm=True, seed=args.seed, use_cpu=args.device == "cpu",
    )
    return GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=rows,
                      data_collator=collator, processing_class=tokenizer)


def farlab_trainer(student: Any, teacher: Any, cfg: Any, tokenizer: Any, data_rows: Any, collator: Any,
                   chunk_size: int | None, out: Path, args: argparse.Namespace) -> Any:
    loss_cfg = copy.deepcopy(cfg.loss)
    loss_cfg.components.response.chunk_size = chunk_size
    objective = build_objective(loss_cfg, cfg.layer_map, cfg.projection, model_shape(student), model_shape(teacher))
    pair = DistillationModule(student, teacher, objective, kind="causal_lm")

    class _Data:  # what make_trainer reads of a TaskData
        train = data_rows

    _Data.collator = collator
    settings = FitSettings(batch_size=args.batch, learning_rate=args.lr, max_steps=1 + args.warmup + args.steps,
                           save_checkpoints=False, progress_bar=False, logging_steps=10**6)
    return make_trainer(pair, _Data, tokenizer, out / ("farlab_" + str(chunk_size)), settings, args.seed)


# --------------------------------------------------------------------------- reference and checks


@torch.no_grad()
def reference_forward_kl(student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> float:
    """KL(teacher || student) at T=1 over the response positions, straight from the two models' logits."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    log_ps = torch.log_softmax(student(**inputs).logits.float(), -1)
    log_pt = torch.log_softmax(teacher(**inputs).logits.float(), -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    mask = lm_masks(batch)[1].bool()
    return float(kl[mask].mean())


def grad_norm(model: Any) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()
                                                       if p.grad is not None])))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# --------------------------------------------------------------------------- driver


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.student.config.hidden_size=64")
    p.add_argument("--model", default="tiny_llama", help="a conf/model group with a Llama-style pair")
    p.add_argument("--vocab", type=int, default=32768, help="vocab_size of both models (0: the config's)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant after the check step")
    p.add_argument("--chunk-size", type=int, default=256, help="rows per chunk of farlab_chunked")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    return p


class Bench:
    """The pair, the batches and one Trainer per variant, each with its own copy of the same student."""

    def __init__(self, args: argparse.Namespace) -> None:
        if "trl" not in args.variants:
            raise SystemExit("--variants must include trl: every ratio is against it")
        self.args = args
        self.cfg = cfg = compose_config(args)
        tokenizer = load_tokenizer(cfg.model.tokenizer, None, cfg.model.pad_token)
        rows, self.batches, collator = build_batches(cfg, tokenizer, args)
        head = TASK_KINDS.get("causal_lm").head(None)
        set_seed(args.seed)
        teacher = build_model(cfg.model.teacher, head, cfg.model.attn_implementation).to(args.device)
        student0 = build_model(cfg.model.student, head, cfg.model.attn_implementation).to(args.device)
        teacher.requires_grad_(False).eval()
        out = Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
        self.trainers: dict[str, Any] = {}
        for name in args.variants:
            student = copy.deepcopy(student0)
            if name == "trl":
                trainer = trl_trainer(student, teacher, tokenizer, rows, collator, out, args)
            else:
                chunk = args.chunk_size if name == "farlab_chunked" else None
                trainer = farlab_trainer(student, teacher, cfg, tokenizer, rows, collator, chunk, out, args)
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train()'s loop, read by training_step
            self.trainers[name] = trainer
        batch0 = {k: v.to(args.device) for k, v in self.batches[0].items()}
        self.reference = reference_forward_kl(student0, teacher, batch0)
        self.autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(self, name: str, batch: dict[str, torch.Tensor], check: bool = False) -> tuple[float, float | None]:
        """One training step of ``name``: the loss, and the student's gradient norm before the update if ``check``."""
        trainer = self.trainers[name]
        with self.autocast:
            loss = trainer.training_step(trainer.model, dict(batch))
        norm = grad_norm(trainer.model) if check else None
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss), norm

    def check(self) -> dict[str, tuple[float, float]]:
        """The first step of every variant on batch 0 from the same weights: losses and gradient norms."""
        return {name: self.step(name, self.batches[0], check=True) for name in self.args.variants}  # type: ignore[misc]


def check_problems(check: dict[str, tuple[float, float]], reference: float, dtype: str) -> list[str]:
    """Variants whose loss differs from the reference forward KL, or whose gradient norm from TRL's."""
    loss_tol, grad_tol = LOSS_RTOL[dtype], GRAD_RTOL[dtype]
    problems = []
    for name, (loss, norm) in check.items():
        d_loss, d_grad = rel(loss, reference), rel(norm, check["trl"][1])
        print(f"  {name:<16} loss {loss:.8f} (rel diff {d_loss:.1e})  student grad norm {norm:.8g} "
              f"(vs trl {d_grad:.1e})")
        if d_loss > loss_tol or d_grad > grad_tol:
            problems.append(f"{name} (loss rel diff {d_loss:.1e} > {loss_tol} or grad {d_grad:.1e} > {grad_tol})")
    return problems


def main() -> None:
    args = parser().parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    cfg, batches, step = bench.cfg, bench.batches, bench.step

    # 1. equal losses (and gradients) on the same batch from the same weights, before any timing
    check = bench.check()
    reference = bench.reference
    print(f"check on batch 0: independent forward KL(teacher||student) at T=1 = {reference:.8f}")
    problems = check_problems(check, reference, args.dtype)
    if problems:
        raise SystemExit(f"not timing: {problems}")

    # 2. warmup, then interleaved timed steps with per-step peaks
    meter = PeakMeter(args.device)
    for batch in batches[1 : 1 + args.warmup]:
        for name in args.variants:
            step(name, batch)
    times: dict[str, list[float]] = {n: [] for n in args.variants}
    peaks: dict[str, list[tuple[float, float]]] = {n: [] for n in args.variants}
    losses: dict[str, list[float]] = {n: [] for n in args.variants}
    tokens = 0
    for i, batch in enumerate(batches[1 + args.warmup :]):
        tokens += int(batch["attention_mask"].sum())
        order = args.variants if i % 2 == 0 else args.variants[::-1]
        for name in order:
            meter.start()
            t0 = time.perf_counter()
            loss, _ = step(name, batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            peaks[name].append(meter.stop())
            losses[name].append(loss)

    # 3. report
    res: dict[str, dict[str, float]] = {}
    for name in args.variants:
        total = sum(times[name])
        res[name] = {
            "tokens_per_s": tokens / total,
            "median_step_s": statistics.median(times[name]),
            "peak_step_mb": max(pk[0] for pk in peaks[name]),
            "peak_total_mb": max(pk[1] for pk in peaks[name]),
            "check_loss": check[name][0],
            "check_grad_norm": check[name][1],
            "last_loss": losses[name][-1],
        }
    trl = res["trl"]
    for r in res.values():
        r["throughput_vs_trl"] = r["tokens_per_s"] / trl["tokens_per_s"]
        r["peak_vs_trl"] = r["peak_step_mb"] / trl["peak_step_mb"]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"\ndevice: {device_name}; {args.dtype}; model={args.model} vocab={cfg.model.student.config.vocab_size} "
          f"batch={args.batch} max_length={args.max_length} chunk_size={args.chunk_size}; "
          f"{args.steps} timed steps/variant, {tokens} tokens")
    head_line = (f"{'variant':<16}{'tokens/s':>10}{'s/step':>9}{'peak MB':>10}{'tok/s vs trl':>14}"
                 f"{'peak vs trl':>13}{'last loss':>11}")
    print(head_line + "\n" + "-" * len(head_line))
    for name, r in res.items():
        print(f"{name:<16}{r['tokens_per_s']:>10.0f}{r['median_step_s']:>9.3f}{r['peak_step_mb']:>10.0f}"
              f"{r['throughput_vs_trl']:>14.3f}{r['peak_vs_trl']:>13.3f}{r['last_loss']:>11.5f}")
    import trl as trl_pkg

    vocab = int(cfg.model.student.config.vocab_size)
    write_result(f"vs_trl_{args.model}_v{vocab}_{args.device}_{args.dtype}", {
        "device": device_name, "dtype": args.dtype, "model": args.model,
        "vocab": vocab, "batch": args.batch, "max_length": args.max_length,
        "chunk_size": args.chunk_size, "steps": args.steps, "warmup": args.warmup, "tokens_timed": tokens,
        "threads": args.threads, "overrides": list(args.overrides), "peak_method": meter.method,
        "reference_forward_kl": reference, "loss": "forward KL(teacher||student), T=1, response tokens; "
        "TRL GKDTrainer lmbda=0 beta=0 seq_kd=False", "results": res,
        "torch": torch.__version__, "trl": trl_pkg.__version__, "cpu_count": os.cpu_count(),
    })


if __name__ == "__main__":
    main()
