"""Compiled against eager, measured side by side in one run: regional compilation of the denoising step, and the
static-cache compiled decoding of VQA.

Run by hand: `python benchmarks/bench_compile.py [--size 256] [--steps 20] [--layers 4] [--hidden-size 256]
[--new-tokens 32]`. Three measurements, each eager first (after a warm-up call), then compiled (inductor) after a
warm-up call that pays the compilation (printed separately):
* text-to-image with the shapes checkpoint (64², a batch of 8 prompts, CFG);
* text-to-image with a random Tuna-2 of `--hidden-size` and `--layers` decoder and flow-head layers at `--size`²;
  both with `transformer.compile_repeated_blocks(fullgraph=True)`;
* VQA greedy decoding of `--new-tokens` tokens on that random model: dynamic cache eager against
  `cache_implementation="static"` with a full-graph `compile_config`.
It prints seconds per image or per token, the compiled / eager ratio, and the largest difference of the outputs.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import CompileConfig

from tuna_hf import TunaPipeline
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
SHAPES_PROMPTS = [f"a {color} {shape} at the center" for color in ("red", "blue") for shape in ("circle", "square")]
PROMPT = "a photograph of a small red fox sitting in tall golden grass at sunset"


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def compare_pipelines(name: str, pipe: TunaPipeline, prompts: list[str], steps: int) -> None:
    """Seconds per image eager, then with the repeated blocks compiled."""
    pipe.set_progress_bar_config(disable=True)

    def sample():
        generator = torch.Generator().manual_seed(0)
        return pipe(prompts, num_inference_steps=steps, generator=generator, output_type="pt").images

    sample()  # warm-up: the first call's one-time costs stay out of the eager figure too
    eager, eager_seconds = timed(sample)
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    _, warm_up_seconds = timed(sample)
    compiled, compiled_seconds = timed(sample)
    per_image = [seconds / len(prompts) for seconds in (eager_seconds, compiled_seconds)]
    print(
        f"{name}: eager {per_image[0]:.3f} s/image, compiled {per_image[1]:.3f} s/image "
        f"(compiled / eager {per_image[1] / per_image[0]:.2f}; first compiled call {warm_up_seconds:.1f} s), "
        f"max |Δpixel| {(compiled - eager).abs().max():.4f}",
        flush=True,
    )


def compare_decoding(model, processor, size: int, new_tokens: int) -> None:
    """Seconds per token of greedy VQA: dynamic cache eager, then static cache compiled."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[torch.rand(3, size, size)], return_tensors="pt")
    tokens = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told so
    static = {"cache_implementation": "static", "compile_config": compile_config}
    model.generate(**inputs, **tokens)  # warm-up
    eager, eager_seconds = timed(lambda: model.generate(**inputs, **tokens))
    _, warm_up_seconds = timed(lambda: model.generate(**inputs, **tokens, **static))
    compiled, compiled_seconds = timed(lambda: model.generate(**inputs, **tokens, **static))
    per_token = [seconds / new_tokens for seconds in (eager_seconds, compiled_seconds)]
    print(
        f"VQA decoding ({new_tokens} tokens): eager {per_token[0] * 1000:.1f} ms/token, static compiled "
        f"{per_token[1] * 1000:.1f} ms/token (compiled / eager {per_token[1] / per_token[0]:.2f}; first compiled "
        f"call {warm_up_seconds:.1f} s), same tokens: {torch.equal(compiled, eager)}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "shapes-tuna-2")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    with torch.no_grad():
        shapes = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
        compare_pipelines("shapes checkpoint, 64²", shapes, SHAPES_PROMPTS * 2, args.steps)
        torch._dynamo.reset()
        processor = tiny_tuna_processor(height=args.size, width=args.size)
        model = tiny_tuna_model("patch", processor.tokenizer, hidden_size=args.hidden_size, num_layers=args.layers)
        pipe = TunaPipeline(transformer=model, processor=processor, scheduler=shapes.scheduler)
        name = f"random Tuna-2 (hidden {args.hidden_size}, {args.layers}+{args.layers} layers), {args.size}²"
        compare_pipelines(name, pipe, [PROMPT], args.steps)
        torch._dynamo.reset()
        decoding_model = tiny_tuna_model("patch", processor.tokenizer, hidden_size=args.hidden_size, num_layers=4)
        compare_decoding(decoding_model, processor, args.size, args.new_tokens)


if __name__ == "__main__":
    main()
