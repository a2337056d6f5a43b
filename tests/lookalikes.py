"""Tiny local look-alikes of the seed pairs' hub models: same architecture classes, tokenizer behaviour and
special tokens, tiny sizes, built from configs (no hub). A seed pair's YAML pointed at these folders must build,
so a typo or a missing field in it fails CI without the real weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from farlab.config import PACKAGE_ROOT

TINY_BPE = PACKAGE_ROOT / "assets" / "tiny_bpe_enfr" / "tokenizer.json"
TINY_WORDPIECE = PACKAGE_ROOT / "assets" / "tiny_wordpiece"

# Llama 3's special tokens (its tokenizer has no pad token) and a shortened copy of its chat template.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|finetune_right_pad_id|>"]  # Llama 3.1+ reserves this one for padding, but sets no pad token
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def llama3_tokenizer(out: Path) -> Path:
    """Byte-level BPE (the tiny Europarl one) dressed as Llama 3: ``<|begin_of_text|>`` prepended, eos
    ``<|end_of_text|>``, the header/eot specials after the BPE vocabulary, a chat template, and no pad token."""
    spec = json.loads(TINY_BPE.read_text())
    vocab = spec["model"]["vocab"]
    spec["added_tokens"] = [
        {"id": len(vocab) + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(LLAMA3_SPECIALS)]
    bos = LLAMA3_SPECIALS[0]
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {bos: {"id": bos, "ids": [len(vocab)], "tokens": [bos]}},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token=bos,
                                        eos_token="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE)
    tokenizer.save_pretrained(out)
    return out


def tiny_llama_config(vocab_size: int, layers: int, hidden: int = 32, **extra: Any) -> dict[str, Any]:
    """Llama 3.2's config fields (llama3 rope scaling, tied embeddings, bos/eos ids) at a tiny size."""
    return {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hidden // 4,
            "max_position_embeddings": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 64},
            **extra}


def save_model(config_fields: dict[str, Any], out: Path, auto_class: Any = None) -> Path:
    """A randomly initialised model of ``config_fields`` written as a pretrained folder."""
    from transformers import AutoConfig, AutoModel

    fields = dict(config_fields)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    (auto_class or AutoModel).from_config(config).save_pretrained(out)
    return out


def mpnet_tokenizer(out: Path) -> Path:
    """all-mpnet-base-v2's tokenizer behaviour: MPNet's specials (<s>=0 as CLS, <pad>=1, </s>=2 as SEP, <unk>=3)
    before BERT-style word pieces (ids shifted by 4; here the tiny GLUE WordPiece's), [UNK] for unknown pieces,
    <mask> last, lower-casing."""
    from transformers import MPNetTokenizerFast

    spec = json.loads((TINY_WORDPIECE / "tokenizer.json").read_text())
    pieces = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *pieces, "<mask>"]
    MPNetTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(out)
    return out
