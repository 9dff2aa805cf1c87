"""Quickstart: VQA, text-to-image and editing through the Hugging Face APIs, on a freshly built *random* tiny TUNA.

No trained weights ship yet (the embedded shapes checkpoint is a later milestone), so the answers and pictures are
noise. The run shows the API end to end: a pipeline repository saved and loaded back (`TunaPipeline`,
`TunaEditPipeline.from_pipe`, `AutoModelForImageTextToText` + `AutoProcessor` from its `transformer/` and
`processor/` folders), the chat template and KV-cached `generate()`, and the samplers with prompt caching.
Outputs go to `outputs/`.
"""

import argparse
import os
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.tiny import tiny_tuna_model, tiny_tuna_processor

SIZE = 64


def build_repository(folder: Path, visual_encoder: str, seed: int) -> None:
    processor = tiny_tuna_processor(height=SIZE, width=SIZE)
    model = tiny_tuna_model(visual_encoder, processor.tokenizer, seed=seed)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.variant)
    TunaPipeline(transformer=model, processor=processor, scheduler=scheduler).save_pretrained(folder)


def answer(model, processor, image: Image.Image, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visual-encoder", default="patch", choices=["patch", "siglip", "vae_siglip"])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    repository = args.output_dir / "tiny-tuna"
    build_repository(repository, args.visual_encoder, args.seed)

    model = AutoModelForImageTextToText.from_pretrained(repository, subfolder="transformer", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(repository, subfolder="processor")
    image = Image.new("RGB", (SIZE, SIZE), "white")
    image.paste((220, 30, 30), (24, 24, 40, 40))
    question = "What color is the shape?"
    reply = answer(model, processor, image, question)

    pipe = TunaPipeline.from_pretrained(repository, dtype=torch.float32)
    prompt = "a red square at the center"
    generated = pipe(prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
    generated_path = args.output_dir / "text_to_image.png"
    generated.images[0].save(generated_path)

    edit = TunaEditPipeline.from_pipe(pipe)
    instruction = "make it blue"
    edited = edit(
        image, instruction, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)
    )
    edited_path = args.output_dir / "edit.png"
    edited.images[0].save(edited_path)

    report = args.output_dir / "report.txt"
    report.write_text(
        f"model: random tiny TUNA ({model.config.variant}), pipeline repository at {repository}\n"
        f"VQA   Q: {question}\n      A: {reply!r}  (random weights: not a real answer)\n"
        f"T2I   {prompt!r}, {args.steps} steps: {generated_path}\n"
        f"edit  {instruction!r}: {edited_path}\n"
    )
    print(report.read_text())
    print(f"Outputs written to {args.output_dir.resolve()}")


if __name__ == "__main__":
    main()
