"""Seconds per image and peak memory of an official-preset-shaped TUNA with random weights, made directly on the
accelerator (no download), for a GPU; `--preset tiny` runs the same code in seconds on a CPU (CI does, so it cannot
rot).

    python benchmarks/bench_gpu.py --preset tuna-2-7b [--sizes 512 1024] [--steps 50] [--new-tokens 64]
    python benchmarks/bench_gpu.py --preset tiny --sizes 32 --steps 2 --new-tokens 4 [--compile-backend eager]

Text-to-image and editing (one prompt, guided), at each size:
for bf16 and for int8 (torchao weight-only; `_keep_in_fp32_modules` and the LM head kept), each on a fresh model:
1. eager: prompt cache on and, in bf16, off and the official-style recompute of whole rows padded to the official
   length (`bench_pipelines.official_sample`; longer rows, and the tiny preset's, are padded to their own length);
2. VQA greedy decoding of `--new-tokens` tokens on a `--sizes[0]`² image, seconds per token: dynamic cache eager,
   static cache compiled;
3. prompt cache on with `compile_repeated_blocks(fullgraph=True)` (timed after a warm-up call that compiles).
Peak memory is the accelerator's peak allocation during the call (on a CPU: peak resident memory above the start).
The presets' sizes are those of `benchmarks/sizing.py`.
"""

import argparse
import time

import torch
from bench_pipelines import INSTRUCTION, OFFICIAL_LENGTHS, PROMPT, PeakMemory, official_sample
from transformers import CompileConfig

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.convert_official import official_token_ids, tuna_config_from_official
from tuna_hf.official_presets import OFFICIAL_PRESETS
from tuna_hf.testing import build_byte_tokenizer, tiny_tuna_config, tiny_tuna_processor

PRESETS = ("tiny", *OFFICIAL_PRESETS)


def build_model(preset: str, tokenizer, device: torch.device) -> TunaForUnifiedMultimodal:
    """A random model of `preset`'s shape, made in bf16 on `device` (the VAE in float32)."""
    if preset == "tiny":
        config = tiny_tuna_config("patch", tokenizer)
    else:
        spec = OFFICIAL_PRESETS[preset]
        token_ids = official_token_ids(tokenizer)
        config = tuna_config_from_official(
            spec["official_class"], spec["model_kwargs"], spec["llm_config"], token_ids, spec["siglip_config"]
        )
    with torch.device(device):
        model = TunaForUnifiedMultimodal._from_config(config, dtype=torch.bfloat16)
    if model.model.vae is not None:
        model.model.vae.float()
    return model.eval()


