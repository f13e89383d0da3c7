#!/bin/sh
# Spend a short GPU loan on the zoo (docs/training.md, "On a GPU"): resume the highest-rate model on the GPU
# for as many steps as the budget allows, then fine-tune the lower rates from it on the CPU.
#
#   GPU_STEPS=20000 sh docs/gpu_zoo.sh ../shared/data/photos /tmp/gpu-zoo
#
# GPU_STEPS: steps the GPU run adds to mean-scale-q5 (measure steps/s with a first short run: the progress
# line prints it; 10 minutes at S steps/s is about 600*S steps). CPU_STEPS: steps each lower rate then trains
# from the GPU model on the CPU. Runs outside the repository; rerunning resumes from the checkpoints.
set -eu
PHOTOS=${1:?photos folder (with train/ extra/ val/)}
OUT=${2:?output folder}
GPU_STEPS=${GPU_STEPS:-20000}
CPU_STEPS=${CPU_STEPS:-5000}
DATA="$PHOTOS/train $PHOTOS/extra"
COMMON="--arch mean-scale-hyperprior --N 64 --M 96 --checkpoint-every 1000 --val $PHOTOS/val --max-failures 2"

BASE=$(latentzip zoo show mean-scale-q5 | sed -n 's/^| steps | \([0-9]*\) .*/\1/p')
# On the GPU: TF32, one worker, 16 patches of 256 px per step; the learning rate continues its fall.
latentzip train $DATA --out "$OUT/q5" $COMMON --gpu --workers 1 --batch-size 16 --patch-size 256 \
    --lmbda 0.025 --lr 5e-4 --lr-rsqrt-from 10000 --lr-decay-at 0.9,0.97 \
    --steps $((BASE + GPU_STEPS)) --validate-every 5000 --init-from mean-scale-q5

# On the CPU: each lower rate starts from the GPU model (its λ changes, so a short run re-balances rate and
# distortion), 1 worker each, 2 at a time.
STEPS=$((BASE + GPU_STEPS + CPU_STEPS))
latentzip train $DATA --out "$OUT/lower" $COMMON --no-gpu --workers 1 --batch-size 4 --patch-size 128 \
    --lr 1e-4 --lr-decay-at 0.8,0.95 --steps $STEPS --validate-every 2500 \
    --sweep 0.0035,0.0067,0.013 --init-from "$OUT/q5/codec,$OUT/q5/codec,$OUT/q5/codec"
