"""One rank of tests/integration/test_fsdp_unsharded.py (run by torchrun): a tiny BERT pair sharded with PyTorch's
FSDP2 (``fully_shard``, gloo on CPU) trains a step, then farlab's rank-0 work runs through
:func:`farlab.distributed.on_main` with ``whole=pair`` (rank 0 alone runs forwards and writes the student's
weights), then the pair trains on. Each rank writes ``rank<r>.json`` into the folder given as the first argument."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import BertConfig, BertForSequenceClassification

from farlab import distributed


class Pair(nn.Module):
    """Like the training pair: two models under one root that FSDP wraps last."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.student = BertForSequenceClassification(config)
        self.teacher = BertForSequenceClassification(config).requires_grad_(False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids=input_ids).logits - self.teacher(input_ids=input_ids).logits


def step(pair: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    optimizer.zero_grad()
    loss = pair(batch).pow(2).mean()
    loss.backward()
    optimizer.step()
    return float(loss)


def main(out: Path) -> None:
    distributed.init_from_env()
    rank = distributed.rank()
    torch.manual_seed(0)
    pair = Pair()
    batch = torch.randint(0, 97, (4, 7), generator=torch.Generator().manual_seed(1))

    # The reference: one process, the whole batch (FSDP averages the two ranks' half-batch gradients).
    reference = copy.deepcopy(pair)
    step(reference, torch.optim.SGD(reference.student.parameters(), lr=0.1), batch)
    with torch.no_grad():
        want = reference.student(input_ids=batch).logits
    whole = reference.student.state_dict()

    for model in (pair.student, pair.teacher):
        for layer in model.bert.encoder.layer:
            fully_shard(layer)
    fully_shard(pair)  # the root: the embeddings and heads are in its group
    optimizer = torch.optim.SGD(pair.student.parameters(), lr=0.1)
    step(pair, optimizer, batch[rank::2])  # as in a run: training steps come before any evaluation

    def rank0_work() -> dict:
        with torch.no_grad():  # two forwards: the first must not reshard (the second would wait for rank 1)
            first = pair.student(input_ids=batch).logits
            second = pair.student(input_ids=batch).logits
        tensors = {k: v.detach().clone().contiguous() for k, v in pair.student.state_dict().items()}
        safetensors.torch.save_file(tensors, str(out / "student.safetensors"))
        return {"max_abs_logits": float((first - want).abs().max()), "repeat_equal": bool(torch.equal(first, second)),
                "same_keys": sorted(tensors) == sorted(whole),
                "max_abs_weights": max(float((tensors[k] - whole[k]).abs().max()) for k in whole)}

    result = distributed.on_main(rank0_work, whole=pair)
    sharded = isinstance(pair.student.bert.embeddings.word_embeddings.weight, DTensor)
    loss = step(pair, optimizer, batch[rank::2])  # sharded again: the pair trains on, on every rank
    (out / f"rank{rank}.json").write_text(json.dumps({**result, "sharded_after": sharded, "next_loss": loss}))
    distributed.shutdown(wait=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
