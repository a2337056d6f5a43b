#!/usr/bin/env bash
# farlab vs TRL on a lent CUDA machine (see the device tool; issue 15): benchmarks/bench_vs_trl.py on the ~100M
# Llama-shaped pair (model=bench_llama) at a 32k and a 128k vocab, bf16 autocast and fp32, then the chunked LM loss at
# a 128k vocab (bench_lm_loss.py) with chunks of 512 and 256 rows. Carry .whl (wheels the image lacks; trl among them:
# `pip download --no-deps -d .whl trl==1.16.*`) and .gpudata (a copy of the europarl_en_fr files). Logs and JSON go
# under $OUT. About 5 minutes on one H200.
set -uo pipefail
OUT=${OUT:-/tmp/bench_vs_trl}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD FARLAB_DATA_DIR=${FARLAB_DATA_DIR:-$PWD/.gpudata} HF_HUB_OFFLINE=1 WANDB_MODE=disabled \
       PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)" || exit 1
for vocab in 32768 131072; do
  for dtype in bfloat16 float32; do
    echo "== bench_llama vocab=$vocab $dtype"
    python3 benchmarks/bench_vs_trl.py --device cuda --dtype "$dtype" --model bench_llama --vocab "$vocab" \
      --batch 16 --max-length 192 --steps 20 --warmup 3 --chunk-size 1024 --threads 8 > "$OUT/vs_trl_${vocab}_${dtype}.log" 2>&1
    echo "rc=$?"; tail -n 10 "$OUT/vs_trl_${vocab}_${dtype}.log"
  done
done
cp benchmarks/results/vs_trl_bench_llama_*_cuda_*.json "$OUT/" 2>/dev/null
for chunk in 512 256; do
  echo "== chunked LM loss, vocab 128k, chunks of $chunk"
  python3 benchmarks/bench_lm_loss.py --device cuda --vocab 131072 --chunk-size "$chunk" --variants dense chunked trl \
    --out "$OUT/lm_loss_128k_chunk$chunk.json" 2>&1 | tail -n 6
done
