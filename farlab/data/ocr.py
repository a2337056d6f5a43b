"""OCR / document AI with vision-language models: image + instruction -> transcript.

Each example is an image, an instruction and the answer text. The model's *processor* builds the
prompt (chat template with an image entry, image placeholder expanded to the image's patch tokens);
the answer follows as ``answer_ids + eos`` and labels are -100 on everything else (chat markup,
instruction, image tokens, padding), so CE and every distillation term see the answer only, as in
:mod:`farlab.data.translation`. Images stay on disk in the datasets (path + optional crop box); the
collators load, crop, resize and process them per batch, so a 270k-page corpus costs no RAM up front.

Sources (``task.format``, one registry entry each; see docs/ocr.md):
``folder`` (images with sidecar text files, e.g. UW3 ``X.bin.png`` + ``X.gt.txt``, olmOCR ``X.png`` + ``X.md``),
``manifest`` (JSONL rows ``{"image": path, "text": ...}``), ``sroie_lines`` (line crops from SROIE box CSVs),
``sroie_keys`` (whole receipt -> JSON of its key fields).
"""

from __future__ import annotations

import json
import logging
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from farlab.data.base import GenerationConfig, TaskData, check_eval_settings, metric_fields, typed_config
from farlab.errors import DataError
from farlab.registry import Registry, unknown_choice_message

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"]


@dataclass
class OCRTaskConfig:
    name: str = "ocr"
    family: str = "ocr"
    format: str = "folder"  # folder | manifest | sroie_lines | sroie_keys
    train_path: str | None = None  # a folder, a .jsonl manifest, or a SROIE root (box/ img/ key/)
    test_path: str | None = None  # same format; null = carve the test split out of train_path
    image_suffixes: list[str] = field(default_factory=lambda: list(IMAGE_SUFFIXES))  # folder format
    text_suffix: str = ".txt"  # folder format: X<image suffix> pairs with X<text_suffix>
    recursive: bool = False  # folder format: also look in subfolders
    front_matter: str = "keep"  # keep | strip: a YAML front matter block at the top of a text (olmOCR .md)
    prompt: str | None = None  # the instruction; null = the format's default
    prompt_style: str = "instruction"  # instruction (task.prompt) | olmocr_v4 | olmocr_yaml (olmocr.prompts)
    sroie_fields: list[str] = field(default_factory=lambda: ["company", "date", "address", "total"])
    max_image_side: int = 1024  # longest image side in pixels after loading (downscaled, aspect kept)
    max_aspect_ratio: float = 100.0  # longer images are padded (white): Qwen's resizer refuses > 200
    max_length: int = 2048  # image + prompt + answer tokens; longer answers are cut
    validation_fraction: float = 0.1  # of train_path's documents, held out as the validation split
    test_fraction: float = 0.1  # of train_path's documents, only when test_path is null
    eval_split: str = "validation"  # validation | test
    train_limit: int | None = None
    eval_limit: int | None = None
    check_images: bool = True  # open every image while building, so a bad file fails before training
    normalize: str = "whitespace"  # none | whitespace | olmocr_bench: applied to predictions and references
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=128, batch_size=8))
    metrics: list[str] = field(default_factory=lambda: ["edit_similarity", "exact_match"])
    primary_metric: str | None = "edit_similarity"


@dataclass(frozen=True)
class OCRExample:
    image: str
    text: str
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) crop
    group: str = ""  # the source document: splits never separate one document's examples
    prompt: str | None = None  # a manifest row may carry its own instruction


# --------------------------------------------------------------------------------------------------
# Sources: task.format -> loader(path, cfg) -> examples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    load: Callable[[Path, OCRTaskConfig], list[OCRExample]]
    default_prompt: str
    path_kind: str  # "dir" | "file": what train_path/test_path must be


SOURCES: Registry[Source] = Registry("task.format")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from err


