#!/usr/bin/env bash
# FSDP check for farlab on a CUDA machine (accelerate shards on accelerator devices only; CPU runs refuse
# train.fsdp, see docs/distributed.md). Same carry as check.sh (.whl wheels, .gpudata data). Uses every GPU the
# machine has (torchrun --nproc_per_node=<GPUs>; one GPU still runs FSDP's code path with a world of 1).
# Runs the Llama pair with a frozen teacher twice, DDP and FSDP, and prints loss and peak memory of each: the
# losses must agree (same global batch), FSDP's peak memory per GPU should be lower with 2+ GPUs.
set -uo pipefail
OUT=${OUT:-/tmp/fsdp_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD FARLAB_DATA_DIR=${FARLAB_DATA_DIR:-$PWD/.gpudata} HF_HUB_OFFLINE=1 WANDB_MODE=disabled \
       PYTHONUNBUFFERED=1 FARLAB_TEACHER_STORE=/tmp/store FARLAB_FSDP_UNVERIFIED=1  # farlab refuses train.fsdp otherwise
NGPU=$(nvidia-smi -L | wc -l)
echo "GPUs: $NGPU"
common=(task=europarl_en_fr model=bench_llama loss=response_kl teacher_strategy=frozen_base train.bf16=true
        train.max_steps=30 train.batch_size=8 task.eval_limit=32 train.save_steps=30 train.logging_steps=10
        train.progress_bar=false)
for mode in ddp fsdp; do
  extra=(); [ "$mode" = fsdp ] && extra=(train.fsdp.enabled=true)
  t0=$(date +%s)
  torchrun --standalone --nproc_per_node="$NGPU" -m farlab.train "${common[@]}" "${extra[@]}" \
    hydra.run.dir="$OUT/$mode" > "$OUT/$mode.log" 2>&1
  echo "$mode rc=$? $(( $(date +%s) - t0 ))s"
  python3 -c "import json;m=json.load(open('$OUT/$mode/metrics.json'));print('$mode', json.dumps({'final_loss':m['train']['final_loss'],'peak_memory_mb':m['peak_memory_mb'],'post':m['post']['student']}))" 2>&1 | tail -1
done
grep -h "FSDP\|fsdp" "$OUT/fsdp.log" | head -5
