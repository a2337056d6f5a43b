"""Students made from the teacher by measured importance: depth (``init_blocks: auto:N``) and width (Minitron).

Depth: a block's importance is the mean cosine *change* of the hidden state across it, ``1 - cos(x_in, x_out)``
over the real tokens of a few hundred task examples (ShortGPT's block influence): a block that barely turns the
residual stream can go. ``auto:N`` keeps the N most important blocks in their original order.

Width (Minitron, Muralidharan et al. 2024): activation-based importance on the same examples, then the teacher's
weights are sliced. Hidden channels: the summed mean |activation| of every LayerNorm/RMSNorm output (the residual
stream is shared, so one ranking for all layers). Attention heads: per layer, the mean L2 norm of each head's
output (the input of the output projection); grouped-query models keep whole KV groups (a group's score is the sum
of its query heads). FFN neurons: per layer, the mean |activation| entering the down projection. The result is a
plain model of the teacher's class with a smaller config, so ``from_pretrained`` loads it.

Families: BERT/RoBERTa and Llama-style decoders (Llama, Mistral, Qwen2/Qwen3); each is a table of parameter-name
rules saying which axis of a weight is hidden / heads / KV heads / FFN. No library does this slicing for
``transformers`` models (``torch.nn.utils.prune`` masks weights, it does not shrink them), hence the code here.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from farlab.errors import ConfigError
from farlab.registry import Registry

log = logging.getLogger(__name__)

AUTO_BLOCKS = re.compile(r"^auto:(\d+)$")
_LAYER = re.compile(r"\.(?:layer|layers|h)\.(\d+)\.")
Batch = dict[str, Tensor]


# ----------------------------------------------------------------------------------------------- depth


def auto_block_count(init_blocks: Any) -> int | None:
    """N for ``init_blocks: auto:N``; None for an explicit list (or nothing)."""
    if isinstance(init_blocks, str):
        match = AUTO_BLOCKS.match(init_blocks.strip())
        if match is None:
            raise ConfigError(f"model.student.init_blocks={init_blocks!r}: give a list of blocks (e.g. [1, 3, 5]) "
                              "or auto:N (keep the N most important blocks, e.g. auto:3)")
        return int(match[1])
    return None


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (``encoder.layer``, ``model.layers``, ``transformer.h``)."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h") \
                and len(module) == depth:
            return module
    raise ConfigError(f"cannot find the {depth} transformer blocks of {type(model).__name__}")


def _first_tensor(value: Any) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _real_tokens(batch: Batch, hidden: Tensor) -> Tensor:
    mask = batch.get("attention_mask")
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()


@torch.no_grad()
def block_importance(model: nn.Module, batches: Iterable[Batch]) -> list[float]:
    """Mean ``1 - cos(input, output)`` of each block over the real tokens: 0 = the block leaves the state as is."""
    blocks = find_blocks(model)
    seen: dict[int, tuple[Tensor, Tensor]] = {}
    handles = []
    for i, block in enumerate(blocks):
        def pre(_m: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            seen[i] = (args[0] if args else kwargs["hidden_states"],)  # type: ignore[assignment]

        def post(_m: nn.Module, _args: tuple, output: Any, i: int = i) -> None:
            seen[i] = (seen[i][0], _first_tensor(output))

        handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    totals, count = torch.zeros(len(blocks), dtype=torch.float64), 0
    try:
        with _eval_mode(model):
            for batch in batches:
                seen.clear()
                model(**batch)
                for i, (x_in, x_out) in seen.items():
                    mask = _real_tokens(batch, x_in)
                    cos = F.cosine_similarity(x_in.double(), x_out.double(), dim=-1)
                    totals[i] += (1 - cos)[mask].sum().cpu()
                count += int(_real_tokens(batch, next(iter(seen.values()))[0]).sum())
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ConfigError("block importance: no tokens in the importance examples")
    return (totals / count).tolist()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Measure in eval mode (no dropout), then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _skip(block: nn.Module) -> Any:
    """Make ``block`` pass its input through (the residual stream as if the block were not there)."""
    def hook(_m: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *output[1:]) if isinstance(output, tuple) else x

    return block.register_forward_hook(hook, with_kwargs=True)


@torch.no_grad()
def drop_one_importance(model: nn.Module, batches: Iterable[Batch]) -> list[float]:
    """Mean ``KL(p_full || p_without_block)`` of the model's output distribution, per real token for vocabulary
    logits and per example for a classifier: how much skipping the block alone changes what the model predicts.

    One forward pass over the examples per block (``influence`` needs one in all), so it suits a few dozen
    examples. It sees what a block's cosine change misses: on SmolLM2 some blocks that barely turn the residual
    stream are ones whose removal breaks the model (docs/pruning.md).
    """
    blocks = find_blocks(model)
    totals, count = torch.zeros(len(blocks), dtype=torch.float64), 0
    with _eval_mode(model):
        for batch in batches:
            full = F.log_softmax(model(**batch).logits.float(), dim=-1)
            mask = _real_tokens(batch, full) if full.dim() == 3 else torch.ones(len(full), dtype=torch.bool)
            count += int(mask.sum())
            for i, block in enumerate(blocks):
                handle = _skip(block)
                try:
                    dropped = F.log_softmax(model(**batch).logits.float(), dim=-1)
                finally:
                    handle.remove()
                kl = F.kl_div(dropped, full, log_target=True, reduction="none").sum(-1)
                totals[i] += kl[mask].double().sum().cpu()
    if count == 0:
        raise ConfigError("block importance: no tokens in the importance examples")
    return (totals / count).tolist()


@dataclass(frozen=True)
class BlockMeasure:
    """A way to score blocks for ``init_blocks: auto:N`` (higher = keep), and the sentence the record keeps."""

    score: Callable[[nn.Module, list[Batch]], list[float]]  # one float per block
    says: str


BLOCK_IMPORTANCE: Registry[BlockMeasure] = Registry("block-importance measure")
BLOCK_IMPORTANCE.add("influence", BlockMeasure(
    block_importance, "mean 1 - cos(block input, block output) over real tokens"))
BLOCK_IMPORTANCE.add("drop_one", BlockMeasure(
    drop_one_importance, "mean KL(full model || model without the block) of the output distribution over real tokens"))


def choose_blocks(scores: list[float], n: int) -> list[int]:
    """The ``n`` highest-scoring blocks in farlab's numbering (1 = first), in model order; ties keep the earlier."""
    if not 1 <= n <= len(scores):
        raise ConfigError(f"model.student.init_blocks=auto:{n}: the teacher has {len(scores)} blocks "
                          f"(valid: auto:1..auto:{len(scores)})")
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]
    return sorted(i + 1 for i in ranked)


