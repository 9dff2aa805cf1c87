"""Turn a finished shapes training run into the committed checkpoint: the pipeline repository plus its model card.

python examples/shapes/finalize.py runs/shapes/train/pipeline checkpoints/shapes-tuna-2 --scores outputs/shapes_bench.json
"""

import argparse
import json
import shutil
from pathlib import Path

from tuna_hf.hub import render_model_card

PROVENANCE = (
    "Trained from scratch by tuna-hf on the synthetic shapes world (`tuna_hf.shapes`: one circle, square or triangle in "
    "6 colours at 9 positions on a 64×64 canvas) with `examples/train.py`, on CPU; the command is "
    "`bash examples/shapes/build_checkpoint.sh`. ShapesBench ({steps} sampling steps): text-to-image {t2i:.3f}, VQA "
    "{vqa:.3f}, editing {edit:.3f}. It knows nothing outside that world."
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--scores", type=Path, required=True, help="benchmarks/shapes_bench.py's JSON")
    args = parser.parse_args()
    scores = json.loads(args.scores.read_text())
    if args.output.exists():
        shutil.rmtree(args.output)
    shutil.copytree(args.run, args.output)
    card = render_model_card(
        model_name="TUNA shapes demo (Tuna-2, 7M parameters)",
        repo_id=str(args.output),
        license="apache-2.0",
        base_model_metadata="",
        variant="tuna_2",
        variant_description="tiny Tuna-2 model (Conv2d patch embedding on pixels → a 4-layer decoder; x0 flow matching)",
        sampling_defaults="Euler, x0 prediction, guidance 3 (text-to-image) / 2 (editing), initial noise scale 2",
        provenance=PROVENANCE.format(
            steps=scores["steps"], t2i=scores["text_to_image"], vqa=scores["vqa"], edit=scores["editing"]
        ),
    )
    (args.output / "README.md").write_text(card)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