def _strip_front_matter(text: str) -> str:
    """Drop a leading ``---\\n...\\n---`` YAML block (olmOCR's page metadata), keep the page text."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4 :].lstrip("\n")
    return text


FRONT_MATTER: Registry[Callable[[str], str]] = Registry("task.front_matter")
FRONT_MATTER.add("keep", lambda text: text)
FRONT_MATTER.add("strip", _strip_front_matter)


def _image_stem(path: Path, suffixes: list[str]) -> str | None:
    name = path.name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):  # ".bin.png" before ".png"
        if name.endswith(suffix.lower()):
            return path.name[: len(path.name) - len(suffix)]
    return None


def _load_folder(root: Path, cfg: OCRTaskConfig) -> list[OCRExample]:
    """Every image ``X<suffix>`` with its sidecar ``X<text_suffix>``; an image without one is an error."""
    files = sorted(root.rglob("*") if cfg.recursive else root.iterdir())
    examples, missing = [], []
    for path in files:
        stem = _image_stem(path, cfg.image_suffixes) if path.is_file() else None
        if stem is None:
            continue
        sidecar = path.with_name(stem + cfg.text_suffix)
        if not sidecar.is_file():
            missing.append(sidecar.name)
            continue
        text = FRONT_MATTER.get(cfg.front_matter)(_read_text(sidecar))
        examples.append(OCRExample(str(path), text.strip(), group=str(path.relative_to(root).with_name(stem))))
    if missing:
        raise DataError(
            f"{len(missing)} images in {root} have no ground-truth file (task.text_suffix={cfg.text_suffix!r}), "
            f"e.g. {missing[:3]}"
        )
    return examples


def _load_manifest(manifest: Path, cfg: OCRTaskConfig) -> list[OCRExample]:
    """JSONL rows ``{"image": path, "text": str}`` (+ optional "prompt", "group"); paths relative to the file."""
    examples = []
    for lineno, line in enumerate(_read_text(manifest).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not a JSON object: {err}") from err
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise DataError(f'{where}: a manifest row needs "image" (a path) and "text"; got {line[:120]!r}')
        if not isinstance(row.get("text"), str):
            raise DataError(f'{where}: row for image {row["image"]!r} has no "text" string (ground truth)')
        image = Path(row["image"]).expanduser()
        image = image if image.is_absolute() else manifest.parent / image
        text = FRONT_MATTER.get(cfg.front_matter)(row["text"])
        examples.append(OCRExample(str(image), text.strip(), group=str(row.get("group", row["image"])),
                                   prompt=row.get("prompt")))
    return examples


def sroie_boxes(csv_path: Path) -> list[tuple[tuple[int, int, int, int], str]]:
    """(bounding box, transcript) per line of a SROIE box CSV ``x1,y1,...,x4,y4,transcript``.

    The transcript may itself contain commas, so each line is split on its first 8 commas only;
    the quadrilateral becomes its axis-aligned bounding box.
    """
    rows = []
    for lineno, line in enumerate(_read_text(csv_path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",", 8)
        try:
            coords = [int(v) for v in parts[:8]]
        except ValueError:
            coords = []
        if len(parts) != 9 or len(coords) != 8:
            raise DataError(f"{csv_path}:{lineno}: expected x1,y1,x2,y2,x3,y3,x4,y4,transcript; got {line[:80]!r}")
        xs, ys = coords[0::2], coords[1::2]
        rows.append(((min(xs), min(ys), max(xs), max(ys)), parts[8].strip()))
    return rows


def _sroie_receipts(root: Path) -> list[str]:
    ids = sorted(p.stem for p in (root / "img").glob("*.jpg"))
    if not ids:
        raise DataError(f"no receipts in {root / 'img'} (expected SROIE's img/NNN.jpg, box/NNN.csv, key/NNN.json)")
    return ids


def _load_sroie_lines(root: Path, cfg: OCRTaskConfig) -> list[OCRExample]:
    examples = []
    for rid in _sroie_receipts(root):
        csv_path = root / "box" / f"{rid}.csv"
        if not csv_path.is_file():
            raise DataError(f"receipt {rid}: {csv_path} not found")
        for box, text in sroie_boxes(csv_path):
            if box[2] > box[0] and box[3] > box[1]:
                examples.append(OCRExample(str(root / "img" / f"{rid}.jpg"), text, box=box, group=rid))
    return examples


def _load_sroie_keys(root: Path, cfg: OCRTaskConfig) -> list[OCRExample]:
    examples = []
    for rid in _sroie_receipts(root):
        key_path = root / "key" / f"{rid}.json"
        if not key_path.is_file():
            raise DataError(f"receipt {rid}: {key_path} not found")
        try:
            fields = json.loads(_read_text(key_path))
        except json.JSONDecodeError as err:
            raise DataError(f"{key_path}: not JSON: {err}") from err
        answer = {name: str(fields.get(name, "")) for name in cfg.sroie_fields}
        examples.append(OCRExample(str(root / "img" / f"{rid}.jpg"), json.dumps(answer, ensure_ascii=False), group=rid))
    return examples


SOURCES.add("folder", Source(_load_folder, "Transcribe the text in this image.", "dir"))
SOURCES.add("manifest", Source(_load_manifest, "Transcribe the text in this image.", "file"))
SOURCES.add("sroie_lines", Source(_load_sroie_lines, "Transcribe the text in this image.", "dir"))
SOURCES.add("sroie_keys", Source(
    _load_sroie_keys,
    "Extract the company, date, address and total of this receipt as a JSON object.",
    "dir",
))


# --------------------------------------------------------------------------------------------------
# Prompts and text normalisation
# --------------------------------------------------------------------------------------------------


def _olmocr_prompt(builder: str) -> Callable[[OCRTaskConfig], str]:
    def build(cfg: OCRTaskConfig) -> str:
        try:
            from olmocr import prompts
        except ImportError as err:
            raise DataError(
                f"task.prompt_style={cfg.prompt_style!r} needs olmocr: pip install --no-deps olmocr==0.4.27"
            ) from err
        return getattr(prompts, builder)()

    return build


PROMPT_STYLES: Registry[Callable[[OCRTaskConfig], str]] = Registry("task.prompt_style")
PROMPT_STYLES.add("instruction", lambda cfg: cfg.prompt or SOURCES.get(cfg.format).default_prompt)
PROMPT_STYLES.add("olmocr_v4", _olmocr_prompt("build_no_anchoring_v4_yaml_prompt"))  # olmOCR 2 (v4) training
PROMPT_STYLES.add("olmocr_yaml", _olmocr_prompt("build_no_anchoring_yaml_prompt"))


def olmocr_bench_normalize(text: str) -> str:
    """olmOCR-bench's ``normalize_text`` (olmocr 0.4.27, bench/tests.py), ported: that module imports
    bs4, fuzzysearch and playwright at load time, which farlab does not install."""
    text = re.sub(r"<br/?>", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\*\*(.*?)\*\*", r"\1", text)
    text = re.sub(r"__(.*?)__", r"\1", text)
    text = re.sub(r"</?b>", "", text)
    text = re.sub(r"</?i>", "", text)
    text = re.sub(r"\*(.*?)\*", r"\1", text)
    text = re.sub(r"_(.*?)_", r"\1", text)
    text = unicodedata.normalize("NFC", text)
    for fancy, plain in {"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_", "–": "-",
                         "—": "-", "‑": "-", "‒": "-", "−": "-", "\u00b5": "\u03bc"}.items():
        text = text.replace(fancy, plain)
    return text.strip()


NORMALIZERS: Registry[Callable[[str], str]] = Registry("task.normalize")
NORMALIZERS.add("none", lambda text: text)
NORMALIZERS.add("whitespace", lambda text: " ".join(text.split()))
NORMALIZERS.add("olmocr_bench", olmocr_bench_normalize)


# --------------------------------------------------------------------------------------------------
# Images and collators
# --------------------------------------------------------------------------------------------------


def load_image(path: str, box: Any, max_side: int, max_aspect: float) -> Image.Image:
    """RGB image, cropped to ``box``, longest side <= ``max_side``, aspect ratio <= ``max_aspect`` (padded)."""
    try:
        with Image.open(path) as raw:
            image = raw.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image {path} not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"image {path} cannot be read: {err}") from err
    if box is not None:
        image = image.crop(tuple(box))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    width, height = image.size
    if max(width, height) > max_aspect * min(width, height):
        short = int(max(width, height) / max_aspect) + 1
        pad_w, pad_h = max(short - width, 0), max(short - height, 0)
        image = ImageOps.expand(image, (0, 0, pad_w, pad_h), fill="white")
    return image


class VisionPromptEncoder:
    """Runs the processor on (image, instruction): the chat prompt's token ids and its image tensors."""

    def __init__(self, processor: Any, cfg: OCRTaskConfig, default_prompt: str) -> None:
        self.processor, self.cfg, self.default_prompt = processor, cfg, default_prompt
        self.tokenizer = processor.tokenizer
        self._chat: dict[str, str] = {}

    def chat_text(self, instruction: str) -> str:
        if instruction not in self._chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            self._chat[instruction] = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return self._chat[instruction]

    def prompt(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = load_image(row["image"], row.get("box"), self.cfg.max_image_side, self.cfg.max_aspect_ratio)
        text = self.chat_text(row.get("prompt") or self.default_prompt)
        return dict(self.processor(text=[text], images=[image], return_tensors="pt"))

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


def _pad(rows: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)

    def pad(row: torch.Tensor) -> torch.Tensor:
        fill = row.new_full((width - len(row),), value)
        return torch.cat([fill, row] if left else [row, fill])

    return torch.stack([pad(r) for r in rows])


def _split_encoding(enc: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A one-prompt processor output -> (per-token 1-D tensors, per-image tensors)."""
    shape = enc["input_ids"].shape
    tokens = {k: v[0] for k, v in enc.items() if v.shape == shape}
    return tokens, {k: v for k, v in enc.items() if k not in tokens}


def _collate(encoded: list[dict[str, torch.Tensor]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad per-token tensors (input_ids, attention_mask, labels, mm_token_type_ids, ...); concatenate
    per-image ones (pixel_values are [patches, dim] rows, image_grid_thw one row per image)."""
    fill = {"input_ids": pad_id, "labels": -100}
    batch = {}
    for key in encoded[0]:
        values = [e[key] for e in encoded]
        per_token = all(v.dim() == 1 and len(v) == len(e["input_ids"]) for v, e in zip(values, encoded))
        batch[key] = _pad(values, fill.get(key, 0), left) if per_token else torch.cat(values)
    return batch


class VisionLMCollator:
    """Training batches: prompt (with image tokens) + answer + eos, labels -100 except on the answer."""

    def __init__(self, encoder: VisionPromptEncoder) -> None:
        self.encoder = encoder
        self.pad_id = encoder.tokenizer.pad_token_id

    def example(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        tokens, images = _split_encoding(self.encoder.prompt(row))
        prompt_ids = tokens.pop("input_ids")
        limit = self.encoder.cfg.max_length
        if len(prompt_ids) >= limit:
            raise DataError(
                f"image {row['image']} gives a {len(prompt_ids)}-token prompt, over task.max_length={limit}; "
                "raise task.max_length or lower task.max_image_side"
            )
        answer_ids = self.encoder.answer_ids(row["text"])[: limit - len(prompt_ids)]
        answer = torch.tensor(answer_ids, dtype=prompt_ids.dtype)
        out = {
            "input_ids": torch.cat([prompt_ids, answer]),
            "labels": torch.cat([torch.full_like(prompt_ids, -100), answer]),
        }
        for key, value in tokens.items():  # attention_mask, mm_token_type_ids (answer tokens are text: 0)
            out[key] = torch.cat([value, value.new_full((len(answer),), 1 if key == "attention_mask" else 0)])
        return {**out, **images}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return _collate([self.example(r) for r in rows], self.pad_id, left=False)


class VisionPromptCollator:
    """Generation batches: the prompt only, left-padded, with the image tensors."""

    def __init__(self, encoder: VisionPromptEncoder) -> None:
        self.encoder = encoder
        self.pad_id = encoder.tokenizer.pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [_split_encoding(self.encoder.prompt(r)) for r in rows]
        return _collate([{**tokens, **images} for tokens, images in encoded], self.pad_id, left=True)


# --------------------------------------------------------------------------------------------------
# The handler
# --------------------------------------------------------------------------------------------------


class OCRHandler:
    def validate(self, task_cfg: DictConfig) -> None:
        cfg = typed_config(OCRTaskConfig, task_cfg)
        if cfg.format not in SOURCES:
            raise DataError(unknown_choice_message("task.format", cfg.format, SOURCES.names()))
        source = SOURCES.get(cfg.format)
        for registry, value, label in (
            (PROMPT_STYLES, cfg.prompt_style, "task.prompt_style"),
            (NORMALIZERS, cfg.normalize, "task.normalize"),
            (FRONT_MATTER, cfg.front_matter, "task.front_matter"),
        ):
            if value not in registry:
                raise DataError(unknown_choice_message(label, value, registry.names()))
        check_eval_settings(cfg.metrics, cfg.primary_metric, cfg.eval_split)
        if not 0 <= cfg.validation_fraction < 1 or not 0 <= cfg.test_fraction < 1:
            raise DataError("task.validation_fraction and task.test_fraction must be in [0, 1)")
        if cfg.max_image_side < 16 or cfg.max_aspect_ratio < 1:
            raise DataError(f"task.max_image_side={cfg.max_image_side} must be >= 16, task.max_aspect_ratio >= 1")
        if cfg.train_path is None:
            raise DataError(f"task {cfg.name!r}: set task.train_path (a {source.path_kind} in format {cfg.format!r})")
        for role in ("train_path", "test_path"):
            path = getattr(cfg, role)
            if path is None:
                continue
            ok = Path(path).is_dir() if source.path_kind == "dir" else Path(path).is_file()
            if not ok:
                kind = "folder" if source.path_kind == "dir" else "file"
                raise DataError(f"task.{role}={path!r} is not a {kind} (task.format={cfg.format!r})")
        PROMPT_STYLES.get(cfg.prompt_style)(cfg)  # fails now if olmocr is needed and missing

    def rl_data(self, task_cfg: DictConfig, processor: Any, seed: int) -> tuple[TaskData, datasets.Dataset]:
        """For RL (farlab.rl): the task data as built for SFT/KD, and the train split as image prompts."""
        data = self.build(task_cfg, processor, seed)
        return data, rl_prompts(data, typed_config(OCRTaskConfig, task_cfg), processor)

    def build(self, task_cfg: DictConfig, processor: Any, seed: int) -> TaskData:
        cfg = typed_config(OCRTaskConfig, task_cfg)
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise DataError(
                f"task {cfg.name!r} (family ocr) needs a vision-language processor, got {type(processor).__name__}; "
                "use a model config with a `processor` (e.g. model=tiny_qwen_vl or model=qwen3vl_4b_2b)"
            )
        tokenizer = processor.tokenizer
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise DataError("the processor's tokenizer needs eos and pad tokens")
        splits, dropped = load_splits(cfg, seed)
        train = _limit(splits["train"], cfg.train_limit)
        evaluation = _limit(splits[cfg.eval_split], cfg.eval_limit)
        if not train or not evaluation:
            raise DataError(
                f"task {cfg.name!r}: empty split after dropping {dropped} examples with empty text "
                f"(train {len(train)}, {cfg.eval_split} {len(evaluation)}); check task.train_path/test_path, "
                "task.validation_fraction/test_fraction and the limits"
            )
        if cfg.check_images:
            check_images(train + evaluation)
        encoder = VisionPromptEncoder(processor, cfg, PROMPT_STYLES.get(cfg.prompt_style)(cfg))
        return TaskData(
            name=cfg.name,
            kind="vision_lm",
            train=datasets.Dataset.from_list([_row(e) for e in train]),
            eval=datasets.Dataset.from_list([{**_row(e), "reference": e.text} for e in evaluation]),
            collator=VisionLMCollator(encoder),
            label_names=[],
            **metric_fields(cfg),
            eval_split_name=cfg.eval_split,
            tokenizer=processor,
            generation=cfg.generation,
            prompt_collator=VisionPromptCollator(encoder),
            normalize=NORMALIZERS.get(cfg.normalize),
            info={"dropped_empty_text": dropped, "split_sizes": {k: len(v) for k, v in splits.items()}},
        )


def rl_prompts(data: TaskData, cfg: OCRTaskConfig, processor: Any) -> datasets.Dataset:
    """The train split as RL prompts in TRL's vision form: a one-turn chat with the instruction (TRL puts the
    ``image`` column in front of it, as :class:`VisionPromptEncoder` does) and the ``reference`` transcript.
    Images are loaded (cropped, resized) up front: fine for line and page sets of this size, not for 270k pages."""
    default = PROMPT_STYLES.get(cfg.prompt_style)(cfg)
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": row["prompt"] or default}],
         "image": load_image(row["image"], row["box"], cfg.max_image_side, cfg.max_aspect_ratio),
         "reference": row["text"]}
        for row in data.train
    ])


