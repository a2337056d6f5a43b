"""Train the small WordPiece tokenizer shipped in farlab/assets/tiny_wordpiece.

Tiny test and demo models use it so no test touches a hub. It is trained on the shipped CoLA and
SST-2 training sentences (lower-cased, BERT-style special tokens). Rerun to regenerate:
    python scripts/train_tiny_tokenizer.py [--vocab-size 2000]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "farlab" / "assets" / "tiny_wordpiece"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences() -> list[str]:
    csv.field_size_limit(sys.maxsize)
    with open(DATA / "cola" / "train.tsv", encoding="utf-8") as f:
        cola = [row[3] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        sst2 = [row[0] for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:20001]]
    return cola + sst2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(sentences(), trainers.WordPieceTrainer(vocab_size=args.vocab_size, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"saved a {len(fast)}-token tokenizer to {OUT}")


if __name__ == "__main__":
    main()
