"""Sequence-level KD (Kim & Rush, 2016): the teacher's own outputs for the task's training prompts become the
student's targets (``task.targets=teacher``); CE on them is sequence-level KD, a response loss adds word-level KD.

The generations are a keyed, write-once dataset like the teacher cache (:mod:`farlab.teachers.cache`), built by
``python -m farlab.teachers.generate <the train overrides>`` or by the first run that needs it
(``generate.build=true``). Layout of one entry (``<generate.dir>/<task>-<teacher>-<key hash>``)::

    meta.json           key (below), row counts, how it was built (backend, server URL)
    generations.jsonl   one line per generation: {"example_id", "sample", "text"}, by example then sample
    COMPLETE            written last (farlab.atomic.publish); an entry without it is never read

The key: teacher identity (the cache's: SFT store key, or weights fingerprint / init config + seed; for a server
its served model name), the prompts (task, count, a hash of every prompt's token ids) and the decoding (mode, n,
max_new_tokens, stop strings; temperature, top_p and seed when sampling). Opening an entry built for another key
is refused naming the differing fields. Builds run under a file lock into a staging folder that is renamed into
place, so an interrupted build never leaves a half dataset.

Texts are stored, not token ids: a target goes through the task's own encoder exactly like a gold target
(``TaskData.retarget``), so the student's rows have the same shape whatever generated them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import set_seed

from farlab.atomic import COMPLETE_MARKER, build_once
from farlab.data.base import TaskData
from farlab.errors import ConfigError
from farlab.registry import Registry, unknown_choice_message
from farlab.teachers.cache import key_differences, key_hash, teacher_identity

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE, ROWS_FILE = "meta.json", "generations.jsonl"
MODES = ("greedy", "sample")


class GenerationsKeyError(ConfigError):
    """The generations at ``generate.path`` were built for another key."""


# --------------------------------------------------------------------------------------------------
# Prompts and decoding
# --------------------------------------------------------------------------------------------------


def training_prompts(data: TaskData) -> list[list[int]]:
    """Each training row's prompt: its token ids before the first target token (labels != -100)."""
    prompts = []
    for ids, labels in zip(data.train["input_ids"], data.train["labels"]):
        first = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        prompts.append(list(ids[:first]))
    return prompts


