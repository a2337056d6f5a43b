"""Peak memory and time of the LM response loss (forward + backward): dense vs chunked vs TRL.

Each variant runs in its own subprocess so peaks do not mix. Peak memory is the process's resident
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs exist; falls back to
``ru_maxrss``) minus the resident size right before the loss, so it counts what the loss itself needs
(logits, softmax copies, gradients) and not the heads/hidden states every variant shares. Each number
is the first forward+backward of the process; glibc is told to mmap every allocation >= 64 KiB so freed
tensors leave RSS at once and the high-water mark tracks live tensors. With ``--small`` the time is the
best of three runs (first-call costs dominate there); at full size it is the single measured run.

    python benchmarks/bench_lm_loss.py            # vocab 32k and 128k, 4096 tokens, hidden 2048
    python benchmarks/bench_lm_loss.py --small    # vocab 8k, 512 tokens, hidden 256 (seconds)

Writes ``benchmarks/results/lm_loss.json`` and prints a side-by-side table with ratios vs dense.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lm_loss.json"
TEMPERATURE = 2.0


# --------------------------------------------------------------------------- memory probes


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------- one variant (subprocess)


def _worker(variant: str, vocab: int, tokens: int, hidden: int, chunk: int, repeats: int, device: str) -> dict:
    import gc

    import torch
    import torch.func  # noqa: F401 - imported up front so its one-time cost is not counted as loss memory
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from farlab.losses.base import DistillBatch, ModelView
    from farlab.losses.response import ResponseLoss

    cuda = device.startswith("cuda")
    if variant == "trl":
        try:
            import warnings

            warnings.filterwarnings("ignore")
            from trl.experimental.gkd.gkd_trainer import GKDTrainer
        except Exception as e:  # noqa: BLE001 - report any import failure as "skipped"
            return {"skipped": f"trl not importable: {type(e).__name__}: {e}"}
    if variant == "liger":
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return {"skipped": f"liger not importable: {type(e).__name__}"}
        return {"skipped": "liger comparison not wired (needs triton + GPU)"}

    torch.manual_seed(0)
    s_head = nn.Linear(hidden, vocab, bias=False).to(device)
    t_head = nn.Linear(hidden, vocab, bias=False).to(device).requires_grad_(False)
    with torch.no_grad():
        s_head.weight.mul_(4.0)
        t_head.weight.mul_(4.0)
    h_s = torch.randn(1, tokens, hidden, device=device, requires_grad=True)
    h_t = torch.randn(1, tokens, hidden, device=device)
    mask = torch.ones(1, tokens, device=device)

    def run() -> float:
        h_s.grad = None
        s_head.weight.grad = None
        if variant == "dense":
            batch = DistillBatch(ModelView(logits=s_head(h_s)), ModelView(logits=t_head(h_t)), mask, mask)
            loss = ResponseLoss("kl", temperature=TEMPERATURE)(batch)
        elif variant == "chunked":
            batch = DistillBatch(ModelView(final_hidden=h_s, lm_head=s_head),
                                 ModelView(final_hidden=h_t, lm_head=t_head), mask, mask)
            loss = ResponseLoss("kl", temperature=TEMPERATURE, chunk_size=chunk)(batch)
        else:  # trl, beta = 0 is forward KL; farlab scales by T^2, TRL does not
            labels = torch.zeros(1, tokens, dtype=torch.long, device=device)
            with torch.no_grad():
                t_logits = t_head(h_t)
            loss = TEMPERATURE**2 * GKDTrainer.generalized_jsd_loss(
                s_head(h_s), t_logits, labels=labels, beta=0.0, temperature=TEMPERATURE)
        loss.backward()
        return float(loss.detach())  # synchronises on CUDA

    if cuda:  # the caching allocator's peak counter is exact, so warm up first (cuBLAS init etc.)
        run()
        h_s.grad = s_head.weight.grad = None
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        exact = True
    else:
        gc.collect()
        base = (_status_kb("VmRSS") or 0) * 1024
        exact = _reset_peak()
        if not exact:
            base = _peak_kb() * 1024  # without a reset the best we can do is "growth of the lifetime peak"
    t0 = time.perf_counter()
    value = run()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_kb() * 1024
    for _ in range(repeats):  # time is the best of several (first-call costs, shared machine)
        t0 = time.perf_counter()
        run()
        elapsed = min(elapsed, time.perf_counter() - t0)
    return {
        "value": value,
        "time_s": elapsed,
        "peak_mem_mb": (peak - base) / 2**20,
        "peak_total_mb": peak / 2**20,
        "grad_h_norm": float(h_s.grad.norm()),
        "grad_w_norm": float(s_head.weight.grad.norm()),
        "peak_method": "torch.cuda.max_memory_allocated" if cuda else ("VmHWM reset" if exact else "ru_maxrss growth"),
        "device_name": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


def _run_variant(variant: str, vocab: int, tokens: int, hidden: int, chunk: int, repeats: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, str(vocab), str(tokens), str(hidden), str(chunk),
           str(repeats), device]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"skipped": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver


def _table(rows: list[dict]) -> str:
    head = (f"{'vocab':>7} {'tokens':>6} {'variant':>8} {'peak MB':>9} {'time s':>8} "
            f"{'mem/dense':>9} {'time/dense':>10} {'value':>12} {'rel diff':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['vocab']:>7} {r['tokens']:>6} {r['variant']:>8}  skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['vocab']:>7} {r['tokens']:>6} {r['variant']:>8} {r['peak_mem_mb']:>9.0f} {r['time_s']:>8.2f} "
            f"{r.get('mem_ratio', float('nan')):>9.3f} {r.get('time_ratio', float('nan')):>10.3f} "
            f"{r['value']:>12.6f} {r.get('value_rel_diff', 0.0):>9.1e}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="vocab 8k, 512 tokens, hidden 256")
    p.add_argument("--vocab", type=int, nargs="+", default=None)
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: tokens / 8)")
    p.add_argument("--variants", nargs="+", default=["dense", "chunked", "trl", "liger"])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=None, help="extra timed runs (default: 2 with --small or cuda)")
    p.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        variant, *nums, device = args.worker
        print(json.dumps(_worker(variant, *map(int, nums), device)))
        return

    vocabs = args.vocab or ([8192] if args.small else [32768, 131072])
    tokens = args.tokens or (512 if args.small else 4096)
    hidden = args.hidden or (256 if args.small else 2048)
    chunk = args.chunk_size or max(tokens // 8, 1)
    repeats = args.repeats if args.repeats is not None else (2 if args.small or args.device != "cpu" else 0)
    rows: list[dict] = []
    for vocab in vocabs:
        dense = None
        for variant in args.variants:
            print(f"running {variant} vocab={vocab} tokens={tokens} hidden={hidden} ...", file=sys.stderr, flush=True)
            r = {"variant": variant, "vocab": vocab, "tokens": tokens, "hidden": hidden, "chunk_size": chunk,
                 "dtype": "float32", "device": args.device,
                 **_run_variant(variant, vocab, tokens, hidden, chunk, repeats, args.device)}
            if variant == "dense" and "skipped" not in r:
                dense = r
            if dense is not None and "skipped" not in r:
                r["mem_ratio"] = r["peak_mem_mb"] / dense["peak_mem_mb"]
                r["time_ratio"] = r["time_s"] / dense["time_s"]
                r["value_rel_diff"] = abs(r["value"] - dense["value"]) / max(abs(dense["value"]), 1e-12)
                r["grad_rel_diff"] = max(abs(r[k] - dense[k]) / max(dense[k], 1e-12)
                                         for k in ("grad_h_norm", "grad_w_norm"))
            rows.append(r)
    names = sorted({r["device_name"] for r in rows if "device_name" in r})
    print(f"device: {', '.join(names)}; fn=kl, T={TEMPERATURE}, float32, chunk_size={chunk}")
    print(_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "temperature": TEMPERATURE, "fn": "kl",
                                    "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
