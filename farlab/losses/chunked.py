"""Row-chunked ``sum f(head(rows))`` whose forward+backward never holds more than one chunk of logits.

An LM head turns ``[N, D]`` hidden states into ``[N, V]`` logits; at V = 128k and N = 4k that is 2 GB per
float32 copy, and a dense loss keeps several copies alive for backward. Here the forward pass walks the
selected rows in chunks, computes each chunk's loss *and its gradients* at once (``torch.autograd.grad``),
keeps only the gradients of the inputs (hidden states, head parameters) and drops the chunk's logits.
Backward just scales the stored gradients: no recomputation, so the FLOPs equal the dense path's.

Several :class:`Stream` s are projected side by side (student and teacher), so a teacher that requires
grad (co-training without detached targets) gets exact gradients too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

ChunkFn = Callable[[list[Tensor], Tensor], Tensor]  # (per-stream outputs [n, V], row ids [n]) -> scalar sum
# Optional closed form: (per-stream outputs, which the function owns and may overwrite; row ids) ->
# (scalar sum, d sum / d output for each stream, None where no gradient is needed).
GradFn = Callable[[list[Tensor], Tensor], tuple[Tensor, list[Tensor | None]]]


@dataclass
class Stream:
    """``source`` rows ``[R, X]``; each chunk is ``head(source[rows])`` (or the rows themselves if no head)."""

    source: Tensor
    head: nn.Module | None = None
    names: list[str] = field(init=False)
    params: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        named = list(self.head.named_parameters()) if self.head is not None else []
        self.names, self.params = [n for n, _ in named], [p for _, p in named]

    @property
    def is_linear(self) -> bool:
        """A plain ``nn.Linear`` head (most LM heads, tied or not) takes the in-place gradient path."""
        return self.head is not None and type(self.head).forward is nn.Linear.forward

    def apply(self, x: Tensor, params: Sequence[Tensor]) -> Tensor:
        return x if self.head is None else functional_call(self.head, dict(zip(self.names, params)), (x,))


@dataclass
class _Plan:
    streams: list[Stream]
    rows: Tensor
    chunk_fn: ChunkFn
    chunk_size: int
    grad_fn: GradFn | None = None

    def chunks(self):
        for start in range(0, self.rows.numel(), self.chunk_size):
            yield self.rows[start : start + self.chunk_size]


class _ChunkedRowsSum(torch.autograd.Function):
    """Forward computes value and all input gradients chunk by chunk; backward only scales them.

    Linear heads: the chunk's logits are made a leaf, autograd gives ``dL/dlogits`` ``[n, V]``, and the
    weight gradient is accumulated in place (``addmm_``), so no per-chunk ``[V, D]`` temporary exists.
    Other heads: ``autograd.grad`` w.r.t. the chunk rows and the head's parameters (functional_call).
    """

    @staticmethod
    def forward(ctx, plan: _Plan, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        needs = ctx.needs_input_grad[1:]
        flags = _source_flags(plan)
        grads: list[Tensor | None] = [
            (torch.zeros_like(t) if is_src else torch.zeros_like(t, dtype=torch.float32)) if need else None
            for t, need, is_src in zip(tensors, needs, flags)
        ]
        total = torch.zeros((), dtype=torch.float32, device=plan.rows.device)
        closed_form = plan.grad_fn is not None and all(s.is_linear or s.head is None for s in plan.streams)
        for idx in plan.chunks():
            if closed_form:
                total += _closed_form_chunk(plan, tensors, needs, flags, grads, idx)
                continue
            with torch.enable_grad():
                outs, leaves, owners, pos = [], [], [], 0
                for s in plan.streams:
                    n = 1 + len(s.params)
                    x = tensors[pos].detach().index_select(0, idx)
                    if s.is_linear:
                        p = dict(zip(s.names, tensors[pos + 1 : pos + n]))
                        bias = p.get("bias")
                        out = nn.functional.linear(x, p["weight"].detach(), None if bias is None else bias.detach())
                        out.requires_grad_(any(needs[pos : pos + n]))
                        leaves.append(out)
                        owners.append((pos, s, x))
                    else:
                        x.requires_grad_(needs[pos])
                        ps = [t.detach().requires_grad_(need)
                              for t, need in zip(tensors[pos + 1 : pos + n], needs[pos + 1 :])]
                        leaves += [x, *ps]
                        owners += [(pos + j, None, None) for j in range(n)]
                        out = s.apply(x, ps)
                    outs.append(out)
                    pos += n
                loss = plan.chunk_fn(outs, idx)
                wanted = [i for i, leaf in enumerate(leaves) if leaf.requires_grad]
                targets = [leaves[i] for i in wanted]
                del outs, out, leaves  # a frozen teacher's chunk logits need not live on through backward
                got = (torch.autograd.grad(loss, targets, allow_unused=True)
                       if wanted and loss.requires_grad else [None] * len(wanted))
                del targets
            total += loss.detach().float()
            for i, g in zip(wanted, got):
                if g is not None:
                    _accumulate(grads, tensors, flags, owners[i], g, idx)
        ctx.grads = [None if g is None else g.to(t.dtype) for g, t in zip(grads, tensors)]
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        return (None, *[None if g is None else g.mul_(grad_out) for g in grads])


@torch.no_grad()
def _closed_form_chunk(plan: _Plan, tensors: Sequence[Tensor], needs: Sequence[bool], flags: list[bool],
                       grads: list, idx: Tensor) -> Tensor:
    """One chunk through ``plan.grad_fn``: no autograd graph, so no saved activations; the function may work
    in place on the chunk's outputs (a closed-form forward-KL gradient needs ~3 chunk-sized buffers, autograd ~9)."""
    outs, owners, pos = [], [], 0
    for s in plan.streams:
        n = 1 + len(s.params)
        x = tensors[pos].detach().index_select(0, idx)
        if s.head is None:
            outs.append(x)
            owners.append((pos, None, None))
        else:
            p = dict(zip(s.names, tensors[pos + 1 : pos + n]))
            bias = p.get("bias")
            outs.append(nn.functional.linear(x, p["weight"].detach(), None if bias is None else bias.detach()))
            owners.append((pos, s, x))
        pos += n
    loss, out_grads = plan.grad_fn(outs, idx)  # type: ignore[misc]
    del outs
    for owner, g, s in zip(owners, out_grads, plan.streams):
        first = owner[0]
        if not any(needs[first : first + 1 + len(s.params)]):
            continue
        if g is None:
            raise RuntimeError("chunked_rows_sum: grad_fn gave no gradient for a stream that requires grad")
        _accumulate(grads, tensors, flags, owner, g, idx)
    return loss.float()


