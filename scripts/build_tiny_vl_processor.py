"""Build the tiny Qwen3-VL-style processor shipped in farlab/assets/tiny_qwen_vl_processor.

Tiny vision-language test models (conf/model/tiny_qwen_vl.yaml) need a processor that no test has to
download: the byte-level BPE tokenizer already shipped for the tiny decoder-only models
(farlab/assets/tiny_bpe_enfr, trained on Europarl) plus Qwen's chat/vision special tokens and a
Qwen-style chat template with an image entry, and a PIL Qwen2-VL image processor (16-px patches,
2x2 merge, as Qwen3-VL) capped at a few dozen image tokens. Rerun to regenerate:
    python scripts/build_tiny_vl_processor.py
The special-token ids printed at the end must match conf/model/tiny_qwen_vl.yaml.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from farlab.models.vision import ImageOnlyQwen3VLProcessor

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "farlab" / "assets" / "tiny_bpe_enfr" / "tokenizer.json"
OUT = ROOT / "farlab" / "assets" / "tiny_qwen_vl_processor"
# Appended in this order after the 1,024 BPE tokens: ids 1024..1030.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
# Qwen's chat format without the default system turn (saves tokens in tiny runs).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def main() -> None:
    raw = Tokenizer.from_file(str(SOURCE))
    raw.post_processor = None  # Qwen tokenizers add no BOS
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=32 * 32, max_pixels=256 * 256,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    OUT.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(OUT)
    size = sum(f.stat().st_size for f in OUT.iterdir())
    ids = dict(zip(SPECIALS, tokenizer.convert_tokens_to_ids(SPECIALS)))
    print(f"saved a {len(tokenizer)}-token processor to {OUT} ({size / 1024:.0f} KiB); special ids: {ids}")


if __name__ == "__main__":
    main()
