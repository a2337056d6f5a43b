"""Record llama-cpp-python 0.3.36 server answers for tests/unit/test_teacher_openai_text.py (run by hand).

    python -m llama_cpp.server --model <run>/export/gguf/model.gguf --n_ctx 256 --logits_all true --port 18731 &
    PYTHONPATH=. python tests/data/llama_cpp_server/record.py <run>/final http://127.0.0.1:18731/v1

Writes responses.json: for each sequence the student ids, the text prompt sent, the raw /v1/completions answer, and
the in-process PyTorch model's log-probs of every returned id (the independent reference the unit tests check).
"""

import json
import sys
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from farlab.teachers.openai_text import TextCodec

K, EXTRA = 3, 6
run, base = Path(sys.argv[1]), sys.argv[2]
tok = AutoTokenizer.from_pretrained(run)
model = AutoModelForCausalLM.from_pretrained(run).eval()
codec = TextCodec(tok, EXTRA)
texts = [("Translate English to French.\nEnglish: The session is resumed.\nFrench: La séance est reprise.", True),
         ("Madam President, on a point of order.", False)]
out = []
for text, eos in texts:
    ids = tok(text).input_ids + ([tok.eos_token_id] if eos else [])
    prompt = codec.prompt(ids)
    body = {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": K + EXTRA, "temperature": 1.0}
    answer = httpx.post(f"{base}/completions", json=body, timeout=60).json()
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    # torch_logprobs[j][id]: log p(id | ids[:j]) for every id the server returned at token j (row j - 1 in torch)
    ref = [{} for _ in ids]
    for j in range(1, len(ids)):
        ref[j] = {str(i): float(lp[j - 1, i]) for i in lp[j - 1].topk(K + EXTRA + 40).indices.tolist()}
    out.append({"ids": ids, "prompt": prompt, "k": K, "extra": EXTRA, "request": body, "response": answer,
                "torch_logprobs": ref})
Path(__file__).with_name("responses.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
print("recorded", [len(o["ids"]) for o in out])
