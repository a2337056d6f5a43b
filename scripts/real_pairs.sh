#!/bin/bash
# The real-pairs measurements (docs/results/real_pairs.md): mpnet and MiniLM students on SST-2, SmolLM2 on Europarl
# EN-FR, sized for a 2-core machine (one chunk = one seed of one pair, ~1 hour). Every chunk is a farlab sweep into
# a fixed sweep dir, so a re-run skips completed runs and resumes an interrupted one; completed runs keep no
# checkpoints and no final/ weights (the tables need metrics only).
#
#   scripts/real_pairs.sh mpnet 1          # one chunk: pair, seed
#   scripts/real_pairs.sh all              # every chunk in order (seeds 1 and 2)
#   THREADS=1 scripts/real_pairs.sh smollm2 1 & THREADS=1 scripts/real_pairs.sh mpnet 1 & wait
#                                          # two chunks side by side: on 2 cores two one-thread jobs train 1.34x
#                                          # the samples of one two-thread job (measured for the FAR study)
#
# Needs the materialised models: python -m farlab.models.materialize mpnet smollm2 (docs/models.md).
# BEST_CELL: the FAR cell to run next to CE and response KD on SST-2. The CoLA study's best cell is response-only
# (docs/results/far_study.md), which is already the response-KD row, so the default is its best cell with a
# feature term: combined_fr under frozen_sft (MCC 0.160, level with CE there).
set -u -f  # -f: no globbing, so the init_blocks list ([1,2,...]) reaches Hydra as written
OUT=${REAL_PAIRS_OUT:-$(cd "$(dirname "$0")/.." && pwd)/multirun}
PY=${PY:-python}
BEST_CELL=${BEST_CELL:-combined_fr}
THREADS=${THREADS:-2}
common="train.num_threads=$THREADS train.progress_bar=false train.keep_checkpoints=none train.keep_final=false"

# SST-2: a seeded 2,000-row train subset and the seeded validation split (3,368 rows), 2 epochs for teacher and
# students; the teacher's SFT LR 3e-5 (a 12-block base model; the MiniLM study's 1e-4 is for 6 blocks).
sst2="task=sst2 task.train_limit=2000 train.epochs=2 teacher_strategy=frozen_sft teacher_strategy.recipe.epochs=2 \
teacher_strategy.recipe.learning_rate=3e-5 loss=combined_ce,combined_r,$BEST_CELL"
# Europarl: 400 training pairs, 1 epoch at batch 8 (50 steps; students at LR 1e-4, the SFT teacher at the recipe's
# 5e-5), 64 pairs of the seeded test split generated greedily (64 new tokens), SmolLM2's chat template. CE alone;
# response KL from the SFT teacher and from the base teacher (whose pre-training scores are the teacher-before-SFT
# row); on-policy GKD from the SFT teacher. The student keeps 24 of 30 blocks, the ones drop_one ranks highest
# (docs/results/real_pairs/block_drop_probe_smollm2_seed1.json: perplexity 53 against the teacher's 18 before
# training). The list is written out instead of init_blocks=auto:24 block_importance=drop_one, which gives the same
# blocks but re-measures them in every run (about 11 minutes on one thread).
# Measured before: model=smollm2's 10-block student learns nothing in 100 steps (BLEU 0.24; real_pairs.md).
smollm2_student="model.student.name=smollm2-24l \
model.student.init_blocks=[1,2,3,4,5,6,7,8,9,10,11,12,13,16,21,22,23,24,25,26,27,28,29,30]"
europarl="task=europarl_en_fr task.use_chat_template=true task.train_limit=400 task.eval_split=test task.eval_limit=64 \
train.epochs=1 train.batch_size=8 train.eval_batch_size=8 train.learning_rate=1e-4 teacher_strategy.recipe.epochs=1 \
teacher_strategy.recipe.batch_size=8 $smollm2_student"

chunk() {  # chunk PAIR SEED
    local pair=$1 seed=$2 args
    case $pair in
        mpnet | minilm) args="model=$pair $sst2" ; task=sst2 ;;
        smollm2) task=europarl_en_fr ;;
        *) echo "unknown pair '$pair': mpnet | minilm | smollm2" >&2; return 2 ;;
    esac
    # The 24-block SmolLM2 student scored on the test split has its own dir: real_smollm2_europarl_en_fr_seed1 holds
    # the 10-block attempt, real_smollm2_24l_europarl_en_fr_seed* the same recipe scored on validation.
    local name=$pair; [ "$pair" = smollm2 ] && name=smollm2_24l_test
    local dir="$OUT/real_${name}_${task}_seed$seed"
    echo "=== $pair seed $seed -> $dir ($(date -u +%FT%TZ))"
    if [ "$pair" = smollm2 ]; then
        # One sweep (numbered job dirs): farlab's sweeper drops CE's frozen_base job (CE loads no teacher), leaving
        # CE, KL from the SFT teacher, KL from the base teacher. Two sweeps into one dir would both number from 0.
        $PY -m farlab.train -m model=smollm2 $europarl seed="$seed" $common hydra/sweeper=farlab \
            'loss=combined_ce,response_kl' teacher_strategy=frozen_sft,frozen_base hydra.sweep.dir="$dir" \
            >> "$dir.log" 2>&1 &&
        # On-policy GKD from the SFT teacher (conf/loss/gkd.yaml: lambda 0.5, JSD 0.5, 32 sampled tokens). Cheap
        # enough here: 8 steps at batch 4 took 50.5 s for GKD and for response KL alike (one thread, 32 rows).
        # Its own job dir name (gkd), so the first sweep's numbered dirs stay its own.
        $PY -m farlab.train -m model=smollm2 $europarl seed="$seed" $common loss=gkd teacher_strategy=frozen_sft \
            hydra.sweep.dir="$dir" hydra.sweep.subdir=gkd >> "$dir.log" 2>&1
    else
        $PY -m farlab.train -m $args seed="$seed" $common hydra.sweep.dir="$dir" >> "$dir.log" 2>&1
    fi
    echo "=== rc=$? ($(date -u +%FT%TZ))"
}

# The whole run is one function, called on the last line: bash has read and parsed all of it before the first
# job starts, so editing this file while a queue runs cannot change what that queue does next.
main() {
    mkdir -p "$OUT"
    if [ "${1:-}" = all ]; then
        for seed in 1 2; do
            for pair in minilm mpnet smollm2; do chunk "$pair" "$seed"; done
        done
    else
        chunk "${1:?usage: scripts/real_pairs.sh mpnet|minilm|smollm2 SEED | all}" "${2:?seed}"
    fi
}
main "$@"; exit
