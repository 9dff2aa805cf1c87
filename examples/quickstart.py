"""Quickstart: a tiny Tuna-2 on the synthetic shapes world answers questions, draws a grid of prompts and edits.

    python examples/quickstart.py [--model checkpoints/shapes-tuna-2] [--output-dir outputs] [--seed 0]

Loads the pipeline repository with `TunaPipeline` / `TunaEditPipeline` and, for questions, with
`AutoModelForImageTextToText` + `AutoProcessor` from its `transformer/` and `processor/` folders. It answers
questions about a drawn scene, generates a grid of prompts, performs edits, and writes the pictures and a report to
`outputs/`. The same seed gives the same pictures. The default model is the embedded shapes checkpoint, a tiny
Tuna-2 trained by `examples/shapes/build_checkpoint.sh` (see the README).
"""

import argparse
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoModelForImageTextToText, AutoProcessor

from tuna_hf import TunaEditPipeline, TunaPipeline
from tuna_hf.demo.shapes import QUESTIONS, Edit, Scene
from tuna_hf.demo.shapes_bench import edit_is_right, read_scene

REPO = Path(__file__).resolve().parents[1]
GRID = [
    Scene("red", "circle", "top left"),
    Scene("green", "square", "top"),
    Scene("blue", "triangle", "top right"),
    Scene("yellow", "square", "left"),
    Scene("purple", "circle", "center"),
    Scene("orange", "triangle", "right"),
    Scene("blue", "circle", "bottom left"),
    Scene("red", "triangle", "bottom"),
    Scene("green", "circle", "bottom right"),
]
EDITS = [
    Edit(Scene("red", "circle", "center"), "color", Scene("blue", "circle", "center")),
    Edit(Scene("green", "square", "top left"), "shape", Scene("green", "triangle", "top left")),
    Edit(Scene("purple", "triangle", "bottom"), "position", Scene("purple", "triangle", "top right")),
]
CELL, LABEL, GAP = 256, 30, 12  # 64×64 pictures upscaled 4× (nearest), a caption line under each


def labelled_grid(images: list[Image.Image], labels: list[str], columns: int) -> Image.Image:
    """Images upscaled in a grid, each framed, with its label underneath."""
    rows = (len(images) + columns - 1) // columns
    pitch_x, pitch_y = CELL + GAP, CELL + LABEL + GAP
    sheet = Image.new("RGB", (GAP + columns * pitch_x, GAP + rows * pitch_y), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = GAP + index % columns * pitch_x, GAP + index // columns * pitch_y
        sheet.paste(image.resize((CELL, CELL), Image.NEAREST), (x, y))
        draw.rectangle((x - 1, y - 1, x + CELL, y + CELL), outline=(170, 170, 170))
        draw.text((x, y + CELL + 6), label, fill="black", font=font)
    return sheet


def answer(model, processor, image: Image.Image, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])[0].strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not (args.model / "model_index.json").exists():
        parser.error(f"--model {args.model} is not a pipeline repository (no model_index.json)")
    report = [f"model: {args.model}"]

    model = AutoModelForImageTextToText.from_pretrained(args.model, subfolder="transformer", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(args.model, subfolder="processor")
    scene = Scene("orange", "triangle", "top left")
    scene.draw().resize((CELL, CELL), Image.NEAREST).save(args.output_dir / "question.png")
    report.append(f"\nVQA on question.png ({scene.caption}):")
    for attribute, question in QUESTIONS.items():
        reply = answer(model, processor, scene.draw(), question)
        report.append(f"  Q: {question}  A: {reply}  (truth: {scene.answer(attribute)})")

    pipe = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
    generator = torch.Generator().manual_seed(args.seed)
    prompts = [scene.caption for scene in GRID]  # the world's wording: "a/an {color} {shape} at the {position}"
    images = pipe(prompts, num_inference_steps=args.steps, generator=generator).images
    labelled_grid(images, prompts, columns=3).save(args.output_dir / "text_to_image.png")
    right = sum(read_scene(image).matches(scene) for image, scene in zip(images, GRID, strict=True))
    report.append(f"\ntext-to-image: text_to_image.png, {right}/{len(GRID)} read back right")

    edit = TunaEditPipeline.from_pipe(pipe)
    sources = [change.source.draw() for change in EDITS]
    instructions = [change.instruction for change in EDITS]
    edited = edit(
        sources, instructions, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)
    ).images
    pairs = [image for pair in zip(sources, edited, strict=True) for image in pair]
    labels = [text for change in EDITS for text in (change.source.caption, change.instruction)]
    labelled_grid(pairs, labels, columns=2).save(args.output_dir / "edit.png")
    right = sum(edit_is_right(image, change) for image, change in zip(edited, EDITS, strict=True))
    report.append(f"editing: edit.png ({', '.join(instructions)}), {right}/{len(EDITS)} read back right")

    (args.output_dir / "report.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nOutputs written to {args.output_dir.resolve()}")


if __name__ == "__main__":
    main()
