#!/bin/bash
# The FAR study's remaining chunks (docs/results/far_study.md) as two queues of one-thread jobs, for a 2-core
# machine: run `scripts/far_study.sh 1` and `scripts/far_study.sh 2` side by side. Two one-thread jobs train
# 1.34x the samples per second of one two-thread job (measured: 66 + 66 vs 98 samples/s, MiniLM on CoLA).
# Every chunk is a farlab sweep into a fixed sweep dir, so a re-run skips completed jobs and resumes an
# interrupted one; both queues share the SFT-teacher store (built once, the other queue waits).
#
# Run from the frozen worktree the study started in (FARLAB_STUDY_SRC, commit ce93426): the training path is
# the same, and its SFT-store keys match the teachers already stored. Jobs that already ran with two threads
# (named ...train.num_threads=2...) are left out of the lists below, not run again under another name.
#
# `scripts/far_study.sh status` runs nothing: it dry-runs every chunk of both queues from this checkout and
# lists what a launch would do with each job (skip, resume, start...; docs/sweeps.md). The frozen worktree
# takes no run-dir lock, so a job it is training shows as "resumes (was running ...)", not as busy.
set -u
queue=${1:?usage: scripts/far_study.sh 1|2|status}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=${FARLAB_STUDY_SRC:-/work/sweep}
OUT=${FARLAB_STUDY_OUT:-$REPO/multirun}
PY=${PY:-python}
common="model=minilm teacher_strategy.recipe.learning_rate=1e-4 train.num_threads=1 train.progress_bar=false"
# The study's job dir names, as they were when it started: every override but experiment (farlab now also leaves
# out settings such as train.num_threads; a dry run from this checkout must still find the study's dirs).
naming="hydra.job.config.override_dirname.exclude_keys=[experiment]"
sst2="task.train_limit=8000 teacher_strategy=frozen_sft,cotrain_base"

# A fresh machine has no sweep dirs: start each from its committed archive (docs/results/sweeps), whose completed
# runs (config.yaml, metrics.json, run_metadata.json) a launch skips; the runs the archive lists as unfinished hold
# no checkpoint there, so they start over.
restore() {  # restore SWEEP_NAME
    local archive="$REPO/docs/results/sweeps/$1"
    [ ! -d "$OUT/$1" ] && [ -d "$archive" ] || return 0
    # Copied aside, then renamed: the other queue may restore the same dir at the same moment (mv -T then fails).
    local tmp
    tmp=$(mktemp -d "$OUT/.restore.XXXXXX")
    if cp -r "$archive/." "$tmp/" && mv -T "$tmp" "$OUT/$1" 2>/dev/null; then
        echo "=== $1: started from its archive $archive"
    else
        rm -rf "$tmp"
    fi
}

far() {  # far TASK SEED LOSSES [more overrides]: one chunk; its log next to the sweep dir
    local task=$1 seed=$2 losses=$3
    shift 3
    local dir="$OUT/far_${task}_minilm_seed$seed"
    if [ "$queue" = status ]; then
        echo "=== $task seed $seed loss=$losses $*"
        # Read-only: a sweep dir not restored yet is read in its archive, where a launch would start from.
        [ -d "$dir" ] || dir="$REPO/docs/results/sweeps/far_${task}_minilm_seed$seed"
        local out
        if out=$(cd "$REPO" && $PY -m farlab.train -m +experiment=far_factorial task="$task" seed="$seed" \
            loss="$losses" $common "$@" hydra.sweep.dir="$dir" "$naming" \
            hydra.sweeper.dry_run=true 2>&1); then
            sed -n 's/^.*\] \(  #[0-9]* : \)/\1/p; s/^.*\] \(in .*\)$/  \1/p' <<< "$out"
        else
            echo "dry run failed:"; tail -n 5 <<< "$out"
        fi
        return
    fi
    restore "far_${task}_minilm_seed$seed"
    echo "=== queue $queue: $task seed $seed loss=$losses $* ($(date -u +%FT%TZ))"
    (cd "$SRC" && $PY -m farlab.train -m +experiment=far_factorial task="$task" seed="$seed" loss="$losses" \
        $common "$@" hydra.sweep.dir="$OUT/far_${task}_minilm_seed$seed" "$naming") \
        >> "$OUT/far_${task}_minilm_seed${seed}.queue$queue.log" 2>&1
    echo "=== rc=$? ($(date -u +%FT%TZ))"
}

# The whole run is one function, called on the last line: bash has read and parsed all of it before the first
# job starts, so editing this file while a queue runs cannot change what that queue does next.
main() {
    mkdir -p "$OUT"
    if [ "$queue" != status ] && [ ! -d "$SRC/farlab" ]; then
        echo "no frozen study worktree at $SRC: git worktree add $SRC ce93426 (or set FARLAB_STUDY_SRC)" >&2
        exit 2
    fi
    if [ "$queue" = 1 ] || [ "$queue" = status ]; then
        far cola 1 combined_r teacher_strategy=cotrain_sft       # seed 1's F, A and three R jobs ran with 2 threads
        far cola 1 combined_fr,combined_fa
        far cola 2 combined_f,combined_a,combined_r,combined_fr
        far cola 3 combined_f,combined_a,combined_r,combined_fr  # CoLA's three seeds first: one task answered
        far sst2 1 combined_r $sst2                    # CE ran with 2 threads (R/frozen_sft was stopped unfinished)
        far sst2 1 combined_f,combined_a,combined_fr $sst2
        far sst2 2 combined_f,combined_a,combined_r,combined_fr $sst2
        far sst2 3 combined_f,combined_a,combined_r,combined_fr $sst2
    fi
    if [ "$queue" = 2 ] || [ "$queue" = status ]; then
        far sst2 2 combined_ce,combined_r teacher_strategy=frozen_sft task.train_limit=8000  # issue 14's baselines
        far cola 1 combined_ar,combined_far,combined_ce
        far cola 2 combined_fa,combined_ar,combined_far,combined_ce
        far cola 3 combined_fa,combined_ar,combined_far,combined_ce
        far sst2 1 combined_fa,combined_ar,combined_far $sst2
        far sst2 2 combined_fa,combined_ar,combined_far,combined_ce $sst2
        far sst2 3 combined_fa,combined_ar,combined_far,combined_ce $sst2
    fi
}
main "$@"; exit
