"""Train the small byte-level BPE tokenizer shipped in farlab/assets/tiny_bpe_enfr.

Tiny decoder-only (Llama-style) test models use it for the EN-FR translation task, so no test
touches a hub. Trained on the shipped Europarl EN and FR lines. Rerun to regenerate:
    python scripts/train_tiny_bpe_tokenizer.py [--vocab-size 1024]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "europarl_en_fr"
OUT = ROOT / "farlab" / "assets" / "tiny_bpe_enfr"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    lines = []
    for suffix in ("en", "fr"):
        lines += (DATA / f"europarl-v7.fr-en.first3000.{suffix}").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"saved a {len(fast)}-token tokenizer to {OUT}")


if __name__ == "__main__":
    main()