def decoding(gen: Any, data: TaskData, seed: int) -> dict[str, Any]:
    """The decoding half of the key: only what changes the texts (greedy ignores temperature, top_p, seed)."""
    max_new = gen.max_new_tokens or (data.generation.max_new_tokens if data.generation else 64)
    out: dict[str, Any] = {"mode": gen.mode, "n": int(gen.n), "max_new_tokens": int(max_new), "stop": list(gen.stop)}
    if gen.mode == "sample":
        out.update(temperature=float(gen.temperature), top_p=float(gen.top_p),
                   seed=int(seed if gen.seed is None else gen.seed))
    return out


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text up to the first stop string, stripped (the eval loop strips predictions the same way)."""
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


# --------------------------------------------------------------------------------------------------
# Generators: one per teacher backend that can generate
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Generator:
    """How one ``teacher.backend`` generates: its identity in the key, and the texts of every prompt."""

    identity: Callable[[GenerationRun], dict[str, Any]]
    run: Callable[[GenerationRun, list[list[int]], dict[str, Any]], list[list[str]]]  # (run, prompts, decoding)
    describe: Callable[[GenerationRun], dict[str, Any]] = lambda run: {}  # provenance in meta.json, not the key


def _local_identity(run: GenerationRun) -> dict[str, Any]:
    settings = run.ctx.settings
    if settings.backend.get("cache") is None:  # the weights-fingerprint memo lives in a cache dir
        memo = OmegaConf.merge(settings.backend, {"cache": {"dir": str(run.root)}})
        settings = dataclasses.replace(settings, backend=memo)
    return teacher_identity(settings, run.ctx.data.kind)


@torch.no_grad()
def generate_local(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], dec: dict[str, Any],
                   batch_size: int) -> list[list[str]]:
    """``model.generate`` over left-padded prompt batches; ``dec['n']`` texts per prompt (seeded when sampling)."""
    sample = dec["mode"] == "sample"
    if sample:
        set_seed(dec["seed"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kwargs: dict[str, Any] = {"do_sample": sample, "num_return_sequences": dec["n"]}
    if sample:
        kwargs.update(temperature=dec["temperature"], top_p=dec["top_p"], top_k=0)
    out: list[list[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=dec["max_new_tokens"],
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       **kwargs)
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            out += [texts[i : i + dec["n"]] for i in range(0, len(texts), dec["n"])]
    finally:
        model.train(was_training)
    return out


def _run_local(run: GenerationRun, prompts: list[list[int]], dec: dict[str, Any]) -> list[list[str]]:
    return generate_local(run.load_teacher(run.ctx), run.ctx.tokenizer, prompts, dec, int(run.generate.batch_size))


def _run_server(run: GenerationRun, prompts: list[list[int]], dec: dict[str, Any]) -> list[list[str]]:
    sample = dec["mode"] == "sample"
    return run.client().generate(prompts, dec["n"], dec["max_new_tokens"],
                                 temperature=dec["temperature"] if sample else 0.0,
                                 top_p=dec.get("top_p", 1.0), seed=dec.get("seed"), stop=dec["stop"])


GENERATORS: Registry[Generator] = Registry("teacher.backend (generating teacher)")
GENERATORS.add("hf", Generator(_local_identity, _run_local))
GENERATORS.add("cache", Generator(_local_identity, _run_local))  # a cache stores log-probs: generate in-process
GENERATORS.add("openai", Generator(lambda run: {"served_model": run.client().model}, _run_server,
                                   describe=lambda run: {"base_url": run.ctx.settings.backend.openai.base_url}))


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenerationRun:
    """What building or finding the generations needs: the teacher context, the ``generate`` settings, the loader."""

    ctx: Any  # farlab.teachers.strategies.TeacherContext (data: the gold task)
    generate: Any  # GenerateConfig node
    load_teacher: Callable[[Any], Any]  # strategies.prepare_teacher
    _client: Any = None

    @property
    def root(self) -> Path:
        """``generate.dir``; null = ``$FARLAB_GENERATIONS``, else ``~/.cache/farlab/generations``."""
        default = os.environ.get("FARLAB_GENERATIONS") or "~/.cache/farlab/generations"
        return Path(self.generate.dir or default).expanduser()

    def client(self) -> Any:
        """The OpenAI-compatible client for ``teacher.openai`` (made once)."""
        from farlab.teachers.backends.openai import make_client

        if self._client is None:
            self._client = make_client(self.ctx.settings.backend.openai, self.ctx.tokenizer)
        return self._client

    @property
    def generator(self) -> Generator:
        return GENERATORS.get(self.ctx.settings.backend.backend)

    def key(self) -> dict[str, Any]:
        prompts = training_prompts(self.ctx.data)
        return {
            "format": FORMAT_VERSION,
            "teacher": self.generator.identity(self),
            "prompts": {"task": self.ctx.data.name, "n_examples": len(prompts),
                        "fingerprint": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:32]},
            "decoding": decoding(self.generate, self.ctx.data, self.ctx.settings.seed),
        }

    def entry(self, key: dict[str, Any]) -> Path:
        if self.generate.path:
            return Path(self.generate.path).expanduser()
        name = f"{key['prompts']['task']}-{self.ctx.settings.model.teacher.name}-{key_hash(key)}"
        return self.root / "".join(c if c.isalnum() or c in "._-" else "_" for c in name)

    def write(self, out: Path, key: dict[str, Any]) -> None:
        """Generate every prompt's texts and write the entry's files into ``out``."""
        prompts, dec = training_prompts(self.ctx.data), key["decoding"]
        log.info("generating %d x %d teacher outputs (%s) for task %s", len(prompts), dec["n"], dec["mode"],
                 self.ctx.data.name)
        texts = self.generator.run(self, prompts, dec)
        if len(texts) != len(prompts) or any(len(t) != dec["n"] for t in texts):
            raise RuntimeError(f"the teacher returned {len(texts)} prompts' generations for {len(prompts)} prompts")
        examples = self.ctx.data.train["example_id"]
        with open(out / ROWS_FILE, "w", encoding="utf-8") as handle:
            for e, samples in zip(examples, texts):
                for j, text in enumerate(samples):
                    row = {"example_id": int(e), "sample": j, "text": cut_at_stop(text, dec["stop"])}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {"key": key, "rows": len(prompts) * dec["n"], "built_with": self.ctx.settings.backend.backend,
                **self.generator.describe(self)}
        (out / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))

    def open_or_build(self, force: bool = False) -> Generations:
        key = self.key()
        entry = self.entry(key)
        if (entry / COMPLETE_MARKER).is_file() and not force:
            return Generations(entry, key)  # refuses a wrong key before anything is generated
        build = (lambda out: self.write(out, key)) if self.generate.build or force else None
        try:
            build_once(entry, build, "teacher generations", force=force)
        except FileNotFoundError:
            raise ConfigError(
                f"no teacher generations at {entry} and generate.build=false; build them with `python -m "
                "farlab.teachers.generate <the same overrides as train>`") from None
        return Generations(entry, key)


class Generations:
    """A complete entry: its rows, checked against the key the run needs."""

    def __init__(self, path: Path, key: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not (self.path / COMPLETE_MARKER).is_file():
            raise ConfigError(f"{self.path} is not a complete teacher-generations dataset (no {COMPLETE_MARKER})")
        self.meta = json.loads((self.path / META_FILE).read_text())
        if key is not None:
            diff = key_differences(self.meta["key"], key)
            if diff:
                raise GenerationsKeyError(
                    f"the teacher generations at {self.path} were built for another key; differing fields:\n  - "
                    + "\n  - ".join(d.replace("cache has", "dataset has") for d in diff)
                    + "\nPoint generate.path elsewhere (or null: one entry per key under generate.dir)")
        with open(self.path / ROWS_FILE, encoding="utf-8") as handle:
            self.rows = [json.loads(line) for line in handle if line.strip()]

    def targets(self) -> list[tuple[int, str]]:
        """(example_id, text) in example order, samples of one example together."""
        return [(r["example_id"], r["text"]) for r in sorted(self.rows, key=lambda r: (r["example_id"], r["sample"]))]


# --------------------------------------------------------------------------------------------------
# Run wiring
# --------------------------------------------------------------------------------------------------


def targets_setting(task_cfg: Any) -> str:
    return str(task_cfg.get("targets") or "gold")


def with_teacher_targets(data: TaskData, generations: Generations) -> TaskData:
    """The task whose training rows are the teacher's generations (one row per generation); the gold rows stay
    the SFT teacher's (:meth:`TaskData.gold_only`)."""
    if data.retarget is None:
        raise ConfigError(f"task.targets=teacher: task {data.name!r} cannot take generated targets (its handler "
                          "sets no TaskData.retarget); generation tasks such as translation can")
    rows = generations.targets()
    info = {**data.info, "teacher_targets": {"path": str(generations.path), "rows": len(rows),
                                             "empty": sum(not t for _, t in rows)}}
    return dataclasses.replace(data, train=data.retarget(rows), sft_train=data.sft_train or data.train, info=info)


