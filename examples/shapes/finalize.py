"""Turn a finished shapes training run into the committed checkpoint: the pipeline repository plus its model card.

    python examples/shapes/finalize.py runs/shapes/train/pipeline checkpoints/shapes-tuna-2 \
        --scores runs/shapes/shapes_bench.json [--push-to-hub you/tuna-shapes]
"""

import argparse
import json
import shutil
from pathlib import Path

from tuna_hf import TunaPipeline
from tuna_hf.hub import upload_repository, write_model_card

PROVENANCE = (
    "Trained from scratch by tuna-hf on the synthetic shapes world (`tuna_hf.demo.shapes`: one circle, square or "
    "triangle in 6 colours at 9 positions on a 64×64 white canvas) with `examples/train.py` on a 2-core CPU; the "
    "command is `bash examples/shapes/build_checkpoint.sh`. ShapesBench ({steps} sampling steps, all 162 items per "
    "task): text-to-image {t2i:.3f}, VQA {vqa:.3f}, editing {edit:.3f}."
)
LIMITATIONS = (
    "It knows only the shapes world: 64×64 images, the prompts `a {color} {shape} at the {position}`, three "
    "questions and three kinds of edits. Its tokenizer is byte-level BPE with merges learnt on that world. Pictures "
    "can carry faint outlines of the shape in the other cells of the same rows: each image token draws a full-width "
    "strip (the official strip-wise unpatchify), and a 7M-parameter model trained for an hour leaves some residue."
)
EXAMPLES = {
    "example_question": "What color is the shape?",
    "example_prompt": "a red circle at the top left",
    "example_instruction": "make it blue",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the training run's pipeline repository")
    parser.add_argument("output", type=Path)
    parser.add_argument("--scores", type=Path, required=True, help="benchmarks/shapes_bench.py's JSON")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the repository to the Hub afterwards")
    args = parser.parse_args()
    scores = json.loads(args.scores.read_text())
    if args.output.exists():
        shutil.rmtree(args.output)
    shutil.copytree(args.run, args.output)
    write_model_card(
        args.output,
        TunaPipeline.from_pretrained(args.output),
        model_name="TUNA shapes demo (tiny Tuna-2)",
        repo_id=args.push_to_hub or str(args.output),
        provenance=PROVENANCE.format(
            steps=scores["steps"], t2i=scores["text_to_image"], vqa=scores["vqa"], edit=scores["editing"]
        ),
        limitations=LIMITATIONS,
        examples=EXAMPLES,
    )
    print(f"wrote {args.output}")
    if args.push_to_hub:
        print(f"pushed to {upload_repository(args.output, args.push_to_hub)}")


if __name__ == "__main__":
    main()
