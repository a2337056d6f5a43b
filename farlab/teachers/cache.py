"""Teacher outputs on disk: computed once per key, memory-mapped by every run that shares the teacher.

A FAR sweep trains many students against one frozen teacher on the same data; recomputing the teacher's
forward in every run is the largest waste in it. The cache stores, per training example, the teacher's
top-k log-probs (T = 1, so one cache serves every loss temperature) at the positions a loss reads
(LM: response positions; classifier: one row per example) and, optionally, the mapped layers' hidden states
at the token-mask positions.

Build it with ``python -m farlab.teachers.cache <the train overrides>`` or let the first run build it
(``teacher.cache.build=true``). Layout of one entry (``<teacher.cache.dir>/<task>-<teacher>-<key hash>``)::

    meta.json            key (below), shapes, dtypes, vocab size
    logit_offsets.npy    int64 [N + 1]: rows of example e are logit_offsets[e]:logit_offsets[e + 1]
    ids.npy              uint16 (vocab <= 65536) or int32 [R, k]
    logprobs.npy         float16 | float32 | uint16 (bfloat16 bits) [R, k]
    token_offsets.npy    int64 [N + 1]            (with hidden states)
    hidden_<layer>.npy   dtype [R_tokens, D]      (with hidden states)
    metrics/<eval>.json  the teacher's pre-training eval metrics per eval-set fingerprint
    COMPLETE             written last (farlab.atomic.publish); an entry without it is ignored

The key: teacher identity (SFT store key, or name + weights fingerprint / init config + seed, plus a non-default
model.teacher.dtype and model.pad_token), dataset
fingerprint (a hash of every column of the tokenized train split, example ids included), k, the stored
log-prob temperature (always 1.0), task max length, dtype and hidden layers. Opening an entry built for
another key is refused with the differing fields named. Builds run under a file lock (one process builds,
concurrent ones wait and reuse) into a staging dir that is renamed into place, so an interrupted build is
never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from farlab.atomic import COMPLETE_MARKER, build_once
from farlab.config import dotted_leaves
from farlab.data.context import teacher_side
from farlab.data.kinds import TASK_KINDS
from farlab.losses.base import TopK
from farlab.models.forward import model_inputs
from farlab.models.precision import DEFAULT_DTYPE
from farlab.registry import Registry
from farlab.teachers.backends.base import filler_topk, topk_from_logits

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"


class CacheError(RuntimeError):
    """A teacher cache is missing, incomplete, or does not fit this run."""


class CacheKeyError(CacheError):
    """The cache at an explicit path was built for another key."""


# --------------------------------------------------------------------------------------------------
# Stored dtypes (numpy has no bfloat16: its bits are stored as uint16)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    numpy_dtype: Any
    torch_dtype: torch.dtype

    def to_numpy(self, x: Tensor) -> np.ndarray:
        y = x.detach().to("cpu", self.torch_dtype)
        if self.torch_dtype == torch.bfloat16:
            return y.view(torch.int16).numpy().view(np.uint16)
        return y.numpy()

    def to_torch(self, a: np.ndarray) -> Tensor:
        a = np.ascontiguousarray(a)
        if self.torch_dtype == torch.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).float()
        return torch.from_numpy(a).float()


CODECS: Registry[Codec] = Registry("teacher.cache.dtype")
CODECS.add("float16", Codec(np.float16, torch.float16))
CODECS.add("bfloat16", Codec(np.uint16, torch.bfloat16))
CODECS.add("float32", Codec(np.float32, torch.float32))


def ids_dtype(vocab_size: int) -> Any:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


# --------------------------------------------------------------------------------------------------
# Key
# --------------------------------------------------------------------------------------------------


def _column_digest(digest: Any, column: pa.ChunkedArray) -> None:
    """Hash a column by value (not by Arrow layout), so equal data gives equal hashes across processes."""
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        digest.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
        column = pc.list_flatten(column)
    if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        digest.update(column.to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    elif pa.types.is_floating(column.type):
        digest.update(column.to_numpy(zero_copy_only=False).astype(np.float64).tobytes())
    else:
        digest.update(json.dumps(column.to_pylist(), default=str).encode())


def dataset_fingerprint(dataset: Any) -> str:
    """sha256 over every column (sorted by name) of a ``datasets.Dataset``, by value."""
    table = dataset.with_format("arrow")[:] if len(dataset) else dataset.data.table
    digest = hashlib.sha256()
    for name in sorted(table.column_names):
        digest.update(name.encode())
        _column_digest(digest, table.column(name))
    return digest.hexdigest()[:32]


def _hash_files(folder: Path, memo_file: Path) -> str:
    """sha256 of a model folder's weight and config files, memoised per (path, size, mtime)."""
    memo: dict[str, str] = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    digest = hashlib.sha256()
    changed = False
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()):
        stat = path.stat()
        tag = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if tag not in memo:
            file_digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    file_digest.update(block)
            memo[tag], changed = file_digest.hexdigest(), True
        digest.update(path.name.encode() + memo[tag].encode())
    if changed:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, memo_file)
    return digest.hexdigest()[:32]