# ----------------------------------------------------------------------------------------------- width

H, Q, K, FFN = "hidden", "heads", "kv_heads", "ffn"


@dataclass(frozen=True)
class WidthFamily:
    """How one architecture family names its parts: the modules whose inputs are the heads and FFN neurons,
    and which axes of each weight are hidden / query heads / KV heads / FFN (first matching rule wins)."""

    attn_out: re.Pattern
    ffn_out: re.Pattern
    rules: tuple[tuple[re.Pattern, tuple[str | None, ...]], ...]
    separate_head_dim: bool  # the config has head_dim (Llama) rather than hidden_size / heads (BERT)


def _rules(*pairs: tuple[str, tuple[str | None, ...]]) -> tuple[tuple[re.Pattern, tuple[str | None, ...]], ...]:
    return tuple((re.compile(p), axes) for p, axes in pairs)


WIDTH_FAMILIES: Registry[WidthFamily] = Registry("width-pruning family")
_BERT = WidthFamily(
    attn_out=re.compile(r"attention\.output\.dense$"),
    ffn_out=re.compile(r"(?<!attention\.)output\.dense$"),
    rules=_rules(
        (r"embeddings\.(word|position|token_type)_embeddings\.weight$", (None, H)),
        (r"LayerNorm\.(weight|bias)$", (H,)),
        (r"attention\.self\.(query|key|value)\.weight$", (Q, H)),
        (r"attention\.self\.(query|key|value)\.bias$", (Q,)),
        (r"attention\.output\.dense\.weight$", (H, Q)),
        (r"attention\.output\.dense\.bias$", (H,)),
        (r"intermediate\.dense\.weight$", (FFN, H)),
        (r"intermediate\.dense\.bias$", (FFN,)),
        (r"output\.dense\.weight$", (H, FFN)),
        (r"output\.dense\.bias$", (H,)),
        (r"pooler\.dense\.weight$", (H, H)),
        (r"pooler\.dense\.bias$", (H,)),
        (r"classifier\.(dense\.)?weight$", (None, H)),
    ),
    separate_head_dim=False,
)
_LLAMA = WidthFamily(
    attn_out=re.compile(r"self_attn\.o_proj$"),
    ffn_out=re.compile(r"mlp\.down_proj$"),
    rules=_rules(
        (r"embed_tokens\.weight$", (None, H)),
        (r"(^|\.)(input_layernorm|post_attention_layernorm|norm)\.weight$", (H,)),
        (r"q_proj\.weight$", (Q, H)),
        (r"q_proj\.bias$", (Q,)),
        (r"(k_proj|v_proj)\.weight$", (K, H)),
        (r"(k_proj|v_proj)\.bias$", (K,)),
        (r"o_proj\.weight$", (H, Q)),
        (r"o_proj\.bias$", (H,)),
        (r"(gate_proj|up_proj)\.weight$", (FFN, H)),
        (r"down_proj\.weight$", (H, FFN)),
        (r"down_proj\.bias$", (H,)),
        (r"(lm_head|score)\.weight$", (None, H)),
    ),
    separate_head_dim=True,
)
for _name in ("bert", "roberta"):
    WIDTH_FAMILIES.add(_name, _BERT)
