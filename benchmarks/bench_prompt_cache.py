"""Text-to-image speed: prompt caching vs recomputing the prompt vs the official fixed-length layout, in one run.

Run by hand: `python benchmarks/bench_prompt_cache.py [--image-size 256] [--steps 8] [--hidden-size 256]`.
A random Tuna-2 (2 decoder + 2 flow-head layers) samples one prompt with CFG three ways:
* `official layout`: every step runs both rows at the official fixed length (2048 tokens up to 512², trailing
  `[PAD]`s included), as `tuna_2_pixel_pipeline.py` does;
* `uncached`: `TunaPipeline(use_prompt_cache=False)`, the prompt and the image span at every step;
* `cached`: `TunaPipeline` default, the prompt once and only the image span per step.
It prints seconds per image and the ratios, and checks that the three final samples agree.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from tuna_hf import TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.tiny import tiny_tuna_model, tiny_tuna_processor

OFFICIAL_SEQUENCE_LENGTH = 2048  # Tuna-2 / Tuna-R text-to-image up to 512² (`get_hyper_params`, anatomy §4.2)
PROMPT = (
    "a photograph of a small red fox sitting in tall golden grass at sunset, soft warm light, shallow depth of "
    "field, detailed fur, calm expression, distant hills and a few clouds in the sky"
)


def official_layout_sample(pipe, latents, steps, guidance_scale):
    """The official sampler loop: right-padded fixed-length rows, the whole sequence at every model call."""
    inputs = pipe.processor.build_generation_inputs([PROMPT], [""], height=latents.shape[-2], width=latents.shape[-1])
    input_ids = F.pad(inputs["input_ids"], (0, OFFICIAL_SEQUENCE_LENGTH - inputs["input_ids"].shape[1]), value=0)
    input_ids[input_ids == 0] = pipe.processor.pad_token_id
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        flow_time = scheduler.flow_time(t).expand(2)
        prediction = pipe.transformer(
            input_ids=input_ids, image_latents=torch.cat([latents, latents]), timesteps=flow_time, logits_to_keep=1
        ).flow_prediction
        cond, uncond = prediction.chunk(2)
        latents = scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
    return latents


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    size, steps, guidance = args.image_size, args.steps, 3.0
    processor = tiny_tuna_processor(height=size, width=size)
    model = tiny_tuna_model("patch", processor.tokenizer, hidden_size=args.hidden_size)
    pipe = TunaPipeline(model, processor, TunaFlowMatchScheduler.from_official_defaults("tuna_2"))
    pipe.set_progress_bar_config(disable=True)
    latents = 2 * torch.randn(1, 3, 1, size, size, generator=torch.Generator().manual_seed(0))

    def sample(use_prompt_cache):
        return pipe(
            PROMPT,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=latents,
            output_type="latent",
            use_prompt_cache=use_prompt_cache,
        ).images

    with torch.no_grad():
        sample(True)  # warm-up
        official, official_seconds = timed(lambda: official_layout_sample(pipe, latents, steps, guidance))
        uncached, uncached_seconds = timed(lambda: sample(False))
        cached, cached_seconds = timed(lambda: sample(True))
    for name, other in (("uncached", uncached), ("official layout", official)):
        difference = (cached - other).abs().max().item()
        assert difference < 1e-3, f"cached and {name} samples differ by {difference}"

    span = processor.num_image_tokens(size, size)
    prompt_tokens = len(processor.tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    print(
        f"{size}x{size}, {steps} model calls × 2 CFG rows, hidden {args.hidden_size}, threads {torch.get_num_threads()}"
    )
    print(
        f"tokens per row and call: official {OFFICIAL_SEQUENCE_LENGTH}, uncached {prompt_tokens + 2 + span}, "
        f"cached {span} (prompt {prompt_tokens + 2} once)"
    )
    print(f"official layout: {official_seconds:.3f} s")
    print(f"uncached:        {uncached_seconds:.3f} s")
    print(f"cached:          {cached_seconds:.3f} s")
    print(
        f"speed-up of caching: {uncached_seconds / cached_seconds:.2f}x over uncached, "
        f"{official_seconds / cached_seconds:.2f}x over the official layout"
    )


if __name__ == "__main__":
    main()