def teacher_targets(generate: Any, ctx: Any, load_teacher: Callable[[Any], Any]) -> TaskData:
    """``ctx.data`` unchanged for ``task.targets=gold``; else the same task trained on the teacher's generations
    (found, or built once, for this key)."""
    if targets_setting(ctx.settings.task) != "teacher":
        return ctx.data
    generations = GenerationRun(ctx, generate, load_teacher).open_or_build()
    log.info("task.targets=teacher: %d generated training rows from %s", len(generations.rows), generations.path)
    return with_teacher_targets(ctx.data, generations)


def generate_problems(generate: Any, task_cfg: Any, backend: str) -> list[str]:
    """Model-free checks of ``generate`` (always) and of the generating backend (with task.targets=teacher)."""
    problems = []
    if generate.mode not in MODES:
        problems.append(unknown_choice_message("generate.mode", generate.mode, MODES))
    if generate.n < 1:
        problems.append(f"generate.n={generate.n} must be >= 1")
    elif generate.n > 1 and generate.mode != "sample":
        problems.append(f"generate.n={generate.n} with generate.mode={generate.mode}: greedy decoding gives one "
                        "text per prompt; set generate.mode=sample (or generate.n=1)")
    if generate.temperature <= 0:
        problems.append(f"generate.temperature={generate.temperature} must be > 0 (mode=greedy for argmax)")
    if not 0 < generate.top_p <= 1:
        problems.append(f"generate.top_p={generate.top_p} must be in (0, 1]")
    if generate.max_new_tokens is not None and generate.max_new_tokens < 1:
        problems.append(f"generate.max_new_tokens={generate.max_new_tokens} must be >= 1 or null")
    if generate.batch_size < 1:
        problems.append(f"generate.batch_size={generate.batch_size} must be >= 1")
    if targets_setting(task_cfg) == "teacher" and backend not in GENERATORS:
        problems.append(unknown_choice_message("teacher.backend (to generate task.targets=teacher)", backend,
                                               GENERATORS.names()))
    return problems
