"""TUNA demo: visual question answering, text-to-image, editing, and text-to-video for Tuna, in one gradio app.

    python examples/gradio_app.py [--model checkpoints/shapes-tuna-2] [--host 127.0.0.1] [--port 7860]
        [--concurrency 2] [--queue-size 16]

`--model` is any pipeline repository folder or Hub repo id (default: the embedded shapes checkpoint). As a Hub
Space, copy this file as `app.py` and set `TUNA_MODEL` to the repo id. Small pictures are shown upscaled with
nearest-neighbour (every model pixel a k×k block, `upscale`) on a visible canvas border; the examples come from the
shapes world of the embedded checkpoint (`tuna_hf.demo.shapes`). The app writes only to temporary folders (gradio's
file cache, and `tempfile` for videos).
"""

import argparse
import os
import re
import tempfile
from pathlib import Path
from threading import Thread

import gradio as gr
import PIL.Image
import torch
from transformers import TextIteratorStreamer

from tuna_hf import TunaEditPipeline, TunaPipeline
from tuna_hf.demo.shapes import QUESTIONS, Edit, Scene

DEFAULT_MODEL = os.environ.get(
    "TUNA_MODEL", str(Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tuna-2")
)
MAX_NEW_TOKENS = 128
# Pictures smaller than this (longest side, pixels) are shown upscaled by the largest integer factor that fits.
DISPLAY_SIDE = 256
CANVAS_HEIGHT = 380  # px, of the image components: a 256-pixel picture, its border and the component's label


def positive_int(value: str, name: str = "the value") -> int:
    """A count of at least 1 from the command line or the environment, else an error naming `name`."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{name} must be a whole number ≥ 1, got {value!r}")
    return int(value)


# Model calls running at once, over all tabs (one shared gradio concurrency group), and requests that may wait.
CONCURRENCY = positive_int(os.environ.get("TUNA_CONCURRENCY", "2"), "TUNA_CONCURRENCY")
QUEUE_SIZE = positive_int(os.environ.get("TUNA_QUEUE_SIZE", "16"), "TUNA_QUEUE_SIZE")
MODEL_CALLS = "model"

# Examples from the shapes world the embedded checkpoint was trained on (prompts are its captions, `Scene.caption`).
ANSWER_EXAMPLES = (
    (Scene("blue", "square", "bottom right"), "color"),
    (Scene("orange", "triangle", "top"), "shape"),
    (Scene("green", "circle", "left"), "position"),
)
GENERATE_EXAMPLES = (
    Scene("red", "circle", "top left"),
    Scene("orange", "triangle", "bottom"),
    Scene("blue", "square", "center"),
    Scene("purple", "circle", "right"),
)
EDIT_EXAMPLES = (
    Edit(Scene("blue", "square", "bottom right"), "color", Scene("red", "square", "bottom right")),
    Edit(Scene("green", "circle", "center"), "shape", Scene("green", "triangle", "center")),
    Edit(Scene("yellow", "triangle", "top left"), "position", Scene("yellow", "triangle", "bottom right")),
)

# `.tuna-canvas`: image components whose pictures are drawn pixelated (nearest-neighbour when the browser scales them,
# e.g. an uploaded 64×64 picture shown at 256) inside a grey border, so that a white canvas has visible edges.
CSS = """
.tuna-canvas img { image-rendering: pixelated; }
.tuna-canvas .image-frame img {
    width: auto !important; height: auto !important; min-width: 256px;
    max-width: 100% !important; max-height: 100% !important; object-fit: contain !important;
    border: 1px solid #9ca3af; box-sizing: content-box;
}
.tuna-canvas .image-frame { display: flex; align-items: center; justify-content: center; }
.tuna-canvas .thumbnail-item { border: 1px solid #9ca3af !important; }
.tuna-canvas .thumbnail-item.selected {
    border-color: var(--color-accent) !important; outline: 2px solid var(--color-accent);
}
.tuna-canvas .thumbnail-item img { object-fit: contain !important; }
.tuna-canvas .grid-wrap.fixed-height { max-height: none !important; min-height: 0 !important; overflow-y: visible; }
.tuna-canvas .grid-container {
    grid-template-columns: repeat(auto-fill, 258px) !important; grid-template-rows: none !important;
    grid-auto-rows: 258px !important; justify-content: center;
}
"""


class RejectedInput(gr.Error):
    """Input the demo refuses, shown in the app as a plain message; not a fault, so no traceback in the log."""

    def __init__(self, message: str):
        super().__init__(plain_message(message), title="Check the input", print_exception=False)


def plain_message(text: str) -> str:
    """A library message for the app: `code` marks dropped, the first letter capitalised."""
    text = re.sub(r"`([^`]*)`", r"\1", str(text)).replace("`", "").strip()
    return text[:1].upper() + text[1:]


def upscale(image: PIL.Image.Image, side: int = DISPLAY_SIDE) -> PIL.Image.Image:
    """`image` enlarged by the largest integer factor that keeps its longest side within `side` (at least 1), with
    nearest-neighbour: every pixel becomes an exact k×k block, nothing is interpolated."""
    factor = max(1, side // max(image.size))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)


def canvas_image(**kwargs) -> gr.Image:
    """An image input shown on the bordered canvas (any mode, kept as PNG), e.g. an edit's source."""
    return gr.Image(
        type="pil",
        image_mode=None,
        label="Image",
        format="png",
        height=CANVAS_HEIGHT,
        elem_classes="tuna-canvas",
        **kwargs,
    )


def examples(tab: str, rows: list[list], inputs: list) -> gr.Examples:
    """Example inputs of `tab` from the shapes world; a click fills the inputs (nothing is cached to disk)."""
    return gr.Examples(
        rows, inputs, label="Examples (shapes world)", elem_id=f"tuna-{tab}-examples", cache_examples=False
    )


def choice_note(index: int | None, count: int) -> str:
    """The line under the gallery: which picture *Use as edit source* sends."""
    if not count:
        return "Generate pictures, click one to choose it, then send it to the editing tab."
    return f"Chosen: picture {index + 1} of {count} (click another to change). *Use as edit source* sends it."


def model_label(model: str) -> str:
    """A local folder by its name, a Hub repo by its id."""
    path = Path(model)
    return path.name if path.is_dir() else model


class TunaDemo:
    """The pipelines behind the app; each method is one tab's action and raises `gr.Error` on bad input.

    The pipelines keep every call's state on the call (locks guard the few modules that cannot,
    `tuna_hf.locks`), so requests of several users may run at once: `launch` lets `concurrency` model calls run
    together and queues up to `queue_size` more."""

    def __init__(self, model: str, dtype: torch.dtype = torch.float32):
        self.pipe = TunaPipeline.from_pretrained(model, dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.edit_pipe = TunaEditPipeline.from_pipe(self.pipe)
        self.edit_pipe.set_progress_bar_config(disable=True)
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
            raise RejectedInput("Upload an image to ask about.")
        if not question or not question.strip():
            raise RejectedInput("Enter a question.")
        processor = self.pipe.processor
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.strip()}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        try:
            inputs = processor(text=prompt, images=[image], return_tensors="pt")
        except ValueError as error:  # e.g. an image the processor refuses (README, "Image inputs")
            raise RejectedInput(str(error)) from error
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        generation = {**inputs, "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "streamer": streamer}
        failures = []

        def decode():
            try:
                self.pipe.transformer.generate(**generation)
            except Exception as error:  # any failure is shown in the app; without `end()` the stream waits forever
                failures.append(error)
                streamer.end()

        Thread(target=decode, daemon=True).start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        if failures:
            if isinstance(failures[0], ValueError):
                raise RejectedInput(str(failures[0])) from failures[0]
            raise gr.Error(plain_message(failures[0])) from failures[0]

    def generate(
        self, prompt, negative_prompt, height, width, steps, guidance, seed, num_images, progress=gr.Progress()
    ) -> list[PIL.Image.Image]:
        """Text-to-image: `num_images` samples of `prompt`, at the model's resolution."""
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

    def edit(self, image, instruction, steps, guidance, seed, progress=gr.Progress()) -> PIL.Image.Image:
        """Instruction-based editing of `image` at the model's default size."""
        if image is None:
            raise RejectedInput("Upload the image to edit, or send one from the text-to-image tab.")
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
        """Text-to-video (Tuna): the frames as an animated GIF, in a temporary folder of its own (`tempfile`)."""
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

    # The app's actions: the same calls, with pictures for display (`upscale`) and the model's own in a gr.State.

    def show_generated(self, *inputs, progress=gr.Progress()):
        images = self.generate(*inputs, progress=progress)
        return [upscale(image) for image in images], images, 0

    def show_edited(self, *inputs, progress=gr.Progress()):
        image = self.edit(*inputs, progress=progress)
        return upscale(image), image

    @staticmethod
    def note_choice(images) -> str:
        return choice_note(0, len(images))

    @staticmethod
    def select_image(images, event: gr.SelectData):
        return event.index, choice_note(event.index, len(images))

    @staticmethod
    def use_as_edit_source(images, index):
        """The chosen generated picture (model resolution), into the editing tab, which opens."""
        if not images:
            raise RejectedInput("Generate an image first, then choose it in the gallery.")
        return images[index], gr.Tabs(selected="edit")

    @staticmethod
    def edit_again(image):
        """The edited picture (model resolution) becomes the source of the next edit."""
        if image is None:
            raise RejectedInput("Edit an image first.")
        return image

    @staticmethod
    def _check_text(name: str, text) -> None:
        if not text or not text.strip():
            raise RejectedInput(f"The {name} is empty: enter some text.")

    @staticmethod
    def _run(pipeline, progress, **call):
        """Calls the pipeline with a progress bar; its argument errors become messages in the app."""

        def report(pipe, step, timestep, callback_kwargs):
            progress((step + 1, pipe.num_timesteps), desc="sampling")
            return callback_kwargs

        try:
            return pipeline(**call, callback_on_step_end=report)
        except ValueError as error:
            raise RejectedInput(str(error)) from error

    def build(self) -> gr.Blocks:
        height, width = self.default_size
        step = self.config.pixels_per_token
        guidance = self.pipe.config
        model = {"concurrency_id": MODEL_CALLS}  # every model call counts against the one limit
        helper = {"queue": False, "api_visibility": "undocumented"}
        with gr.Blocks(title="TUNA") as demo:
            gr.Markdown(
                f"# TUNA ({self.config.tuna_variant})\nModel: `{model_label(self.model_name)}`, "
                f"{height}×{width} pictures, shown enlarged (nearest-neighbour) when small."
            )
            with gr.Tabs() as tabs:
                with gr.Tab("Visual question answering", id="answer", elem_id="tuna-answer-tab"):
                    with gr.Row():
                        vqa_image = canvas_image()
                        with gr.Column():
                            question = gr.Textbox(label="Question", value=QUESTIONS["color"])
                            ask = gr.Button("Ask", variant="primary")
                            answer = gr.Textbox(label="Answer")
                    examples(
                        "answer",
                        [[scene.draw(), QUESTIONS[attribute]] for scene, attribute in ANSWER_EXAMPLES],
                        [vqa_image, question],
                    )
                    ask.click(self.answer, [vqa_image, question], answer, api_name="answer", **model)
                with gr.Tab("Text-to-image", id="generate", elem_id="tuna-generate-tab"):
                    generated = gr.State([])
                    chosen = gr.State(0)
                    with gr.Row():
                        with gr.Column():
                            prompt = gr.Textbox(label="Prompt", value=GENERATE_EXAMPLES[0].caption)
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
                        with gr.Column():
                            gallery = gr.Gallery(
                                show_label=False,  # the floating label would cover the first picture
                                columns=2,
                                object_fit="contain",
                                format="png",
                                elem_id="tuna-gallery",
                                elem_classes="tuna-canvas",
                                buttons=["download", "fullscreen"],
                            )
                            note = gr.Markdown(choice_note(None, 0))
                            to_edit = gr.Button("Use as edit source")
                    examples("generate", [[scene.caption] for scene in GENERATE_EXAMPLES], [prompt])
                    draw.click(
                        self.show_generated,
                        [prompt, negative, *size, steps, scale, seed, count],
                        [gallery, generated, chosen],
                        api_name="generate",
                        **model,
                    ).success(self.note_choice, generated, note, **helper)
                    gallery.select(self.select_image, generated, [chosen, note], **helper)
                with gr.Tab("Editing", id="edit", elem_id="tuna-edit-tab"):
                    edited_native = gr.State(None)
                    with gr.Row():
                        with gr.Column():
                            source = canvas_image(elem_id="tuna-source")
                            instruction = gr.Textbox(label="Instruction", value="make it blue")
                            edit_steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                            edit_scale = gr.Slider(
                                1, 15, value=guidance.edit_guidance_scale, step=0.5, label="Guidance"
                            )
                            edit_seed = gr.Number(0, precision=0, label="Seed")
                            apply = gr.Button("Edit", variant="primary")
                        with gr.Column():
                            edited = gr.Image(
                                type="pil",
                                label="Edited",
                                format="png",
                                height=CANVAS_HEIGHT,
                                interactive=False,
                                elem_id="tuna-edited",
                                elem_classes="tuna-canvas",
                            )
                            again = gr.Button("Edit the result again")
                    examples(
                        "edit",
                        [[edit.source.draw(), edit.instruction] for edit in EDIT_EXAMPLES],
                        [source, instruction],
                    )
                    apply.click(
                        self.show_edited,
                        [source, instruction, edit_steps, edit_scale, edit_seed],
                        [edited, edited_native],
                        api_name="edit",
                        **model,
                    )
                    again.click(self.edit_again, edited_native, source, api_name="edit_again", **helper)
                to_edit.click(
                    self.use_as_edit_source,
                    [generated, chosen],
                    [source, tabs],
                    api_name="use_as_edit_source",
                    **helper,
                )
                if self.config.tuna_variant == "tuna":
                    self._video_tab(height, width, step, guidance.video_guidance_scale)
        return demo

    def _video_tab(self, height, width, step, guidance):
        with gr.Tab("Text-to-video", id="video", elem_id="tuna-video-tab"):
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
                video = gr.Image(type="filepath", label="Video (GIF)", elem_classes="tuna-canvas")
            run.click(
                self.video,
                [prompt, frames, *size, steps, scale, seed],
                video,
                api_name="video",
                concurrency_id=MODEL_CALLS,
            )

    def launch(self, concurrency: int = CONCURRENCY, queue_size: int = QUEUE_SIZE, **launch_kwargs) -> gr.Blocks:
        """Builds the app, queues it (`concurrency` model calls at once, `queue_size` waiting) and serves it."""
        demo = self.build().queue(default_concurrency_limit=concurrency, max_size=queue_size)
        demo.launch(css=CSS, **launch_kwargs)
        return demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline repository folder or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--concurrency", type=positive_int, default=CONCURRENCY, help="model calls running at once")
    parser.add_argument("--queue-size", type=positive_int, default=QUEUE_SIZE, help="requests that may wait")
    args = parser.parse_args()
    TunaDemo(args.model).launch(args.concurrency, args.queue_size, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
