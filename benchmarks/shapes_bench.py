"""ShapesBench: text-to-image, VQA and editing scores of a pipeline repository on the shapes world.

    python benchmarks/shapes_bench.py [--model checkpoints/shapes-tuna-2] [--steps 20] [--subset 0] [--seed 0]
        [--official-sampler] [--guidance-interval LOW HIGH] [--edit-negative-prompt TEXT]

T2I and VQA run over the 162 scenes (VQA: 3 questions each), editing over the fixed 162-item edit set
(`tuna_hf.demo.shapes_bench.bench_edits`); `--subset N` keeps N items per task (`shapes_bench.bench_subset`, balanced
over positions and edited attributes; CI uses 27). Scores are read back from the pixels (`shapes_bench.read_scene`);
they also go to `--output` as JSON. By default the checkpoint's own sampling settings are used; `--official-sampler`
replaces them by the variant's official predict defaults, the other two flags override single settings.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes_bench import (
    bench_items,
    score_editing,
    score_text_to_image,
    score_understanding,
)
from tuna_hf.pipelines import OFFICIAL_EDIT_NEGATIVE_PROMPT, OFFICIAL_GUIDANCE_DEFAULTS

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--subset", type=int, default=0, help="items per task (0: all 162)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--output", type=Path, default=Path("outputs") / "shapes_bench.json")
    parser.add_argument("--official-sampler", action="store_true", help="the official predict defaults instead")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--edit-negative-prompt")
    args = parser.parse_args()
    pipe = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
    settings = {}
    if args.official_sampler:
        variant = pipe.transformer.config.tuna_variant
        settings.update(OFFICIAL_GUIDANCE_DEFAULTS[variant], edit_negative_prompt=OFFICIAL_EDIT_NEGATIVE_PROMPT)
        settings["scheduler"] = TunaFlowMatchScheduler.from_official_defaults(variant)
    if args.guidance_interval:
        settings["guidance_interval"] = tuple(args.guidance_interval)
    if args.edit_negative_prompt is not None:
        settings["edit_negative_prompt"] = args.edit_negative_prompt
    pipe = TunaPipeline.from_pipe(pipe, **settings)
    pipe.set_progress_bar_config(disable=True)
    edit = TunaEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    scenes, edits = bench_items(args.subset)
    start = time.perf_counter()
    t2i, _ = score_text_to_image(pipe, scenes, args.steps, seed=args.seed)
    vqa = score_understanding(pipe.transformer, pipe.processor, scenes)
    editing, _ = score_editing(edit, edits, args.steps, seed=args.seed)
    seconds = time.perf_counter() - start
    scores = {"text_to_image": t2i, "vqa": vqa, "editing": editing, "items": len(scenes), "steps": args.steps}
    scores["seed"] = args.seed
    scores["guidance_interval"] = list(pipe.config.guidance_interval)
    edit_negative_prompt = pipe.config.edit_negative_prompt
    scores["edit_negative_prompt"] = (
        "official" if edit_negative_prompt == OFFICIAL_EDIT_NEGATIVE_PROMPT else edit_negative_prompt
    )
    scores["seconds"] = round(seconds, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(scores, indent=1))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
