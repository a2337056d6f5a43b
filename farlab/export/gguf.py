"""GGUF export of Llama-family causal LM students, with a read-back check of every tensor and metadata key.

The ``gguf`` package writes the file; tensor names come from its own HF -> GGUF table
(``gguf.get_tensor_name_map``, the one llama.cpp's converter uses), so ``model.layers.N.self_attn.q_proj`` becomes
``blk.N.attn_q`` and so on. One thing the table does not do: llama.cpp's ``llama`` graph applies RoPE to
adjacent pairs (dims 2i, 2i+1) while HF Llama rotates the two halves of each head (dims i, i + d/2), so the rows
of q_proj and k_proj are permuted within each head (:func:`permute`; k with the key/value head count). That is
the only transformation: the checks un-permute them and get HF's tensors back bit for bit (float32).

Supported: ``model_type: llama`` with default RoPE (no scaling), no attention/MLP biases, a byte-level BPE
tokenizer (``tokenizer.ggml.model = gpt2``). Everything else is refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from transformers import PretrainedConfig

from farlab.export.source import ExportError, ExportSource

MODEL_FILE = "model.gguf"
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA}  # HF model_type -> GGUF architecture
DTYPES = {"float32": (np.float32, gguf.LlamaFileType.ALL_F32), "float16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
TOKENIZER_MODEL, TOKENIZER_PRE = "gpt2", "gpt-2"  # byte-level BPE with GPT-2's split regex
SUPPORTED = ("Llama-family causal LMs (model_type 'llama', default RoPE, no biases) with a byte-level BPE "
             "tokenizer")


def check_supported(config: PretrainedConfig, final_dir: Path) -> None:
    """Refuse, before writing anything, what the llama GGUF layout cannot hold."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ExportError(f"GGUF export supports {SUPPORTED}; this student is {arch!r} "
                          f"({', '.join(config.architectures or [])}). Export it with --format onnx instead")
    if not any(name.endswith("ForCausalLM") for name in config.architectures or ["ForCausalLM"]):
        raise ExportError(f"GGUF export supports {SUPPORTED}; this student is a {config.architectures[0]}, not a "
                          "causal LM. Export it with --format onnx instead")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export writes default RoPE only; this student has rope_type={rope['rope_type']!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError("GGUF export writes Llama without biases; this student has attention_bias/mlp_bias set")
    tokenizer_json = final_dir / "tokenizer.json"
    try:
        spec = json.loads(tokenizer_json.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"GGUF export needs a fast tokenizer's {tokenizer_json}: {err}") from err
    model_type = spec.get("model", {}).get("type")
    if model_type != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers (tokenizer.ggml.model={TOKENIZER_MODEL}); "
                          f"{tokenizer_json} is a {model_type} tokenizer without a ByteLevel pre-tokenizer")


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head (rows [i, i + d/2] -> [2i, 2i+1])."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute`."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _heads_for(hf_name: str, config: PretrainedConfig) -> int | None:
    """The head count whose rows :func:`permute` reorders, or None for tensors that keep their layout."""
    if hf_name.endswith("q_proj.weight"):
        return config.num_attention_heads
    if hf_name.endswith("k_proj.weight"):
        return config.num_key_value_heads or config.num_attention_heads
    return None


def gguf_tensors(state: dict[str, Any], config: PretrainedConfig, dtype: str) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF name -> (HF name, array as written). Norms (1-D) stay float32, as llama.cpp's converter keeps them."""
    names = gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)
    out = {}
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_freq_base
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp falls back to token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {hf_name!r} has no GGUF name in the llama layout")
        array = tensor.detach().float().numpy()
        heads = _heads_for(hf_name, config)
        if heads is not None:
            array = permute(array, heads)
        out[name] = (hf_name, array.astype(DTYPES[dtype][0] if array.ndim > 1 else np.float32))
    return out


