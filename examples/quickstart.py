"""Quickstart: VQA with `generate()` and one flow prediction, on a freshly built *random* tiny TUNA.

No trained weights ship yet (the embedded shapes checkpoint is a later milestone), so the answer is noise and the
fresh flow head (AdaLN-Zero init) predicts a flat grey image. The run shows the API end to end: save/load through
the Auto classes, the chat template, the KV-cached `generate()`, and the flow head's prediction for an image being
denoised. Outputs go to `outputs/`.
"""

import argparse
import os
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tuna_hf import TunaForUnifiedMultimodal
from tuna_hf.tiny import tiny_tuna_config, tiny_tuna_processor


def build_repository(folder: Path, visual_encoder: str, seed: int) -> None:
    torch.manual_seed(seed)
    processor = tiny_tuna_processor()
    TunaForUnifiedMultimodal(tiny_tuna_config(visual_encoder, processor.tokenizer)).save_pretrained(
        folder / "transformer"
    )
    processor.save_pretrained(folder / "processor")


def answer(model, processor, image: Image.Image, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])[0]


def predict_clean_image(model, processor, prompt: str, height: int, width: int, seed: int) -> Image.Image:
    """One flow-head call at t = 0 on pure noise: x0 for the pixel variants (Tuna-R/Tuna-2)."""
    inputs = processor.build_generation_inputs([prompt], height=height, width=width)
    noise = 2 * torch.randn(1, 3, 1, height, width, generator=torch.Generator().manual_seed(seed))
    output = model(**inputs, image_latents=noise, timesteps=torch.zeros(1), logits_to_keep=1)
    return processor.image_processor.postprocess(output.flow_prediction[:, :, 0])[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visual-encoder", default="patch", choices=["patch", "siglip"])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    repository = args.output_dir / "tiny-tuna"
    build_repository(repository, args.visual_encoder, args.seed)
    model = AutoModelForImageTextToText.from_pretrained(repository, subfolder="transformer", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(repository, subfolder="processor")

    image = Image.new("RGB", (64, 64), "white")
    image.paste((220, 30, 30), (24, 24, 40, 40))
    question = "What color is the shape?"
    reply = answer(model, processor, image, question)
    prediction = predict_clean_image(model, processor, "a red square at the center", 64, 64, args.seed)
    prediction_path = args.output_dir / "flow_prediction.png"
    prediction.save(prediction_path)

    report = args.output_dir / "report.txt"
    report.write_text(
        f"model: random tiny TUNA ({args.visual_encoder}), saved at {repository}\n"
        f"VQA  Q: {question}\n     A: {reply!r}  (random weights: not a real answer)\n"
        f"flow prediction at t=0 for 'a red square at the center': {prediction_path}\n"
    )
    print(report.read_text())
    print(f"Outputs written to {args.output_dir.resolve()}")


if __name__ == "__main__":
    main()