for _name in ("llama", "mistral", "qwen2", "qwen3"):
    WIDTH_FAMILIES.add(_name, _LLAMA)


@dataclass(frozen=True)
class Dims:
    """The sizes width pruning touches; ``heads`` are query heads, ``groups`` KV heads (= heads without GQA)."""

    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int

    @classmethod
    def of(cls, config: Any) -> Dims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, config.intermediate_size, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim)


def target_dims(config: Any, width: Any) -> Dims:
    """The student's sizes from ``model.student.width`` (null = the teacher's), checked against the teacher."""
    family = width_family(config)
    t = Dims.of(config)
    hidden = width.hidden_size or t.hidden
    heads = width.num_attention_heads
    if heads is None:
        heads = t.heads if family.separate_head_dim else hidden // t.head_dim
    ffn = width.intermediate_size or t.ffn
    rep = t.heads // t.groups
    problems = [f"{name}={value} must be in 1..{limit} (the teacher's)" for name, value, limit in
                (("hidden_size", hidden, t.hidden), ("intermediate_size", ffn, t.ffn),
                 ("num_attention_heads", heads, t.heads)) if not 1 <= value <= limit]
    if not family.separate_head_dim and hidden != heads * t.head_dim:
        problems.append(f"hidden_size={hidden} must equal num_attention_heads x head size {t.head_dim} "
                        f"({config.model_type} derives the head size from hidden_size / heads)")
    if heads % rep:
        problems.append(f"num_attention_heads={heads} must be a multiple of the teacher's {rep} query heads per "
                        "KV head (whole KV groups are kept)")
    if problems:
        raise ConfigError("model.student.width: " + "; ".join(problems))
    return Dims(hidden, ffn, heads, heads // rep, t.head_dim)


def width_family(config: Any) -> WidthFamily:
    model_type = getattr(config, "model_type", None)
    if model_type not in WIDTH_FAMILIES:
        raise ConfigError(f"model.student.width: no width pruning for model_type {model_type!r}; "
                          f"supported: {', '.join(WIDTH_FAMILIES.names())}")
    return WIDTH_FAMILIES.get(model_type)


@dataclass
class WidthScores:
    hidden: Tensor  # [hidden]
    heads: dict[int, Tensor]  # layer -> [heads]
    ffn: dict[int, Tensor]  # layer -> [intermediate]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


@torch.no_grad()
def width_importance(model: nn.Module, batches: Iterable[Batch]) -> WidthScores:
    """Minitron's activation importance of hidden channels, heads (per layer) and FFN neurons (per layer)."""
    family, dims = width_family(model.config), Dims.of(model.config)
    mask: dict[str, Tensor] = {}
    hidden = torch.zeros(dims.hidden, dtype=torch.float64)
    heads: dict[int, Tensor] = {}
    ffn: dict[int, Tensor] = {}
    tokens = 0

    def masked_mean(x: Tensor) -> Tensor:  # [B, T, ...] -> [...] over the real tokens
        return x[mask["m"]].double().sum(0).cpu()

    handles = []
    for name, module in model.named_modules():
        layer = _LAYER.search(f".{name}.")
        if _is_norm(module):
            def on_norm(_m: nn.Module, _a: tuple, out: Any) -> None:
                out = _first_tensor(out)
                if out.shape[-1] == dims.hidden:  # skip per-head norms (Qwen3's q_norm/k_norm)
                    hidden.add_(masked_mean(out.abs()))
            handles.append(module.register_forward_hook(on_norm))
        elif layer is not None and family.attn_out.search(name):
            def on_heads(_m: nn.Module, args: tuple, i: int = int(layer[1])) -> None:
                x = args[0].reshape(*args[0].shape[:2], dims.heads, dims.head_dim)
                heads[i] = heads.get(i, 0) + masked_mean(x.double().norm(dim=-1))
            handles.append(module.register_forward_pre_hook(on_heads))
        elif layer is not None and family.ffn_out.search(name):
            def on_ffn(_m: nn.Module, args: tuple, i: int = int(layer[1])) -> None:
                ffn[i] = ffn.get(i, 0) + masked_mean(args[0].abs())
            handles.append(module.register_forward_pre_hook(on_ffn))
    try:
        with _eval_mode(model):
            for batch in batches:
                ids = batch["input_ids"]
                mask["m"] = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids).bool()
                tokens += int(mask["m"].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0 or not heads or not ffn:
        raise ConfigError("width importance: no activations recorded (no tokens, or an unsupported architecture)")
    return WidthScores(hidden / tokens, {i: v / tokens for i, v in heads.items()},
                       {i: v / tokens for i, v in ffn.items()})


def _top(scores: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores in ascending index order (ties keep the earlier index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def width_prune(model: nn.Module, width: Any, scores: WidthScores) -> tuple[nn.Module, dict[str, Any]]:
    """A new model of the same class with the sizes of ``width``, its weights sliced from ``model``'s at the
    most important hidden channels, KV groups / heads and FFN neurons; plus a record of what was kept."""
    config = model.config
    family, t = width_family(config), Dims.of(config)
    s = target_dims(config, width)
    rep = t.heads // t.groups
    keep_hidden = _top(scores.hidden, s.hidden)
    keep_groups = {i: _top(v.reshape(t.groups, rep).sum(-1), s.groups) for i, v in scores.heads.items()}
    keep_ffn = {i: _top(v, s.ffn) for i, v in scores.ffn.items()}

    def rows(axis: str | None, layer: int | None, size: int) -> list[int] | None:
        if axis is None:
            return None
        if axis == H:
            return keep_hidden
        if layer is None:
            raise ConfigError(f"width pruning: a per-layer weight outside the blocks ({axis})")
        if axis == FFN:
            return keep_ffn[layer]
        heads = [g * rep + r for g in keep_groups[layer] for r in range(rep)] if axis == Q else keep_groups[layer]
        return [h * t.head_dim + j for h in heads for j in range(t.head_dim)]

    new_config = copy.deepcopy(config)
    new_config.hidden_size, new_config.intermediate_size = s.hidden, s.ffn
    new_config.num_attention_heads = s.heads
    if family.separate_head_dim:
        new_config.head_dim = t.head_dim
        new_config.num_key_value_heads = s.groups
    student = type(model)(new_config)
    source = model.state_dict()
    state = {}
    for key, target in student.state_dict().items():
        weight = source[key]
        layer = _LAYER.search(f".{key}")
        axes = next((axes for pattern, axes in family.rules if pattern.search(key)), None)
        if axes is not None:
            for dim, axis in enumerate(axes):
                index = rows(axis, int(layer[1]) if layer else None, weight.shape[dim])
                if index is not None:
                    weight = weight.index_select(dim, torch.tensor(index, device=weight.device))
        if weight.shape != target.shape:
            raise ConfigError(f"width pruning: no slicing rule for {key} {tuple(source[key].shape)} -> "
                              f"{tuple(target.shape)} ({config.model_type})")
        state[key] = weight.detach().clone()
    student.load_state_dict(state)
    record = {
        "teacher": {"hidden_size": t.hidden, "intermediate_size": t.ffn, "num_attention_heads": t.heads,
                    "num_key_value_heads": t.groups},
        "student": {"hidden_size": s.hidden, "intermediate_size": s.ffn, "num_attention_heads": s.heads,
                    "num_key_value_heads": s.groups},
        "kept_hidden": keep_hidden,
        "kept_kv_groups" if rep > 1 else "kept_heads": {str(i): v for i, v in keep_groups.items()},
        "kept_ffn_count": {str(i): len(v) for i, v in keep_ffn.items()},
    }
    log.info("width-pruned %s: hidden %d -> %d, heads %d -> %d, ffn %d -> %d", config.model_type, t.hidden,
             s.hidden, t.heads, s.heads, t.ffn, s.ffn)
    return student, record


def width_requested(width: Any) -> bool:
    return width is not None and any(getattr(width, f, None) for f in
                                     ("hidden_size", "intermediate_size", "num_attention_heads"))


def importance_batches(data: Any, examples: int, batch_size: int = 16) -> list[Batch]:
    """The first ``examples`` training rows (already a seeded order for split tasks) as model inputs."""
    if data is None:
        raise ConfigError("model.student: auto blocks and width pruning measure importance on task data; "
                          "build the student with the run's TaskData")
    rows = data.train.select(range(min(examples, len(data.train))))
    rows = rows.remove_columns([c for c in rows.column_names if c == "example_id"])
    keep = ("input_ids", "attention_mask", "token_type_ids")
    batches = []
    for start in range(0, len(rows), batch_size):
        collated = data.collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batches.append({k: v for k, v in collated.items() if k in keep})
    return batches
