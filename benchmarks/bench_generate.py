"""VQA decoding speed with and without the KV cache, measured side by side in one run on a tiny-but-deeper TUNA.

Run by hand: `python benchmarks/bench_generate.py [--new-tokens 32] [--image-size 256]`. Prints seconds per answer
for each mode and their ratio; the cached answer must equal the uncached one.
"""

import argparse
import time

import torch

from tuna_hf import TunaForUnifiedMultimodal
from tuna_hf.testing import tiny_tuna_config, tiny_tuna_processor


def timed_generate(model, inputs, new_tokens, use_cache):
    start = time.perf_counter()
    output = model.generate(
        **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache
    )
    return output, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    processor = tiny_tuna_processor(height=args.image_size, width=args.image_size)
    model = TunaForUnifiedMultimodal(
        tiny_tuna_config("patch", processor.tokenizer, hidden_size=args.hidden_size)
    ).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[torch.rand(3, args.image_size, args.image_size)], return_tensors="pt")
    with torch.no_grad():
        timed_generate(model, inputs, 2, True)  # warm-up
        cached, cached_seconds = timed_generate(model, inputs, args.new_tokens, True)
        uncached, uncached_seconds = timed_generate(model, inputs, args.new_tokens, False)
    assert torch.equal(cached, uncached), "cached and uncached greedy answers differ"
    print(
        f"prompt {inputs['input_ids'].shape[1]} tokens, {args.new_tokens} new tokens, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"with KV cache:    {cached_seconds:.3f} s")
    print(f"without KV cache: {uncached_seconds:.3f} s")
    print(f"speed-up: {uncached_seconds / cached_seconds:.2f}x")


if __name__ == "__main__":
    main()
