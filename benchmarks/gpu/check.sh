#!/usr/bin/env bash
# GPU check for farlab on a lent CUDA machine (see the device tool). Carries .whl (wheels the image lacks)
# and .gpudata (a copy of the CoLA/Europarl files). Writes logs and JSON under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD FARLAB_DATA_DIR=$PWD/.gpudata HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export FARLAB_TEACHER_STORE=/tmp/store
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, datasets, hydra; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
run() { local name=$1; shift; local t0=$(date +%s.%N); python3 -m farlab.train "$@" train.progress_bar=false hydra.run.dir=$OUT/$name > $OUT/$name.log 2>&1; local rc=$?; echo "$name rc=$rc $(python3 -c "print(round($(date +%s.%N)-$t0,1))")s"; tail -n 12 $OUT/$name.log | grep -E "│|transfer|runtime|Error|error" ; }
# 1. bf16 + attention loss (eager switch) + features on a BERT-base-shaped pair, co-trained teacher
run bert_far_bf16 task=cola model=bench_bert loss=combined_far teacher_strategy=cotrain_base train.bf16=true train.max_steps=60 train.batch_size=32 task.train_limit=4096 task.eval_limit=512 train.save_steps=30 train.logging_steps=20
# 2. decoder-only: ~100M Llama pair, bf16, sdpa, dense KD then the chunked path, frozen SFT teacher (store)
run llama_kd_bf16 task=europarl_en_fr model=bench_llama loss=response_kl teacher_strategy=frozen_sft teacher_strategy.recipe.max_steps=60 train.bf16=true train.max_steps=60 train.batch_size=16 task.eval_limit=64 train.save_steps=60 train.logging_steps=20
run llama_kd_chunked_bf16 task=europarl_en_fr model=bench_llama loss=response_kl loss.components.response.chunk_size=512 teacher_strategy=frozen_sft teacher_strategy.recipe.max_steps=60 train.bf16=true train.max_steps=60 train.batch_size=16 task.eval_limit=64 train.save_steps=60 train.logging_steps=20
for d in bert_far_bf16 llama_kd_bf16 llama_kd_chunked_bf16; do python3 -c "import json;m=json.load(open('$OUT/$d/metrics.json'));print('$d', json.dumps({'train':m['train'],'peak':m['peak_memory_mb'],'components':m['loss_components']}))" 2>&1 | tail -1; done
# 3. KD step overhead on the GPU, fp32 and bf16 autocast
python3 benchmarks/bench_kd_step.py --model bench_bert --device cuda --dtype bfloat16 --steps 30 --batch 64 --length 128 2>&1 | tail -6
cp benchmarks/results/kd_step_bench_bert_cuda_*.json $OUT/ 2>/dev/null
python3 benchmarks/bench_kd_step.py --model bench_bert --device cuda --dtype float32 --steps 30 --batch 64 --length 128 2>&1 | tail -5