def _vocabulary(tokenizer: Any, size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with their GGUF types; ids the tokenizer lacks (a padded embedding) become unused [PADn]."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: tok.special for i, tok in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
    return tokens, [int(t) for t in types]


def metadata(config: PretrainedConfig) -> dict[str, Any]:
    """The hyperparameters llama.cpp's llama loader reads (key -> value), also compared on read-back."""
    arch = gguf.MODEL_ARCH_NAMES[ARCHITECTURES[config.model_type]]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    keys = gguf.Keys
    return {
        keys.LLM.CONTEXT_LENGTH.format(arch=arch): config.max_position_embeddings,
        keys.LLM.EMBEDDING_LENGTH.format(arch=arch): config.hidden_size,
        keys.LLM.BLOCK_COUNT.format(arch=arch): config.num_hidden_layers,
        keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): config.intermediate_size,
        keys.Attention.HEAD_COUNT.format(arch=arch): config.num_attention_heads,
        keys.Attention.HEAD_COUNT_KV.format(arch=arch): config.num_key_value_heads or config.num_attention_heads,
        keys.Attention.KEY_LENGTH.format(arch=arch): head_dim,
        keys.Attention.VALUE_LENGTH.format(arch=arch): head_dim,
        keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch): config.rms_norm_eps,
        keys.Rope.DIMENSION_COUNT.format(arch=arch): head_dim,
        keys.Rope.FREQ_BASE.format(arch=arch): rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
        keys.LLM.VOCAB_SIZE.format(arch=arch): config.vocab_size,
    }


def write(src: ExportSource, path: Path, dtype: str) -> dict[str, tuple[str, np.ndarray]]:
    """Write the GGUF file; returns the tensors as written (for the read-back check)."""
    config = src.model_config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[ARCHITECTURES[config.model_type]])
    writer.add_name(f"{src.meta.get('model')} student ({src.meta.get('task')}, loss={src.meta.get('loss')})")
    writer.add_file_type(int(DTYPES[dtype][1]))
    for key, value in metadata(config).items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    tokens, types = _vocabulary(src.tokenizer, config.vocab_size)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(src.final_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer, quiet=True)
    tensors = gguf_tensors(src.model.state_dict(), config, dtype)
    for name, (_, array) in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def round_trip(src: ExportSource, path: Path, written: dict[str, tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Read the file back with ``gguf.GGUFReader``: every tensor (name, shape, values), the q/k permutation undone
    against final/'s weights, every metadata key, and the tokenizer (tokens, merges, special ids)."""
    reader = gguf.GGUFReader(str(path))
    read = {t.name: np.asarray(t.data) for t in reader.tensors}
    state = src.model.state_dict()
    config = src.model_config
    bad_values = [n for n, (_, a) in written.items() if n not in read or read[n].shape != a.shape
                  or read[n].dtype != a.dtype or not np.array_equal(read[n], a)]
    recovered = []  # HF tensors rebuilt from the file, compared at the precision they were written in
    for name, (hf_name, _) in written.items():
        heads = _heads_for(hf_name, config)
        back = read[name] if heads is None else unpermute(read[name], heads)
        original = state[hf_name].detach().float().numpy().astype(back.dtype)
        recovered.append(np.array_equal(back, original))
    fields = reader.fields
    meta_expected = metadata(config)
    meta_bad = [k for k, v in meta_expected.items()
                if k not in fields or not np.isclose(fields[k].contents(), v, rtol=1e-7, atol=0)]
    tokens, _ = _vocabulary(src.tokenizer, config.vocab_size)
    special = gguf.SpecialVocab(src.final_dir, load_merges=True, n_vocab=config.vocab_size)
    special_keys = {typ: getattr(gguf.Keys.Tokenizer, f"{typ.upper()}_ID", None) for typ in special.special_token_ids}
    special_ok = all(key in fields and fields[key].contents() == special.special_token_ids[typ]
                     for typ, key in special_keys.items() if key is not None)
    report = {
        "check": "round trip: gguf.GGUFReader reads back every tensor, metadata key and tokenizer field",
        "architecture": fields[gguf.Keys.General.ARCHITECTURE].contents(),
        "tensors_written": len(written),
        "tensors_read": len(read),
        "tensor_names_equal": set(read) == set(written),
        "tensor_value_mismatches": bad_values,
        "hf_weights_recovered": all(recovered),
        "metadata_mismatches": meta_bad,
        "tokens_equal": fields[gguf.Keys.Tokenizer.LIST].contents() == tokens,
        "merges_equal": fields[gguf.Keys.Tokenizer.MERGES].contents() == special.merges,
        "special_token_ids": special.special_token_ids,
        "special_token_ids_equal": special_ok,
        "tokenizer_model": fields[gguf.Keys.Tokenizer.MODEL].contents(),
        "not_checked": "inference: no llama.cpp runtime here; the q/k permutation is tested against HF's RoPE "
                       "in tests/unit/test_export_gguf.py",
    }
    report["passed"] = (report["tensor_names_equal"] and not bad_values and report["hf_weights_recovered"]
                        and not meta_bad and report["tokens_equal"] and report["merges_equal"] and special_ok)
    return report