def _accumulate(
    grads: list, tensors: Sequence[Tensor], flags: list[bool], owner: tuple, g: Tensor, idx: Tensor
) -> None:
    pos, stream, x = owner
    if stream is None:  # generic leaf: a source chunk (scatter rows) or a whole parameter
        if flags[pos]:
            grads[pos].index_add_(0, idx, g.to(grads[pos].dtype))
        else:
            grads[pos] += g
        return
    # Linear head: g is dL/dlogits [n, V]; y = x W^T + b
    named = dict(zip(stream.names, range(pos + 1, pos + 1 + len(stream.names))))
    weight = tensors[named["weight"]]
    if grads[pos] is not None:
        grads[pos].index_add_(0, idx, (g.to(weight.dtype) @ weight.detach()).to(grads[pos].dtype))
    gw = grads[named["weight"]]
    if gw is not None:
        gw.addmm_(g.t().to(gw.dtype), x.to(gw.dtype))
    if "bias" in named and grads[named["bias"]] is not None:
        grads[named["bias"]] += g.sum(0).to(torch.float32)


def _source_flags(plan: _Plan) -> list[bool]:
    """For each flattened tensor input: True for a stream's source, False for a head parameter."""
    return [flag for s in plan.streams for flag in (True, *([False] * len(s.params)))]


def chunked_rows_sum(
    streams: Sequence[Stream], rows: Tensor, chunk_fn: ChunkFn, chunk_size: int, grad_fn: GradFn | None = None
) -> Tensor:
    """``sum over chunks of chunk_fn([stream outputs for these rows], rows_chunk)``, O(chunk) logit memory.

    ``rows`` selects which rows of every stream's ``source`` count (e.g. response positions); ``chunk_fn``
    returns the scalar *sum* for its rows, so the caller divides by the global count. Gradients reach
    every source and head parameter that requires grad (tied weights included). Under ``torch.no_grad``
    (or when nothing requires grad) it is a plain loop. ``grad_fn`` (same value as ``chunk_fn``, with the
    gradients w.r.t. the outputs in closed form) replaces autograd while training when every stream is a plain
    linear head or has no head.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    plan = _Plan(list(streams), rows, chunk_fn, chunk_size, grad_fn)
    tensors = [t for s in plan.streams for t in (s.source, *s.params)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _ChunkedRowsSum.apply(plan, *tensors)
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        for idx in plan.chunks():
            outs = [s.apply(s.source.index_select(0, idx), s.params) for s in plan.streams]
            total += plan.chunk_fn(outs, idx).float()
        return total