def teacher_identity(settings: Any, kind: str) -> dict[str, Any]:
    """What makes two teachers the same without loading either (the SFT store key, or base weights/config)."""
    import transformers
    from omegaconf import OmegaConf

    from farlab.teachers.store import store_key
    from farlab.teachers.strategies import sft_store_material

    spec = settings.model.teacher
    ident: dict[str, Any] = {"name": spec.name, "init": settings.strategy.init}
    if settings.strategy.init == "sft":
        ident["sft_store_key"] = store_key(sft_store_material(settings))
        return ident
    ident["source"] = spec.source
    if spec.source == "config":  # random init: a function of the config, the seed and the library versions
        ident["config"] = OmegaConf.to_container(spec.config, resolve=True)
        ident["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    elif Path(str(spec.path)).expanduser().is_dir():
        ident["path"] = str(spec.path)
        ident["weights"] = _hash_files(Path(str(spec.path)).expanduser(), Path(settings.backend.cache.dir).expanduser()
                                       / "weights_fingerprints.json")
    else:
        ident["hub_id"] = str(spec.path)  # a hub id: pinned by name only
    if spec.source == "config" or not TASK_KINDS.get(kind).vocabulary_logits:
        ident["seed"] = settings.seed  # random weights or a fresh task head depend on the seed
    if spec.get("dtype", DEFAULT_DTYPE) != DEFAULT_DTYPE:  # at the default: absent, so older entries keep their key
        ident["dtype"] = spec.dtype
    if settings.model.get("pad_token") is not None:  # an added pad token resizes the teacher's output layer
        ident["pad_token"] = settings.model.pad_token
    return ident


def cache_key(settings: Any, data: Any, k: int, hidden_layers: list[int]) -> dict[str, Any]:
    """What a cache entry is a function of (``settings``: :class:`farlab.teachers.strategies.TeacherSettings`)."""
    return {
        "format": FORMAT_VERSION,
        "teacher": teacher_identity(settings, data.kind),
        "data": {"task": data.name, "kind": data.kind, "n_examples": len(data.train),
                 "fingerprint": dataset_fingerprint(data.train)},
        "top_k": int(k),
        "logprob_temperature": 1.0,  # stored untempered; the loss softens (one cache serves every T)
        "max_length": settings.task.get("max_length"),
        "dtype": settings.backend.cache.dtype,
        "hidden_layers": list(hidden_layers),
    }


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    a, b = dotted_leaves(stored), dotted_leaves(wanted)
    return [f"{k}: cache has {a.get(k)!r}, this run needs {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def entry_path(settings: Any, key: dict[str, Any]) -> Path:
    """``teacher.cache.path`` when set, else ``<teacher.cache.dir>/<task>-<teacher>-<key hash>``."""
    if settings.backend.cache.path:
        return Path(settings.backend.cache.path).expanduser()
    name = f"{key['data']['task']}-{key['teacher']['name']}-{key_hash(key)}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return Path(settings.backend.cache.dir).expanduser() / safe


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def _loader(data: Any, batch_size: int) -> Iterator[dict[str, Tensor]]:
    """The teacher's batches (its own prompts under context distillation) in example order."""
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=False, collate_fn=data.collator)
    return (teacher_side(batch) for batch in loader)


def _rows(kind: str, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
    """(response positions or None = one row per example, token positions) of a collated batch."""

    token_mask, response_mask = TASK_KINDS.get(kind).masks(batch)
    return (None if response_mask is None else response_mask.bool()), token_mask.bool()


def write_cache(
    teacher: torch.nn.Module,
    data: Any,
    out_dir: Path,
    key: dict[str, Any],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the frozen teacher over the train split in order and write an entry's files into ``out_dir``.

    Two passes: one over the collated batches to size the memory-mapped arrays, one with the teacher.
    """
    from farlab.models.forward import accepted_inputs

    k, codec, layers = key["top_k"], CODECS.get(key["dtype"]), list(key["hidden_layers"])
    n = len(data.train)
    logit_rows, token_rows = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for batch in _loader(data, batch_size):
        if "example_id" not in batch:
            raise CacheError(f"task {data.name!r}: its collator drops 'example_id'; a teacher cache needs it")
        response, tokens = _rows(data.kind, batch)
        ids = batch["example_id"].numpy()
        logit_rows[ids] = 1 if response is None else response.sum(1).numpy()
        token_rows[ids] = tokens.sum(1).numpy()
    if not np.array_equal(np.sort(np.asarray(data.train["example_id"])), np.arange(n)):
        raise CacheError(f"task {data.name!r}: example_id must number the train rows 0..{n - 1}")
    logit_offsets = np.concatenate([[0], np.cumsum(logit_rows)])
    token_offsets = np.concatenate([[0], np.cumsum(token_rows)])
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "logit_offsets.npy", logit_offsets)
    arrays: dict[str, np.ndarray] = {}
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    vocab = None
    try:
        with torch.no_grad():
            for i, batch in enumerate(_loader(data, batch_size)):
                response, tokens = _rows(data.kind, batch)
                inputs = {name: t.to(device) for name, t in model_inputs(batch).items()}
                out = teacher(**accepted_inputs(teacher, inputs), output_hidden_states=bool(layers))
                if vocab is None:
                    vocab = int(out.logits.shape[-1])
                    kk = min(k, vocab)
                    arrays["ids"] = np.lib.format.open_memmap(
                        out_dir / "ids.npy", "w+", ids_dtype(vocab), (int(logit_offsets[-1]), kk))
                    arrays["logprobs"] = np.lib.format.open_memmap(
                        out_dir / "logprobs.npy", "w+", codec.numpy_dtype, (int(logit_offsets[-1]), kk))
                    for layer in layers:
                        arrays[f"hidden_{layer}"] = np.lib.format.open_memmap(
                            out_dir / f"hidden_{layer}.npy", "w+", codec.numpy_dtype,
                            (int(token_offsets[-1]), out.hidden_states[layer].shape[-1]))
                top = topk_from_logits(out.logits, k)
                for b, e in enumerate(batch["example_id"].tolist()):
                    a, z = logit_offsets[e], logit_offsets[e + 1]
                    sel = slice(None) if response is None else response[b].to(device)
                    arrays["ids"][a:z] = top.ids[b][sel].cpu().numpy().reshape(z - a, -1)
                    arrays["logprobs"][a:z] = codec.to_numpy(top.logprobs[b][sel]).reshape(z - a, -1)
                    ta, tz = token_offsets[e], token_offsets[e + 1]
                    for layer in layers:
                        h = out.hidden_states[layer][b][tokens[b].to(device)]
                        arrays[f"hidden_{layer}"][ta:tz] = codec.to_numpy(h)
                if on_batch is not None:
                    on_batch(i)
    finally:
        teacher.train(was_training)
    for array in arrays.values():
        array.flush()
    if layers:
        np.save(out_dir / "token_offsets.npy", token_offsets)
    meta = {"key": key, "vocab_size": vocab, "k": min(k, vocab or k), "n_examples": n,
            "rows": int(logit_offsets[-1]), "token_rows": int(token_offsets[-1]),
            "ids_dtype": np.dtype(ids_dtype(vocab or 0)).name}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return meta


# --------------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------------


class TeacherCache:
    """A complete entry, memory-mapped; turns a collated batch into the teacher's TopK (and hidden states)."""

    def __init__(self, path: Path, key: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not (self.path / COMPLETE_MARKER).is_file():
            raise CacheError(f"{self.path} is not a complete teacher cache (no {COMPLETE_MARKER} marker)")
        self.meta = json.loads((self.path / META_FILE).read_text())
        if key is not None:
            diff = key_differences(self.meta["key"], key)
            if diff:
                raise CacheKeyError(
                    f"the teacher cache at {self.path} was built for another key; differing fields:\n  - "
                    + "\n  - ".join(diff)
                    + "\nPoint teacher.cache.path elsewhere (or null: one entry per key under teacher.cache.dir)"
                )
        self.codec = CODECS.get(self.meta["key"]["dtype"])
        self.kind = self.meta["key"]["data"]["kind"]
        self.layers = [int(x) for x in self.meta["key"]["hidden_layers"]]
        load = lambda name: np.load(self.path / name, mmap_mode="r")  # noqa: E731
        self.logit_offsets = load("logit_offsets.npy")
        self.ids, self.logprobs = load("ids.npy"), load("logprobs.npy")
        self.token_offsets = load("token_offsets.npy") if self.layers else None
        self.hidden = {layer: load(f"hidden_{layer}.npy") for layer in self.layers}

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def _example_ids(self, batch: dict[str, Tensor]) -> list[int]:
        if "example_id" not in batch:
            raise CacheError("the batch has no 'example_id'; the task's collator must pass it to use a teacher cache")
        ids = batch["example_id"].tolist()
        n = int(self.meta["n_examples"])
        bad = [e for e in ids if not 0 <= e < n]
        if bad:
            raise CacheError(f"example ids {bad[:5]} are outside this cache's 0..{n - 1}")
        return ids

    def _gather(self, offsets: np.ndarray, examples: list[int], positions: Tensor | None, what: str) -> tuple:
        """Row indices for ``examples`` and the (batch, position) they go to; checks the counts match."""
        rows, where_b, where_t = [], [], []
        for b, e in enumerate(examples):
            a, z = int(offsets[e]), int(offsets[e + 1])
            pos = None if positions is None else positions[b].nonzero().squeeze(1)
            n = 1 if pos is None else pos.numel()
            if z - a != n:
                raise CacheError(
                    f"example {e}: the batch has {n} {what} positions but the cache holds {z - a}; the data changed "
                    f"since {self.path} was built (rebuild it)"
                )
            rows.append(np.arange(a, z))
            where_b.append(torch.full((n,), b, dtype=torch.long))
            if pos is not None:
                where_t.append(pos)
        idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return idx, torch.cat(where_b), (torch.cat(where_t) if where_t else None)

    def topk(self, batch: dict[str, Tensor]) -> TopK:
        examples = self._example_ids(batch)
        response, _ = _rows(self.kind, {k: v.cpu() for k, v in batch.items()})
        idx, wb, wt = self._gather(self.logit_offsets, examples, response, "response")
        ids = torch.from_numpy(self.ids[idx].astype(np.int64))
        logprobs = self.codec.to_torch(self.logprobs[idx])
        if response is None:  # classifier: [B, k]
            return TopK(ids=ids, logprobs=logprobs)
        out = filler_topk(tuple(response.shape), self.k)
        out.ids[wb, wt], out.logprobs[wb, wt] = ids, logprobs
        return out

    def hidden_states(self, batch: dict[str, Tensor], num_layers: int) -> tuple[Tensor | None, ...]:
        """A tuple indexed like HF's ``hidden_states`` (0 = embeddings); layers not stored are None."""
        examples = self._example_ids(batch)
        _, tokens = _rows(self.kind, {k: v.cpu() for k, v in batch.items()})
        assert self.token_offsets is not None
        idx, wb, wt = self._gather(self.token_offsets, examples, tokens, "token")
        out: list[Tensor | None] = [None] * (num_layers + 1)
        for layer, array in self.hidden.items():
            full = torch.zeros(*tokens.shape, array.shape[1])
            full[wb, wt] = self.codec.to_torch(array[idx])
            out[layer] = full
        return tuple(out)

    # ---- the teacher's eval metrics, one small file per eval-set fingerprint ----------------------

    def metrics(self, eval_fingerprint: str) -> dict[str, Any] | None:
        path = self.path / "metrics" / f"{eval_fingerprint}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_metrics(self, eval_fingerprint: str, metrics: dict[str, Any]) -> None:
        folder = self.path / "metrics"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{eval_fingerprint}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(metrics, indent=1))
        os.replace(tmp, folder / f"{eval_fingerprint}.json")


def open_or_build(entry: Path, key: dict[str, Any], build: Callable[[Path], None] | None) -> TeacherCache:
    """The complete entry for ``key``; built first (under a file lock, atomically) when missing."""
    try:
        build_once(entry, build, "teacher cache")
    except FileNotFoundError:
        raise CacheError(
            f"no complete teacher cache at {entry}; build it with `python -m farlab.teachers.cache <the same "
            "overrides as train>` or set teacher.cache.build=true"
        ) from None
    return TeacherCache(entry, key)


if __name__ == "__main__":
    # The CLI lives in the application layer (it wires config, data, strategies and the trainer); this module is a
    # library the trainer uses, so it hands the command over by name instead of importing upward.
    import runpy

    runpy.run_module("farlab.cli.cache", run_name="__main__")
