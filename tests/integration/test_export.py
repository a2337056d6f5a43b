"""python -m farlab.export on real tiny run dirs made by real training runs (trained once per module).

The numbers in parity.json are checked against what the run itself wrote (metrics.json, computed by the training
eval loop) and against onnxruntime / gguf.GGUFReader called here directly; refusals must leave the run dir as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from farlab.export.cli import export, main
from farlab.export.gguf import unpermute
from farlab.export.source import ExportError
from tests.conftest import train_runs

RUNS = {
    "cls": {"loss": "ce"},  # tiny BERT on CoLA
    "llama": {"loss": "ce", "task": "europarl_en_fr", "model": "tiny_llama", "task.train_limit": 48,
              "task.eval_limit": 6, "task.generation.max_new_tokens": 6, "task.max_length": 96},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("export_runs"), RUNS, **{"train.keep_checkpoints": "none"})


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder of the run dir with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export"))
    return dst


def test_provenance_traces_the_file_to_its_run(runs):
    out = export(runs["llama"], "gguf")["out_dir"]
    prov = json.loads((out / "provenance.json").read_text())
    run_metrics = json.loads((runs["llama"] / "metrics.json").read_text())
    assert prov["source"]["run_dir"] == str(runs["llama"].resolve())
    assert prov["source"]["post_student_metrics"] == run_metrics["post"]["student"]
    assert prov["file_sha256"] == hashlib.sha256((out / "model.gguf").read_bytes()).hexdigest()
    assert prov["file_bytes"] == (out / "model.gguf").stat().st_size
    assert (out / "config.yaml").read_bytes() == (runs["llama"] / "config.yaml").read_bytes()
    assert prov["source"]["config_yaml_sha256"] == hashlib.sha256((out / "config.yaml").read_bytes()).hexdigest()
    assert prov["exporter"]["packages"]["gguf"] == metadata.version("gguf")
    assert (out / "COMPLETE").is_file()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gguf_round_trip_read_back_independently(runs, dtype, tmp_path):
    run = copy_run(runs["llama"], tmp_path / "run")
    result = export(run, "gguf", dtype=dtype)
    assert result["parity"]["passed"], result["parity"]
    reader = gguf.GGUFReader(str(result["out_dir"] / "model.gguf"))
    field = lambda key: reader.fields[key].contents()
    assert field("general.architecture") == "llama"
    assert (field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length"),
            field("llama.attention.head_count"), field("llama.attention.head_count_kv"),
            field("llama.context_length"), field("llama.rope.dimension_count")) == (2, 32, 64, 2, 1, 256, 16)
    assert field("llama.rope.freq_base") == 10000.0 and np.isclose(field("llama.attention.layer_norm_rms_epsilon"),
                                                                    1e-6)
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.tokens") == tokenizer.convert_ids_to_tokens(list(range(1024)))
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == 2
    assert field("tokenizer.ggml.merges")[0] == "o n"  # tokenizer.json's first merge, ["o", "n"]

    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    assert set(tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(2) for name in per_block}
    hf = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    want = np.float16 if dtype == "float16" else np.float32
    assert tensors["blk.1.attn_v.weight"].dtype == want and tensors["blk.1.attn_norm.weight"].dtype == np.float32
    np.testing.assert_array_equal(tensors["blk.1.ffn_down.weight"], hf["model.layers.1.mlp.down_proj.weight"].numpy()
                                  .astype(want))
    np.testing.assert_array_equal(unpermute(tensors["blk.0.attn_k.weight"], 1),  # one key/value head
                                  hf["model.layers.0.self_attn.k_proj.weight"].numpy().astype(want))
    assert not np.array_equal(tensors["blk.0.attn_q.weight"], hf["model.layers.0.self_attn.q_proj.weight"].numpy()
                              .astype(want))  # permuted for llama.cpp's rope layout


def test_refusals_name_the_problem_and_touch_nothing(runs, tmp_path, capsys):
    run = copy_run(runs["cls"], tmp_path / "cls")
    before = snapshot(run)
    with pytest.raises(ExportError, match="GGUF export supports Llama-family.*this student is 'bert'"):
        export(run, "gguf")
    with pytest.raises(ExportError, match="unknown export format 'onxx'.*did you mean 'onnx'"):
        export(run, "onxx")
    with pytest.raises(ExportError, match="unknown dtype 'float16' for --format onnx; valid: float32"):
        export(run, "onnx", dtype="float16")
    assert main([str(run), "--format", "gguf"]) == 2
    assert "this student is 'bert'" in capsys.readouterr().err
    assert snapshot(run) == before

    meta = json.loads((run / "run_metadata.json").read_text())
    (run / "run_metadata.json").write_text(json.dumps({**meta, "status": "running"}))
    before = snapshot(run)
    with pytest.raises(ExportError, match="status 'running', not 'completed'"):
        export(run, "onnx")
    assert snapshot(run) == before

    (run / "run_metadata.json").write_text(json.dumps(meta))
    shutil.rmtree(run / "final")
    before = snapshot(run)
    with pytest.raises(ExportError, match="has no final/"):
        export(run, "onnx")
    assert snapshot(run) == before


@pytest.mark.slow
def test_onnx_classifier_parity_matches_the_runs_own_metrics(runs, tmp_path):
    run = copy_run(runs["cls"], tmp_path / "cls")
    before = snapshot(run)
    result = export(run, "onnx", latency_rows=4)
    parity = result["parity"]
    assert parity["passed"] and parity["metric_equal"] and parity["argmax_disagreements"] == 0
    assert parity["max_abs_logit_diff"] <= parity["tolerance"] == 1e-4
    assert parity["rows"] == 48  # task.eval_limit
    run_post = json.loads((run / "metrics.json").read_text())["post"]["student"]
    assert parity["metric_pytorch"] == {"mcc": run_post["mcc"], "accuracy": run_post["accuracy"]}
    assert set(parity["latency"]) >= {"pytorch_ms_per_example", "onnxruntime_ms_per_example"}
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("export")} == before

    # The graph has dynamic batch and length: a batch shaped unlike the export's example, run here directly.
    sess = ort.InferenceSession(str(result["out_dir"] / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    enc = tokenizer(["the cat sat on the mat .", "no", "a much longer sentence than the other two ones here ."],
                    padding=True, return_tensors="np")
    got = sess.run(["logits"], {k: enc[k].astype(np.int64) for k in parity["inputs"]})[0]
    model = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    with torch.no_grad():
        want = model(**{k: torch.tensor(enc[k]) for k in parity["inputs"]}).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)

    reused = export(run, "onnx")  # a second export reuses the published folder
    assert reused["reused"] and reused["parity"] == parity


@pytest.mark.slow
def test_onnx_causal_lm_generates_what_pytorch_generates(runs, tmp_path):
    run = copy_run(runs["llama"], tmp_path / "llama")
    parity = export(run, "onnx", rows=4)["parity"]
    assert parity["passed"] and parity["rows"] == 4 and parity["inputs"] == ["input_ids", "attention_mask"]
    assert parity["identical_generations"] == 4 and parity["next_token_agreement"] == 1.0
    ours, theirs = parity["metric_pytorch"], parity["metric_onnx"]
    assert set(theirs) == {"bleu", "chrf", "perplexity"} and parity["metric_equal"]
    assert (theirs["bleu"], theirs["chrf"]) == (ours["bleu"], ours["chrf"])  # the same generations
    assert theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-6) and ours["perplexity"] > 1

    sess = ort.InferenceSession(str(run / "export" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    ids = torch.randint(3, 1024, (3, 23))
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    got = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 23), dtype=np.int64)})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
