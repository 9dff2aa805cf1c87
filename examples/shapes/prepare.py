"""Prepare the shapes-world training run: the 162 images and the jsonl files, and the initial random Tuna-2.

    python examples/shapes/prepare.py --output runs/shapes

writes `runs/shapes/data/` (`imgs/*.png`, `ti_pairs.jsonl`, `mmu_pairs.jsonl`, `edit_pairs.jsonl`) and
`runs/shapes/init/` (a pipeline repository: the byte-level tokenizer, a 64×64 processor, the Tuna-2 scheduler, and
the pipeline settings: its guidance interval and an empty default edit negative prompt).
"""

import argparse
import json
from pathlib import Path

import torch

from tuna_hf import TunaFlowMatchScheduler, TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.demo.shapes import CANVAS, all_scenes, training_records, world_texts
from tuna_hf.testing import build_byte_tokenizer, tiny_tuna_config, tiny_tuna_processor

# Each scene gives 1 caption and 3 questions, and is the source of 15 edits. Per epoch: 1,944 text-to-image, 1,458
# question and 2,430 edit samples. Questions (one answer token) are learnt first; the 162 pictures are learnt mostly
# from text-to-image (repeats 8/1/2, i.e. 20 % text-to-image and 73 % edits, for 7,500 steps scored ShapesBench
# editing 0.907 against this mix's 1.000 at 7,000 steps).
REPEATS = {"text_to_image": 12, "understanding": 3, "edit": 1}
# The official Tuna-2 sampler, with guidance off for t > 0.925 (the official `cfg_interval`; at 20 steps only the last
# step, t = 0.95). That step's x0 prediction is the output (JiT's 1 − t = 0.05 makes it so), and there conditional
# and unconditional predictions of the almost clean sample differ only by the model's residual errors: 3× guidance
# turns them into faint copies of the shape in the same rows (the strip-wise unpatchify) that ShapesBench, and the
# eye, see. Editing's unconditional rows hold an empty instruction, as caption dropout trained them.
GUIDANCE_INTERVAL = (0.0, 0.925)
# A short system prompt instead of Qwen's.
SYSTEM_PROMPT = "Answer briefly."
# The tokenizer merges the world's words into single tokens (bytes remain for any other text): rows stay short and
# every answer is one token, which is what lets VQA train in CPU minutes. The chat template's words join the corpus.
CHAT_TEXTS = [SYSTEM_PROMPT, "system\n", "user\n", "assistant\n"] * 2


def write_data(folder: Path) -> None:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, scene in enumerate(all_scenes()):
        paths[scene] = f"imgs/{index:03d}.png"
        scene.draw().save(folder / paths[scene])
    files = {"ti_pairs": [], "mmu_pairs": [], "edit_pairs": []}
    for record in training_records(paths, REPEATS):
        name = "edit_pairs" if "raw_image" in record else "mmu_pairs" if "conversations" in record else "ti_pairs"
        files[name].append(record)
    for name, records in files.items():
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
        print(f"{name}: {len(records)} records")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_data(args.output / "data")
    torch.manual_seed(args.seed)
    tokenizer = build_byte_tokenizer(world_texts() + CHAT_TEXTS)
    processor = tiny_tuna_processor(
        tokenizer, height=CANVAS, width=CANVAS, pixels_per_token=args.patch_size, default_system_prompt=SYSTEM_PROMPT
    )
    config = tiny_tuna_config(
        "patch", processor.tokenizer, args.hidden_size, args.num_layers, patch_size=args.patch_size
    )
    model = TunaForUnifiedMultimodal(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    pipeline = TunaPipeline(model, processor, scheduler, edit_negative_prompt="", guidance_interval=GUIDANCE_INTERVAL)
    pipeline.save_pretrained(args.output / "init")


if __name__ == "__main__":
    main()
