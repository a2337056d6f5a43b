"""farlab's local lm-eval tasks: their data is the Europarl pairs, their scores match hand computations (a fake LM
whose log-likelihoods we choose) and a direct torch computation on a tiny Llama; the harness leaves no trace."""

from __future__ import annotations

import importlib.util
import math
import random

import lm_eval
import numpy as np
import pytest
import torch
from lm_eval.api.model import LM
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from farlab.config import REPO_ROOT, HarnessConfig
from farlab.eval.harness import LOCAL_TASKS, Harness, local_task_names, task_manager, task_scores
from tests.conftest import SHARED_DATA

LIMIT = 12
TASKS = ["farlab_europarl_mc", "farlab_europarl_fr_ppl"]


def _loaders():
    spec = importlib.util.spec_from_file_location("farlab_harness_europarl", LOCAL_TASKS / "europarl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mc_docs():
    return list(_loaders().translation_choice(str(SHARED_DATA))["test"])[:LIMIT]


@pytest.fixture(scope="module")
def fr_docs():
    return list(_loaders().french_text(str(SHARED_DATA))["test"])[:LIMIT]


def test_local_tasks_are_listed():
    assert {"farlab_europarl_mc", "farlab_europarl_fr_ppl", "farlab_local"} <= set(local_task_names())


def test_mc_items_pair_each_english_line_with_its_french_line(mc_docs):
    en, fr = ((SHARED_DATA / "europarl_en_fr" / f"europarl-v7.fr-en.first3000.{lang}").read_text(encoding="utf-8")
              .split("\n") for lang in ("en", "fr"))
    aligned = {e.strip(): f.strip() for e, f in zip(en, fr) if e.strip() and f.strip()}
    full = list(_loaders().translation_choice(str(SHARED_DATA))["test"])
    assert len(full) == 200
    for doc in full:
        assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
        assert doc["choices"][doc["label"]] == aligned[doc["source"]]
    assert len({doc["label"] for doc in full}) == 4  # the gold is not always in one place


class LengthLM(LM):
    """Log-likelihoods we choose: a continuation scores its length in characters; a rolled text -len(text) * ln 2."""

    def loglikelihood(self, requests):
        return [(float(len(req.args[1])), False) for req in requests]

    def loglikelihood_rolling(self, requests):
        return [-len(req.args[0]) * math.log(2) for req in requests]

    def generate_until(self, requests):
        raise NotImplementedError


def test_scores_match_a_hand_computation(mc_docs, fr_docs):
    results = lm_eval.simple_evaluate(model=LengthLM(), tasks=TASKS, limit=LIMIT, bootstrap_iters=0,
                                      task_manager=task_manager(HarnessConfig(), str(SHARED_DATA)), log_samples=False)
    mc, ppl = task_scores(results, "farlab_europarl_mc"), task_scores(results, "farlab_europarl_fr_ppl")
    # acc: the longest choice (" " + choice: the delimiter adds the same 1 to all) is picked.
    assert mc["acc"] == pytest.approx(np.mean([np.argmax([len(c) for c in d["choices"]]) == d["label"]
                                               for d in mc_docs]))
    # acc_norm: (len + 1) / len differs per choice; the shortest choice has the largest ratio.
    assert mc["acc_norm"] == pytest.approx(np.mean([np.argmax([(len(c) + 1) / len(c) for c in d["choices"]])
                                                    == d["label"] for d in mc_docs]))
    assert mc["n"] == LIMIT
    # bits per byte = -sum(loglik) / (sum(bytes) ln 2) = sum(chars) / sum(bytes)
    chars = sum(len(d["text"]) for d in fr_docs)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in fr_docs)
    words = sum(len(d["text"].split()) for d in fr_docs)
    assert ppl["bits_per_byte"] == pytest.approx(chars / n_bytes)
    assert ppl["word_perplexity"] == pytest.approx(math.exp(chars * math.log(2) / words))


def _tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()


def _logprob(model, ids, start):
    """Sum of log p(ids[t] | ids[:t]) for t >= start, straight from the logits."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_hf_model_scores_match_direct_loglikelihoods(mc_docs, fr_docs):
    tok = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    model = _tiny_llama().train()  # the harness must hand it back in training mode
    random.seed(7)
    torch.manual_seed(7)
    before = random.random(), torch.rand(1)
    random.seed(7)
    torch.manual_seed(7)
    harness = Harness(HarnessConfig(tasks=TASKS, limit=LIMIT, batch_size=4), tok, str(SHARED_DATA))
    scores = harness.evaluate({"student": model}, "pre")["student"]
    assert (random.random(), torch.rand(1)) == before  # lm-eval's seeding did not leak into the run
    assert model.training
    model.eval()

    # Multiple choice, as lm-eval frames it: context = prompt, continuation = " " + choice, tokenizer defaults.
    acc, acc_norm = [], []
    for doc in mc_docs:
        prompt = f"Translate English to French.\nEnglish: {doc['source']}\nFrench:"
        n_ctx = len(tok(prompt).input_ids)
        lls = np.array([_logprob(model, tok(prompt + " " + c).input_ids, n_ctx) for c in doc["choices"]])
        acc.append(np.argmax(lls) == doc["label"])
        acc_norm.append(np.argmax(lls / np.array([len(c) for c in doc["choices"]])) == doc["label"])
    assert scores["farlab_europarl_mc"]["acc"] == pytest.approx(np.mean(acc))
    assert scores["farlab_europarl_mc"]["acc_norm"] == pytest.approx(np.mean(acc_norm))

    # Rolling log-likelihood: lm-eval prefixes the prefix token (BOS) to the tokenizer's encoding, which for this
    # tokenizer starts with BOS itself, so log p(BOS | BOS) is part of the sum (as in lm-eval for Llama tokenizers).
    total = sum(_logprob(model, [tok.bos_token_id, *tok(d["text"]).input_ids], 1) for d in fr_docs)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in fr_docs)
    assert scores["farlab_europarl_fr_ppl"]["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2),
                                                                               rel=1e-4)