def _row(e: OCRExample) -> dict[str, Any]:
    return {"image": e.image, "box": list(e.box) if e.box else None, "text": e.text, "prompt": e.prompt}


def load_splits(cfg: OCRTaskConfig, seed: int) -> tuple[dict[str, list[OCRExample]], int]:
    """train/validation/test by document (seeded); test comes from test_path when set. Returns (splits, dropped)."""
    source = SOURCES.get(cfg.format)
    loaded = source.load(Path(cfg.train_path), cfg)
    tests = source.load(Path(cfg.test_path), cfg) if cfg.test_path else []
    kept = [e for e in loaded if e.text]
    kept_tests = [e for e in tests if e.text]
    dropped = len(loaded) - len(kept) + len(tests) - len(kept_tests)
    groups = list(dict.fromkeys(e.group for e in kept))
    random.Random(seed).shuffle(groups)

    def count(fraction: float) -> int:
        return max(1, round(len(groups) * fraction)) if fraction > 0 else 0

    n_val = count(cfg.validation_fraction)
    n_test = 0 if cfg.test_path else count(cfg.test_fraction)
    role = {g: "validation" for g in groups[:n_val]}
    role.update({g: "test" for g in groups[n_val : n_val + n_test]})
    order = {g: i for i, g in enumerate(groups)}
    splits: dict[str, list[OCRExample]] = {"train": [], "validation": [], "test": []}
    for e in sorted(kept, key=lambda e: order[e.group]):  # seeded document order, file order inside one
        splits[role.get(e.group, "train")].append(e)
    if cfg.test_path:
        splits["test"] = kept_tests
    return splits, dropped


def _limit(examples: list[OCRExample], limit: int | None) -> list[OCRExample]:
    return examples if limit is None else examples[:limit]


def check_images(examples: list[OCRExample]) -> None:
    """Every image exists and decodes (header and pixels), so a bad file fails before any model loads."""
    for path in dict.fromkeys(e.image for e in examples):
        if not Path(path).is_file():
            raise DataError(f"image {path} not found")
        try:
            with Image.open(path) as image:
                image.load()
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"image {path} cannot be read: {err}") from err


from farlab.data import TASK_FAMILIES  # noqa: E402

TASK_FAMILIES.add("ocr", OCRHandler())
