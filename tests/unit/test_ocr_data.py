"""OCR task family: shipped data formats, the generic folder/manifest formats, bad input, answer-only labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from farlab.config import REPO_ROOT
from farlab.data import build_task_data, validate_task_config
from farlab.data.base import DataError
from farlab.data.ocr import OCRTaskConfig, load_splits, sroie_boxes
from farlab.models.vision import load_processor
from tests.conftest import SHARED_DATA

PROCESSOR_DIR = REPO_ROOT / "farlab" / "assets" / "tiny_qwen_vl_processor"
UW3 = SHARED_DATA / "ocr_uw3_lines"
SROIE = SHARED_DATA / "ocr_sroie_receipts"


@pytest.fixture(scope="module")
def processor():
    return load_processor(PROCESSOR_DIR)


def task(**fields) -> OmegaConf:
    base = {"name": "ocr_test", "family": "ocr", "max_image_side": 96, "check_images": True}
    base.update(fields)
    return OmegaConf.create(base)


def uw3(**fields) -> OmegaConf:
    base = {"format": "folder", "train_path": str(UW3 / "train"), "test_path": str(UW3 / "test"),
            "image_suffixes": [".bin.png"], "text_suffix": ".gt.txt", "validation_fraction": 0.0, "eval_split": "test"}
    return task(**{**base, **fields})


def write_image(path: Path, size=(60, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


# ---- shipped data -----------------------------------------------------------------------------------


def test_sroie_transcripts_keep_their_commas():
    """A SROIE line is x1..y4 + transcript; the transcript's own commas survive (split on the first 8 only)."""
    rows = sroie_boxes(SROIE / "box" / "000.csv")
    assert len(rows) == 44
    box, text = rows[3]  # 110,144,383,144,383,163,110,163,NO.53 55,57 & 59, JALAN SAGU 18,
    assert text == "NO.53 55,57 & 59, JALAN SAGU 18,"
    assert box == (110, 144, 383, 163)


def test_uw3_has_50_train_and_20_test_lines():
    splits, dropped = load_splits(OCRTaskConfig(**uw3()), seed=0)
    assert (len(splits["train"]), len(splits["test"]), len(splits["validation"]), dropped) == (50, 20, 0, 0)
    first = splits["test"][0]
    assert first.image.endswith(".bin.png")
    assert first.text == Path(first.image.replace(".bin.png", ".gt.txt")).read_text().strip()


def test_uw3_seeded_validation_split_is_carved_from_train():
    cfg = OCRTaskConfig(**uw3(validation_fraction=0.2, eval_split="validation"))
    a, _ = load_splits(cfg, seed=1)
    b, _ = load_splits(cfg, seed=1)
    assert (len(a["train"]), len(a["validation"])) == (40, 10)
    assert [e.image for e in a["validation"]] == [e.image for e in b["validation"]]
    assert not {e.image for e in a["validation"]} & {e.image for e in a["train"]}


def test_sroie_splits_by_receipt_and_keys_answer_json():
    lines, _ = load_splits(OCRTaskConfig(**task(format="sroie_lines", train_path=str(SROIE))), seed=0)
    receipts = {split: {e.group for e in rows} for split, rows in lines.items()}
    assert receipts["validation"] and receipts["test"] and not receipts["train"] & receipts["validation"]
    assert sum(len(rows) for rows in lines.values()) == 2301  # every shipped box has a transcript
    keys, _ = load_splits(OCRTaskConfig(**task(format="sroie_keys", train_path=str(SROIE))), seed=0)
    answer = json.loads(next(e for rows in keys.values() for e in rows if e.group == "000").text)
    assert answer["company"] == "BOOK TA .K (TAMAN DAYA) SDN BHD" and answer["total"] == "9.00"


# ---- generic formats --------------------------------------------------------------------------------


def test_folder_format_pairs_images_with_sidecar_text(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"p{i}.png")
        (tmp_path / f"p{i}.md").write_text(f"---\nprimary_language: en\n---\nPage {i}\n")
    cfg = OCRTaskConfig(**task(train_path=str(tmp_path), text_suffix=".md", front_matter="strip",
                               validation_fraction=0.25, test_fraction=0.25))
    splits, _ = load_splits(cfg, seed=0)
    assert sorted(e.text for rows in splits.values() for e in rows) == [f"Page {i}" for i in range(4)]
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [2, 1, 1]


def test_manifest_format_resolves_paths_relative_to_the_manifest(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    manifest = tmp_path / "train.jsonl"
    rows = [{"image": "img/a.png", "text": "alpha"}, {"image": "img/b.png", "text": "beta", "prompt": "Read."}]
    manifest.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # blank lines are skipped
    cfg = OCRTaskConfig(**task(format="manifest", train_path=str(manifest), test_path=str(manifest),
                               validation_fraction=0.0))
    splits, _ = load_splits(cfg, seed=0)
    assert {e.image for e in splits["test"]} == {str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "b.png")}
    assert [e.prompt for e in splits["test"]] == [None, "Read."]


