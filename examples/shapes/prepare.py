"""Prepare the shapes-world training run: the 162 images and the jsonl files, and the initial random Tuna-2.

    python examples/shapes/prepare.py --output runs/shapes

writes `runs/shapes/data/` (`imgs/*.png`, `ti_pairs.jsonl`, `mmu_pairs.jsonl`, `edit_pairs.jsonl`) and
`runs/shapes/init/` (a pipeline repository: the byte-level tokenizer, a 64×64 processor, the Tuna-2 scheduler).
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import Qwen2Config

from tuna_hf import TunaConfig, TunaFlowMatchScheduler, TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.processing_tuna import tuna_token_ids
from tuna_hf.shapes import CANVAS, all_scenes, training_records
from tuna_hf.tiny import tiny_tuna_processor

# Each scene gives 1 caption and 3 questions, and is the source of 15 edits; the repeats balance the three tasks.
REPEATS = {"text_to_image": 6, "understanding": 2, "edit": 1}
# A short system prompt instead of Qwen's: byte-level tokens make every character a token.
SYSTEM_PROMPT = "Answer briefly."


def shapes_config(tokenizer, hidden_size: int, num_layers: int) -> TunaConfig:
    """A small Tuna-2: Qwen2-style decoder and flow head of `num_layers` each, head_dim 64, patch 16."""
    heads = hidden_size // 64
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    flow_head_config = {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 1024,
    }
    return TunaConfig(
        text_config=text_config,
        flow_head_config=flow_head_config,
        visual_encoder="patch",
        latent_channels=3,
        patch_size=16,
        use_mask_token=True,
        **tuna_token_ids(tokenizer),
    )


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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_data(args.output / "data")
    torch.manual_seed(args.seed)
    processor = tiny_tuna_processor(height=CANVAS, width=CANVAS)
    processor.default_system_prompt = SYSTEM_PROMPT
    model = TunaForUnifiedMultimodal(shapes_config(processor.tokenizer, args.hidden_size, args.num_layers))
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    TunaPipeline(model, processor, scheduler).save_pretrained(args.output / "init")


if __name__ == "__main__":
    main()