def quantize_int8(model: TunaForUnifiedMultimodal) -> None:
    """torchao int8 weight-only, in place, on the linear layers a transformers quantizer would convert."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    kept = (*model._keep_in_fp32_modules, "lm_head")
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, name: _quantizable(module, name, kept))


def _quantizable(module: torch.nn.Module, name: str, kept: tuple[str, ...]) -> bool:
    return isinstance(module, torch.nn.Linear) and not any(name == k or name.startswith(k + ".") for k in kept)


class Peak:
    """Seconds and peak memory (MiB) of the block: the accelerator's allocator, or the CPU's resident memory."""

    def __init__(self, device: torch.device):
        self.accelerator = device.type != "cpu"

    def __enter__(self):
        if self.accelerator:
            torch.accelerator.synchronize()
            torch.accelerator.reset_peak_memory_stats()
        else:
            self.rss = PeakMemory().__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.accelerator:
            torch.accelerator.synchronize()
        self.seconds = time.perf_counter() - self.start
        if self.accelerator:
            self.mebibytes = torch.accelerator.max_memory_allocated() / 2**20
        else:
            self.rss.__exit__(*exc)
            self.mebibytes = self.rss.megabytes


def run(label: str, function, device: torch.device, per: str = "image", count: int = 1) -> None:
    with Peak(device) as peak:
        function()
    print(f"  {label:44s} {peak.seconds / count:9.3f} s/{per}   peak {peak.mebibytes:9.1f} MiB", flush=True)


def sampling_calls(pipe, edit, size: int, steps: int, device: torch.device, official: bool) -> dict:
    """The calls to time at `size`²: text-to-image and editing, cached, uncached and official-style (rows padded
    to the official length if `official`, else to their own)."""
    config = pipe.transformer.config
    side = size // pipe.vae_scale_factor
    generator = torch.Generator(device).manual_seed(0)
    shape = (1, config.latent_channels, 1, side, side)
    latents = pipe.scheduler.init_noise_sigma * torch.randn(shape, generator=generator, device=device)
    source = torch.randn(shape, generator=generator, device=device)
    common = {"num_inference_steps": steps, "guidance_scale": 3.0, "latents": latents, "output_type": "latent"}
    common.update(height=size, width=size)
    span = pipe.processor.num_image_tokens(size, size)
    t2i_length, edit_length = OFFICIAL_LENGTHS[config.tuna_variant] if official else (0, 0)
    t2i_inputs = pipe.processor.build_generation_inputs([PROMPT], [""], height=size, width=size).to(device)
    edit_inputs = pipe.processor.build_edit_inputs([INSTRUCTION], [""], height=size, width=size).to(device)
    t2i_length, edit_length = (
        max(length, inputs["input_ids"].shape[1])
        for length, inputs in ((t2i_length, t2i_inputs), (edit_length, edit_inputs))
    )
    sources = torch.cat([source, source])

    def t2i(cache=True):
        return pipe(PROMPT, negative_prompt="", use_prompt_cache=cache, **common)

    def editing(cache=True):
        return edit(image_latents=source, prompt=INSTRUCTION, negative_prompt="", use_prompt_cache=cache, **common)

    return {
        "text-to-image": {
            "cache on": t2i,
            "cache off": lambda: t2i(False),
            f"official padded to {t2i_length}": lambda: official_sample(
                pipe, t2i_inputs, t2i_length, span, latents, steps, 3.0
            ),
        },
        "editing": {
            "cache on": editing,
            "cache off": lambda: editing(False),
            f"official padded to {edit_length}": lambda: official_sample(
                pipe, edit_inputs, edit_length, span, latents, steps, 3.0, sources
            ),
        },
    }


def decoding_calls(model, processor, size: int, new_tokens: int, device: torch.device, backend: str) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[torch.rand(3, size, size)], return_tensors="pt").to(device)
    tokens = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend=backend)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told so
    static = {"cache_implementation": "static", "compile_config": compile_config}
    return {
        "dynamic cache, eager": lambda: model.generate(**inputs, **tokens),
        "static cache, compiled": lambda: model.generate(**inputs, **tokens, **static),
    }


def build_pipelines(preset: str, tokenizer, device: torch.device, precision: str):
    torch.manual_seed(0)
    model = build_model(preset, tokenizer, device)
    if precision == "int8":
        quantize_int8(model)
    processor = tiny_tuna_processor(tokenizer, pixels_per_token=model.config.pixels_per_token)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant, solver="euler")
    pipe = TunaPipeline(model, processor, scheduler)
    edit = TunaEditPipeline.from_pipe(pipe)
    for part in (pipe, edit):
        part.set_progress_bar_config(disable=True)
    return pipe, edit


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="tuna-2-7b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: the current accelerator, else the CPU")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (CI: eager)")
    args = parser.parse_args(argv)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(args.device or accelerator or "cpu")
    tokenizer = build_byte_tokenizer()
    print(f"{args.preset} on {device}, {args.steps} steps, sizes {args.sizes}")
    for precision in ("bf16", "int8"):  # a fresh model each: compiled blocks stay compiled
        pipe, edit = build_pipelines(args.preset, tokenizer, device, precision)
        official = args.preset != "tiny"
        calls = {size: sampling_calls(pipe, edit, size, args.steps, device, official) for size in args.sizes}
        with torch.no_grad():
            print(f"{precision}, eager")
            for size, tasks in calls.items():
                for task, modes in tasks.items():
                    for mode, call in modes.items() if precision == "bf16" else [("cache on", modes["cache on"])]:
                        run(f"{task} {size}², {mode}", call, device)
            decoding = decoding_calls(
                pipe.transformer, pipe.processor, args.sizes[0], args.new_tokens, device, args.compile_backend
            )
            for name, call in decoding.items():
                call()  # warm-up (the static cache's step compiles)
                run(f"VQA, {name}", call, device, per="token", count=args.new_tokens)
            print(f"{precision}, compile_repeated_blocks(fullgraph=True), cache on")
            pipe.transformer.compile_repeated_blocks(fullgraph=True, backend=args.compile_backend)
            for size, tasks in calls.items():
                for task, modes in tasks.items():
                    modes["cache on"]()  # warm-up (compiles)
                    run(f"{task} {size}²", modes["cache on"], device)
        del pipe, edit, calls, decoding
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
