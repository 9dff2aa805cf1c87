"""ShapesBench against model calls per image, for TUNA's sampler and diffusers' flow-matching schedulers.

    python benchmarks/bench_schedulers.py [--model checkpoints/shapes-tuna-2] [--steps 4 6 8 12 20] [--subset 0]
        [--schedulers tuna tuna-heun euler heun unipc dpm]

For every scheduler and `num_inference_steps`, the text-to-image and editing scores of the checkpoint (its own
guidance settings, seed 0) and the model calls per image that took (a call evaluates all of an image's guidance rows
at once); VQA does not sample, so it is scored once. Prints a markdown table; `--output` gets the rows as JSON.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes_bench import (
    bench_items,
    score_editing,
    score_text_to_image,
    score_understanding,
)

REPO = Path(__file__).resolve().parents[1]
FLOW_SOLVER = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
SCHEDULERS = {
    "tuna": lambda pipe: pipe.scheduler,
    "tuna-heun": lambda pipe: TunaFlowMatchScheduler.from_config(pipe.scheduler.config, solver="heun"),
    "euler": lambda pipe: FlowMatchEulerDiscreteScheduler(),
    "heun": lambda pipe: FlowMatchHeunDiscreteScheduler(),
    "unipc": lambda pipe: UniPCMultistepScheduler(**FLOW_SOLVER),
    "dpm": lambda pipe: DPMSolverMultistepScheduler(**FLOW_SOLVER),
}


def model_calls(pipe: TunaPipeline, num_inference_steps: int) -> int:
    """The model calls one image takes with `pipe`'s scheduler at `num_inference_steps`."""
    scheduler = pipe.scheduler.from_config(pipe.scheduler.config)
    size = pipe.processor.image_processor.size
    image_seq_len = pipe.processor.num_image_tokens(size["height"], size["width"]) - 1
    return len(pipe.prepare_timesteps(scheduler, num_inference_steps, image_seq_len, "cpu", pipe.transformer.dtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 6, 8, 12, 20])
    parser.add_argument("--schedulers", nargs="+", choices=tuple(SCHEDULERS), default=list(SCHEDULERS))
    parser.add_argument("--subset", type=int, default=0, help="items per task (0: all 162)")
    parser.add_argument("--output", type=Path, default=Path("outputs") / "bench_schedulers.json")
    args = parser.parse_args()
    base = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
    scenes, edits = bench_items(args.subset)
    vqa = score_understanding(base.transformer, base.processor, scenes)
    print(f"VQA (no sampling): {vqa:.3f} over {len(scenes)} scenes\n")
    print("| scheduler | steps | model calls per image | text-to-image | editing | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for name in args.schedulers:
        pipe = TunaPipeline.from_pipe(base, scheduler=SCHEDULERS[name](base))
        edit = TunaEditPipeline.from_pipe(pipe)
        for part in (pipe, edit):
            part.set_progress_bar_config(disable=True)
        for steps in args.steps:
            start = time.perf_counter()
            t2i, _ = score_text_to_image(pipe, scenes, steps)
            editing, _ = score_editing(edit, edits, steps)
            row = {
                "scheduler": name,
                "steps": steps,
                "model_calls": model_calls(pipe, steps),
                "text_to_image": t2i,
                "editing": editing,
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            print(
                f"| {name} | {steps} | {row['model_calls']} | {t2i:.3f} | {editing:.3f} | {row['seconds']} |",
                flush=True,
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"vqa": vqa, "items": len(scenes), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
