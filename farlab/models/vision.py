"""Vision-language processors: load the model's processor, also on machines without torchvision.

Qwen3-VL's processor insists on a video processor, and every video processor in transformers needs
torchvision (which cannot be installed beside the CPU torch wheel of the test machines). OCR needs
images only, so :class:`ImageOnlyQwen3VLProcessor` is Qwen3-VL's processor minus the video half: same
chat template, same image-token expansion, same ``mm_token_type_ids``. It is used when a folder names
it (the tiny test processor) or when a Qwen3-VL folder's processor cannot load for lack of torchvision.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, ProcessorMixin
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.utils import is_torchvision_available

from farlab.registry import Registry

log = logging.getLogger(__name__)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor without a video processor (so it loads without torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        def token(name: str, default: str) -> tuple[str, int]:
            text = getattr(tokenizer, name, None) or default
            given = getattr(tokenizer, f"{name}_id", None)
            return text, given if given else tokenizer.convert_tokens_to_ids(text)

        self.image_token, self.image_token_id = token("image_token", "<|image_pad|>")
        self.video_token, self.video_token_id = token("video_token", "<|video_pad|>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.vision_start_token, self.vision_start_token_id = token("vision_start_token", "<|vision_start|>")
        self.vision_end_token, self.vision_end_token_id = token("vision_end_token", "<|vision_end|>")


# processor_class name (as saved in processor_config.json) -> the class farlab loads it with.
PROCESSOR_CLASSES: Registry[type[ProcessorMixin]] = Registry("processor class")
PROCESSOR_CLASSES.add("ImageOnlyQwen3VLProcessor", ImageOnlyQwen3VLProcessor)
# Stock processors whose video half needs torchvision -> the image-only stand-in used without it.
IMAGE_ONLY_FALLBACKS: Registry[type[ProcessorMixin]] = Registry("processor class")
IMAGE_ONLY_FALLBACKS.add("Qwen3VLProcessor", ImageOnlyQwen3VLProcessor)


def saved_processor_class(path: str | Path) -> str | None:
    """The processor_class a local folder declares (processor_config.json, then preprocessor_config.json)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        file = Path(path) / name
        if file.is_file():
            declared = json.loads(file.read_text(encoding="utf-8")).get("processor_class")
            if declared:
                return declared
    return None


def load_processor(path: str | Path) -> ProcessorMixin:
    """A folder's processor: farlab's own classes by name, else AutoProcessor (image-only without torchvision)."""
    declared = saved_processor_class(path)
    if declared in PROCESSOR_CLASSES:
        return PROCESSOR_CLASSES.get(declared).from_pretrained(path)
    if declared in IMAGE_ONLY_FALLBACKS and not is_torchvision_available():
        log.info("torchvision is not installed: loading %s from %s without its video processor", declared, path)
        return IMAGE_ONLY_FALLBACKS.get(declared).from_pretrained(path)
    return AutoProcessor.from_pretrained(path)
