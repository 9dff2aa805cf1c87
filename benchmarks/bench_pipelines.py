"""Pipeline speed and memory: prompt caching on, off, and the official-style full recompute, side by side in one run.

Run by hand: `python benchmarks/bench_pipelines.py [--variant tuna_2] [--size 512] [--steps 50] [--layers 4]`.
A random tiny-but-deeper TUNA samples one text-to-image prompt and one edit with CFG three ways:
* `official`: every model call runs both rows over the whole sequence padded to the official fixed length
  (text-to-image 2,048 tokens for Tuna-R/Tuna-2 up to 512², 8,192 for Tuna; editing 4,096 / 3,072; the official
  `get_hyper_params`), as the official pipelines do;
* `uncached`: `use_prompt_cache=False`, the prompt and the image span at every call, no trailing padding;
* `cached`: the default, the prompt once and only the image span per call.
It prints seconds per image, peak resident memory above the model's, the speed-ups, and checks that the three
samples agree.
"""

import argparse
import ctypes
import os
import threading
import time

import torch
import torch.nn.functional as F

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.pipelines import TunaPromptRows
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

OFFICIAL_LENGTHS = {  # (text-to-image, editing) sequence lengths of the official pipelines at 512²
    "tuna": (8192, 3072),
    "tuna_r": (2048, 4096),
    "tuna_2": (2048, 4096),
}
ENCODERS = {"tuna": "vae_siglip", "tuna_r": "siglip", "tuna_2": "patch"}
PROMPT = (
    "a photograph of a small red fox sitting in tall golden grass at sunset, soft warm light, shallow depth of "
    "field, detailed fur, calm expression, distant hills and a few clouds in the sky"
)
INSTRUCTION = "replace the fox with a grey rabbit and make the sky overcast"


class PeakMemory:
    """Peak resident memory above the start while the block runs, sampled every 2 ms from /proc (CPU torch has no
    allocator statistics)."""

    def __enter__(self):
        # Give freed heap pages back first, so that an earlier mode's peak does not hide this one's.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.baseline = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def megabytes(self) -> float:
        return (self.peak - self.baseline) / 2**20


def official_sample(pipe, inputs, length, span_length, latents, steps, guidance, sources=None):
    """The official loop: right-padded fixed-length rows, the whole sequence at every call, `[PAD]`s attended. The
    rows go on after their target span (so `TunaPromptRows.prompt_length` means nothing here); each holds its source
    image, if any, then the target."""
    input_ids = F.pad(inputs["input_ids"], (0, length - inputs["input_ids"].shape[1]), value=-1)
    input_ids[input_ids == -1] = pipe.processor.pad_token_id
    rows = TunaPromptRows(input_ids, torch.ones_like(input_ids), span_length, guided=True, prompt_images=sources)
    scheduler = pipe.scheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        flow_time = 1 - t / scheduler.config.num_train_timesteps
        prediction = pipe.transformer(
            input_ids=rows.input_ids,
            attention_mask=rows.attention_mask,
            position_ids=rows.position_ids,
            image_latents=rows.images_with(torch.cat([latents, latents])),
            timesteps=rows.timesteps_with(flow_time.expand(2)),
            logits_to_keep=1,
        ).flow_prediction
        cond, uncond = rows.target_prediction(prediction).chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


def measure(function):
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
    return result, seconds, memory.megabytes


def report(task, tokens, results):
    official, uncached, cached = results["official"], results["uncached"], results["cached"]
    for name, (sample, _, _) in results.items():
        difference = (cached[0] - sample).abs().max().item()
        assert difference < 1e-3, f"{task}: cached and {name} samples differ by {difference}"
    print(f"\n{task}: tokens per row and call: " + ", ".join(f"{k} {v}" for k, v in tokens.items()))
    for name, (_, seconds, megabytes) in results.items():
        print(f"  {name:9s} {seconds:8.2f} s   peak +{megabytes:7.1f} MB")
    print(
        f"  caching: {official[1] / cached[1]:.2f}x faster than official, {uncached[1] / cached[1]:.2f}x than uncached"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tuna_2", choices=sorted(OFFICIAL_LENGTHS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    size, steps, guidance = args.size, args.steps, 3.0
    processor = tiny_tuna_processor(height=size, width=size)
    model = tiny_tuna_model(
        ENCODERS[args.variant], processor.tokenizer, hidden_size=args.hidden_size, num_layers=args.layers
    )
    scheduler = TunaFlowMatchScheduler.from_official_defaults(args.variant, solver="euler")
    pipe = TunaPipeline(model, processor, scheduler)
    edit = TunaEditPipeline.from_pipe(pipe)
    for p in (pipe, edit):
        p.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    side = size // pipe.vae_scale_factor
    latents = scheduler.init_noise_sigma * torch.randn(
        1, model.config.latent_channels, 1, side, side, generator=generator
    )
    source = torch.randn(1, model.config.latent_channels, 1, side, side, generator=generator)
    span = processor.num_image_tokens(size, size)
    t2i_length, edit_length = OFFICIAL_LENGTHS[args.variant]
    common = {"num_inference_steps": steps, "guidance_scale": guidance, "latents": latents, "output_type": "latent"}
    print(
        f"{args.variant} {size}x{size}, {scheduler.config.solver} {steps} steps, hidden {args.hidden_size}, "
        f"{args.layers}+{args.layers} layers, threads {torch.get_num_threads()}"
    )

    def t2i(cache):
        return pipe(PROMPT, negative_prompt="", use_prompt_cache=cache, **common).images

    def editing(cache):
        return edit(
            image_latents=source, prompt=INSTRUCTION, negative_prompt="", use_prompt_cache=cache, **common
        ).images

    t2i_inputs = processor.build_generation_inputs([PROMPT], [""], height=size, width=size)
    edit_inputs = processor.build_edit_inputs([INSTRUCTION], [""], height=size, width=size)
    prompt_tokens = len(processor.tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    instruction_tokens = len(processor.tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        pipe(PROMPT, num_inference_steps=2, output_type="latent")  # warm-up
        results = {
            "official": measure(lambda: official_sample(pipe, t2i_inputs, t2i_length, span, latents, steps, guidance)),
            "uncached": measure(lambda: t2i(False)),
            "cached": measure(lambda: t2i(True)),
        }
        report(
            "text-to-image", {"official": t2i_length, "uncached": prompt_tokens + 2 + span, "cached": span}, results
        )
        sources = torch.cat([source, source])
        results = {
            "official": measure(
                lambda: official_sample(pipe, edit_inputs, edit_length, span, latents, steps, guidance, sources)
            ),
            "uncached": measure(lambda: editing(False)),
            "cached": measure(lambda: editing(True)),
        }
        edit_tokens = {"official": edit_length, "uncached": 2 * span + instruction_tokens + 4, "cached": span}
        report("editing", edit_tokens, results)


if __name__ == "__main__":
    main()
