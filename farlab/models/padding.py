"""``model.pad_token``: a pad token for tokenizers that ship without one (Llama 3), and the embedding resize
a *new* token needs on both sides of the pair.

``eos`` pads with the end-of-sequence token (no new id: nothing to resize). Any other value is a token string:
reused when the vocabulary has it, otherwise added as a special token; then the teacher and the student both grow
their embeddings (and LM heads) to ``len(tokenizer)`` rows, so their logits keep the same width. The new rows are drawn
around the mean of the old ones (``resize_token_embeddings``'s mean resizing); padding positions are masked out of every
loss (attention mask 0, labels -100), so a frozen teacher never needs to have learned them.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedModel

from farlab.errors import ConfigError

log = logging.getLogger(__name__)
EOS = "eos"


def text_tokenizer(tokenizer: Any) -> Any:
    return getattr(tokenizer, "tokenizer", tokenizer)  # a processor's text half


def set_pad_token(tokenizer: Any, pad_token: str | None) -> Any:
    """Apply ``model.pad_token`` to a loaded tokenizer (or processor); None leaves the tokenizer's own."""
    if pad_token is None:
        return tokenizer
    text = text_tokenizer(tokenizer)
    if pad_token == EOS:
        if text.eos_token is None:
            raise ConfigError("model.pad_token=eos, but the tokenizer has no eos token; name a new token instead, "
                              "e.g. model.pad_token='<|pad|>'")
        text.pad_token = text.eos_token
    elif pad_token in text.get_vocab():
        text.pad_token = pad_token
    else:
        before = len(text)
        text.add_special_tokens({"pad_token": pad_token})
        log.info("added pad token %r to the tokenizer (id %d; %d -> %d tokens)", pad_token, text.pad_token_id,
                 before, len(text))
    return tokenizer


def pad_token_problems(pad_token: str | None) -> list[str]:
    if pad_token is not None and not str(pad_token).strip():
        return [f"model.pad_token={pad_token!r}: use null (the tokenizer's own), 'eos', or a token such as '<|pad|>'"]
    return []


def fit_pad_token(model: PreTrainedModel, tokenizer: Any, pad_token: str | None) -> None:
    """Resize ``model`` for a pad token :func:`set_pad_token` added, and record the pad id in its config.

    Only the added pad token may lie beyond the embedding rows: any other mismatch is left for
    :func:`farlab.models.loading.check_vocab` to refuse (a frozen model cannot learn other new tokens).
    """
    if pad_token is None:
        return
    text = text_tokenizer(tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    if text.pad_token_id is not None and text.pad_token_id >= rows and len(text) == text.pad_token_id + 1 == rows + 1:
        model.resize_token_embeddings(len(text))
        log.info("resized %s embeddings %d -> %d rows for the added pad token %r", type(model).__name__, rows,
                 len(text), text.pad_token)
    model.config.pad_token_id = text.pad_token_id  # sequence-classification heads find the last real token by it
    model.config.get_text_config().pad_token_id = text.pad_token_id