# ---- bad input: clear errors before training ----------------------------------------------------------


def test_manifest_row_without_text_names_the_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "text": "ok"}\n{"image": "b.png"}\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: .*'b.png'.* no \"text\""):
        load_splits(OCRTaskConfig(**task(format="manifest", train_path=str(manifest))), seed=0)


def test_missing_and_unreadable_images_fail_before_training(tmp_path, processor):
    write_image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [{"image": "ok.png", "text": "fine"}, {"image": "gone.png", "text": "lost"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = task(format="manifest", train_path=str(manifest), test_path=str(manifest), validation_fraction=0.0,
               eval_split="test")
    with pytest.raises(DataError, match=r"gone.png not found"):
        build_task_data(cfg, processor, 0)
    manifest.write_text("\n".join(json.dumps(r) for r in [rows[0], {"image": "broken.png", "text": "x"}]))
    with pytest.raises(DataError, match=r"broken.png cannot be read"):
        build_task_data(cfg, processor, 0)


def test_empty_split_after_filtering_is_refused(tmp_path, processor):
    for i in range(3):
        write_image(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("   \n")
    with pytest.raises(DataError, match=r"empty split after dropping 3 examples with empty text"):
        build_task_data(task(train_path=str(tmp_path)), processor, 0)


def test_folder_image_without_ground_truth_is_refused(tmp_path):
    write_image(tmp_path / "lonely.png")
    with pytest.raises(DataError, match=r"no ground-truth file.*lonely.txt"):
        load_splits(OCRTaskConfig(**task(train_path=str(tmp_path))), seed=0)


def test_validate_names_bad_values_and_choices(tmp_path):
    with pytest.raises(DataError, match=r"unknown task.format 'pdf'; valid: folder, manifest"):
        validate_task_config(task(format="pdf", train_path=str(tmp_path)))
    with pytest.raises(DataError, match=r"task.train_path=.* is not a folder"):
        validate_task_config(task(train_path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"set task.train_path"):
        validate_task_config(task())


def test_text_tokenizer_is_refused_with_a_hint(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    with pytest.raises(DataError, match=r"needs a vision-language processor.*model=tiny_qwen_vl"):
        build_task_data(uw3(), tokenizer, 0)


# ---- prompts and masking ------------------------------------------------------------------------------


def test_labels_cover_only_the_answer_tokens(processor):
    data = build_task_data(uw3(train_limit=3, eval_limit=2), processor, 0)
    assert data.kind == "vision_lm" and data.eval_split_name == "test"
    rows = [data.train[i] for i in range(3)]
    batch = data.collator(rows)
    tok = processor.tokenizer
    image_token = processor.image_token_id
    assert (batch["input_ids"] == image_token).any()
    for i, row in enumerate(rows):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        answer = labels[labels != -100]
        assert tok.decode(answer) == row["text"] + tok.eos_token  # answer + end of turn, nothing else
        positions = (labels != -100).nonzero().flatten()
        assert torch.equal(ids[positions], answer)  # one contiguous block after the prompt
        assert positions.max() - positions.min() + 1 == len(positions)
        assert (labels[ids == image_token] == -100).all()
        assert (batch["mm_token_type_ids"][i][positions] == 0).all()
    assert batch["pixel_values"].shape[0] == batch["image_grid_thw"].prod(-1).sum()


def test_prompt_collator_left_pads_prompts_without_answers(processor):
    data = build_task_data(uw3(eval_limit=3), processor, 0)
    batch = data.prompt_collator([data.eval[i] for i in range(3)])
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the last column
    end = processor.tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    assert (batch["input_ids"][:, -1] == end).all()  # "<|im_start|>assistant\n": generation starts here


def test_olmocr_prompt_style_uses_olmocrs_prompt(processor):
    prompts = pytest.importorskip("olmocr.prompts")
    data = build_task_data(uw3(prompt_style="olmocr_v4", train_limit=1, eval_limit=1), processor, 0)
    batch = data.prompt_collator([data.eval[0]])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert prompts.build_no_anchoring_v4_yaml_prompt() in text


def test_tiny_processor_asset_matches_the_tiny_model_config(processor):
    """The shipped processor is small and its special-token ids are the ones conf/model/tiny_qwen_vl.yaml uses."""
    assert sum(f.stat().st_size for f in PROCESSOR_DIR.iterdir()) < 1_000_000
    model = OmegaConf.load(REPO_ROOT / "conf" / "model" / "tiny_qwen_vl.yaml")
    for role in ("teacher", "student"):
        config = model[role].config
        assert config.image_token_id == processor.image_token_id
        assert config.vision_start_token_id == processor.vision_start_token_id
        assert config.vision_end_token_id == processor.vision_end_token_id
        assert config.text_config.eos_token_id == processor.tokenizer.eos_token_id
        assert config.text_config.pad_token_id == processor.tokenizer.pad_token_id
        assert config.text_config.vocab_size >= len(processor.tokenizer)
        assert config.vision_config.patch_size == processor.image_processor.patch_size
