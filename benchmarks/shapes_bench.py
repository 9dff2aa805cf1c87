"""ShapesBench: text-to-image, VQA and editing scores of a pipeline repository on the shapes world.

    python benchmarks/shapes_bench.py [--model checkpoints/shapes-tuna-2] [--steps 20] [--subset 0]

T2I and VQA run over the 162 scenes (VQA: 3 questions each), editing over the fixed 162-item edit set
(`tuna_hf.shapes.bench_edits`); `--subset N` keeps every k-th item (N per task). Scores are read back from the
pixels (`tuna_hf.shapes.read_scene`); the scores also go to `--output` as JSON.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tuna_hf import TunaEditPipeline, TunaPipeline
from tuna_hf.shapes import all_scenes, bench_edits, score_editing, score_text_to_image, score_understanding

REPO = Path(__file__).resolve().parents[1]


def every_kth(items: list, count: int) -> list:
    return items if not count or count >= len(items) else items[:: len(items) // count][:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--subset", type=int, default=0, help="items per task (0: all 162)")
    parser.add_argument("--output", type=Path, default=Path("outputs") / "shapes_bench.json")
    args = parser.parse_args()
    pipe = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    edit = TunaEditPipeline.from_pipe(pipe)
    scenes, edits = every_kth(all_scenes(), args.subset), every_kth(bench_edits(), args.subset)
    start = time.perf_counter()
    t2i, _ = score_text_to_image(pipe, scenes, args.steps)
    vqa = score_understanding(pipe.transformer, pipe.processor, scenes)
    editing, _ = score_editing(edit, edits, args.steps)
    seconds = time.perf_counter() - start
    scores = {"text_to_image": t2i, "vqa": vqa, "editing": editing, "items": len(scenes), "steps": args.steps}
    scores["seconds"] = round(seconds, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(scores, indent=1))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
