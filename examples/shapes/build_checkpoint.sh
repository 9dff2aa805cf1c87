#!/usr/bin/env bash
# Rebuild the embedded shapes checkpoint from scratch (CPU, seeded): data + initial model, training, ShapesBench,
# then the pipeline repository with its model card in checkpoints/shapes-tuna-2. Wall time and scores: README.
set -euo pipefail
RUN=${RUN:-runs/shapes}
rm -rf "$RUN"
python examples/shapes/prepare.py --output "$RUN"
accelerate launch --num_processes 1 --cpu --mixed_precision bf16 examples/train.py \
    --model "$RUN/init" --data "$RUN"/data/ti_pairs.jsonl "$RUN"/data/mmu_pairs.jsonl "$RUN"/data/edit_pairs.jsonl \
    --resolution 64x64 --recipe stage2 --output "$RUN/train" --max-steps 7000 --batch-size 32 \
    --learning-rate 4e-4 --warmup-steps 200 --lr-schedule cosine --caption-dropout 0.1 --ema-decay 0.999 \
    --checkpointing-steps 1000 --log-every 25 --seed 0
python benchmarks/shapes_bench.py --model "$RUN/train/pipeline" --output "$RUN/shapes_bench.json"
python examples/shapes/finalize.py "$RUN/train/pipeline" checkpoints/shapes-tuna-2 --scores "$RUN/shapes_bench.json"
