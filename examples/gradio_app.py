"""TUNA demo: visual question answering, text-to-image, editing, and text-to-video for Tuna, in one gradio app.

    python examples/gradio_app.py [--model checkpoints/shapes-tuna-2] [--host 127.0.0.1] [--port 7860]

`--model` is any pipeline repository folder or Hub repo id (default: the embedded shapes checkpoint). As a Hub
Space, copy this file as `app.py` and set `TUNA_MODEL` to the repo id.
"""

import argparse
import os
import tempfile
from pathlib import Path
from threading import Thread

import gradio as gr
import torch
from transformers import TextIteratorStreamer

from tuna_hf import TunaEditPipeline, TunaPipeline

DEFAULT_MODEL = os.environ.get(
    "TUNA_MODEL", str(Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tuna-2")
)
MAX_NEW_TOKENS = 128


class TunaDemo:
    """The pipelines behind the app; each method is one tab's action and raises `gr.Error` on bad input."""

    def __init__(self, model: str, dtype: torch.dtype = torch.float32):
        self.pipe = TunaPipeline.from_pretrained(model, dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.edit_pipe = TunaEditPipeline.from_pipe(self.pipe)
        self.model_name = model

    @property
    def config(self):
        return self.pipe.transformer.config

    @property
    def default_size(self) -> tuple[int, int]:
        size = self.pipe.processor.image_processor.size
        return size["height"], size["width"]

    def answer(self, image, question: str):
        """Streams the answer to `question` about `image` as it is decoded."""
        if image is None:
            raise gr.Error("Upload an image to ask about.")
        if not question or not question.strip():
            raise gr.Error("Enter a question.")
        processor = self.pipe.processor
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.strip()}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        try:
            inputs = processor(text=prompt, images=[image], return_tensors="pt")
        except ValueError as error:  # e.g. an image the processor refuses (README, "Image inputs")
            raise gr.Error(str(error)) from error
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        generation = {**inputs, "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "streamer": streamer}
        failures = []

        def decode():
            try:
                self.pipe.transformer.generate(**generation)
            except Exception as error:  # any failure is shown in the app; without `end()` the stream waits forever
                failures.append(error)
                streamer.end()

        Thread(target=decode).start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        if failures:
            raise gr.Error(str(failures[0]))

    def generate(
        self, prompt, negative_prompt, height, width, steps, guidance, seed, num_images, progress=gr.Progress()
    ):
        """Text-to-image: `num_images` samples of `prompt`."""
        self._check_text("prompt", prompt)
        result = self._run(
            self.pipe,
            progress,
            prompt=prompt.strip(),
            negative_prompt=negative_prompt or None,
            height=int(height),
            width=int(width),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            num_images_per_prompt=int(num_images),
            generator=torch.Generator().manual_seed(int(seed)),
        )
        return result.images

    def edit(self, image, instruction, steps, guidance, seed, progress=gr.Progress()):
        """Instruction-based editing of `image` at the model's default size."""
        if image is None:
            raise gr.Error("Upload the image to edit.")
        self._check_text("instruction", instruction)
        height, width = self.default_size
        result = self._run(
            self.edit_pipe,
            progress,
            image=image,
            prompt=instruction.strip(),
            height=height,
            width=width,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=torch.Generator().manual_seed(int(seed)),
        )
        return result.images[0]

    def video(self, prompt, num_frames, height, width, steps, guidance, seed, progress=gr.Progress()):
        """Text-to-video (Tuna): the frames as an animated GIF."""
        self._check_text("prompt", prompt)
        result = self._run(
            self.pipe,
            progress,
            prompt=prompt.strip(),
            num_frames=int(num_frames),
            height=int(height),
            width=int(width),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=torch.Generator().manual_seed(int(seed)),
        )
        frames = result.frames[0]
        path = Path(tempfile.mkdtemp()) / "video.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // 16, loop=0)
        return str(path)

    @staticmethod
    def _check_text(name: str, text) -> None:
        if not text or not text.strip():
            raise gr.Error(f"The {name} is empty: enter some text.")

    @staticmethod
    def _run(pipeline, progress, **call):
        """Calls the pipeline with a progress bar; its argument errors become messages in the app."""

        def report(pipe, step, timestep, callback_kwargs):
            progress((step + 1, pipe.num_timesteps), desc="sampling")
            return callback_kwargs

        try:
            return pipeline(**call, callback_on_step_end=report)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    def build(self) -> gr.Blocks:
        height, width = self.default_size
        step = self.config.pixels_per_token
        guidance = self.pipe.config
        with gr.Blocks(title="TUNA") as demo:
            gr.Markdown(f"# TUNA ({self.config.tuna_variant})\nModel: `{self.model_name}`")
            with gr.Tab("Visual question answering"):
                with gr.Row():
                    vqa_image = gr.Image(type="pil", image_mode=None, label="Image", format="png")
                    with gr.Column():
                        question = gr.Textbox(label="Question", value="What color is the shape?")
                        ask = gr.Button("Ask", variant="primary")
                        answer = gr.Textbox(label="Answer")
                ask.click(self.answer, [vqa_image, question], answer, api_name="answer")
            with gr.Tab("Text-to-image"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", value="a red circle at the top left")
                        negative = gr.Textbox(label="Negative prompt")
                        size = [
                            gr.Slider(step, 1024, value=height, step=step, label="Height"),
                            gr.Slider(step, 1024, value=width, step=step, label="Width"),
                        ]
                        steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                        scale = gr.Slider(1, 15, value=guidance.guidance_scale, step=0.5, label="Guidance")
                        seed = gr.Number(0, precision=0, label="Seed")
                        count = gr.Slider(1, 8, value=4, step=1, label="Number of images")
                        draw = gr.Button("Generate", variant="primary")
                    gallery = gr.Gallery(label="Images", columns=4, format="png")
                draw.click(
                    self.generate, [prompt, negative, *size, steps, scale, seed, count], gallery, api_name="generate"
                )
            with gr.Tab("Editing"):
                with gr.Row():
                    with gr.Column():
                        source = gr.Image(type="pil", image_mode=None, label="Image", format="png")
                        instruction = gr.Textbox(label="Instruction", value="make it blue")
                        edit_steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                        edit_scale = gr.Slider(1, 15, value=guidance.edit_guidance_scale, step=0.5, label="Guidance")
                        edit_seed = gr.Number(0, precision=0, label="Seed")
                        apply = gr.Button("Edit", variant="primary")
                    edited = gr.Image(type="pil", label="Edited", format="png")
                apply.click(
                    self.edit, [source, instruction, edit_steps, edit_scale, edit_seed], edited, api_name="edit"
                )
            if self.config.tuna_variant == "tuna":
                self._video_tab(height, width, step, guidance.video_guidance_scale)
        return demo

    def _video_tab(self, height, width, step, guidance):
        with gr.Tab("Text-to-video"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt")
                    frames = gr.Slider(5, 121, value=17, step=4, label="Frames (1 + 4k)")
                    size = [
                        gr.Slider(step, 1280, value=height, step=step, label="Height"),
                        gr.Slider(step, 1280, value=width, step=step, label="Width"),
                    ]
                    steps = gr.Slider(2, 100, value=20, step=1, label="Steps")
                    scale = gr.Slider(1, 15, value=guidance, step=0.5, label="Guidance")
                    seed = gr.Number(0, precision=0, label="Seed")
                    run = gr.Button("Generate video", variant="primary")
                video = gr.Image(type="filepath", label="Video (GIF)")
            run.click(self.video, [prompt, frames, *size, steps, scale, seed], video, api_name="video")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline repository folder or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    TunaDemo(args.model).build().queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
