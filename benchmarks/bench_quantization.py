"""ShapesBench and weight bytes of the shapes checkpoint quantized with every backend that runs on this CPU, against
bf16, measured in one run.

    python benchmarks/bench_quantization.py [--model checkpoints/shapes-tuna-2] [--steps 20] [--subset 0]

Each backend (`tuna_hf.testing.cpu_quantization_configs`: torchao, optimum-quanto, bitsandbytes) loads the transformer
with its transformers quantization config in bf16; the text-to-image, VQA and editing scores (162 items per task, or
`--subset`), the stored weight bytes (`stored_weight_bytes`) and the seconds of the three tasks are printed as a
markdown table, with the score differences to bf16.
"""

import argparse
import time
from pathlib import Path

import torch

from tuna_hf import TunaEditPipeline, TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.demo.shapes_bench import (
    bench_items,
    score_editing,
    score_text_to_image,
    score_understanding,
)
from tuna_hf.testing import cpu_quantization_configs, stored_weight_bytes

REPO = Path(__file__).resolve().parents[1]


def bench(pipe: TunaPipeline, scenes, edits, steps: int) -> dict:
    pipe.set_progress_bar_config(disable=True)
    edit = TunaEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    scores = {
        "text_to_image": score_text_to_image(pipe, scenes, steps)[0],
        "vqa": score_understanding(pipe.transformer, pipe.processor, scenes),
        "editing": score_editing(edit, edits, steps)[0],
    }
    return {**scores, "seconds": time.perf_counter() - start, "bytes": stored_weight_bytes(pipe.transformer)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--subset", type=int, default=0, help="items per task (0: all 162)")
    args = parser.parse_args()
    scenes, edits = bench_items(args.subset)
    base = TunaPipeline.from_pretrained(args.model, dtype=torch.bfloat16)
    reference = bench(base, scenes, edits, args.steps)
    print(f"{len(scenes)} scenes, {len(edits)} edits, {args.steps} steps\n")
    print("| weights | bytes (vs bf16) | text-to-image | VQA | editing | largest drop | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {"bf16": reference}
    for name, config in cpu_quantization_configs().items():
        model = TunaForUnifiedMultimodal.from_pretrained(
            args.model, subfolder="transformer", dtype=torch.bfloat16, quantization_config=config
        )
        rows[name] = bench(TunaPipeline.from_pipe(base, transformer=model), scenes, edits, args.steps)
    for name, row in rows.items():
        drop = max(reference[task] - row[task] for task in ("text_to_image", "vqa", "editing"))
        print(
            f"| {name} | {row['bytes'] / 2**20:.2f} MiB ({row['bytes'] / reference['bytes']:.2f}) "
            f"| {row['text_to_image']:.3f} | {row['vqa']:.3f} | {row['editing']:.3f} | {drop:+.3f} "
            f"| {row['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
