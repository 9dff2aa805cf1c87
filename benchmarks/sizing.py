"""GPU memory of the official TUNA presets, each built on the meta device (no memory, no download).

Run by hand: `python benchmarks/sizing.py [--presets tuna-2b tuna-7b] [--markdown]`. Prints three tables (GiB =
2**30 bytes; markdown with `--markdown`): the weights per component at bf16, int8 and 4-bit; the prompt caches and
activations of one guided call (text-to-image at 512² and 1024², editing at 512²); and per preset and precision the
estimated peak of each call and the smallest GPU class that holds them. The rules, all estimates:

* Weights. bf16: 2 bytes a parameter, but the Wan VAE's 4: the model keeps it in float32
  (`_keep_in_fp32_modules_strict`). int8 / 4-bit: 1 / 0.5 byte for the weight of every quantizable Linear, the plain
  `nn.Linear` layers transformers' quantizers convert (all but the LM head and `_keep_in_fp32_modules`,
  `HfQuantizer.get_modules_to_not_convert`); their biases and every other parameter (embeddings, norms,
  convolutions, the VAE) keep their bf16-row bytes.
  Quantization scales are not counted.
* Prompt cache. The rows of a guided call as the pipelines build them (`TunaProcessor.build_generation_inputs` /
  `build_edit_inputs`, left-padded, cut after the target span), with a 64-token prompt and a 64-token negative
  prompt: text-to-image 2 rows `[bos] prompt [boi] target span`, editing 2 rows `[bos] [boi] source span [eoi]
  instruction [boi] target span` (the source sits in the conditional and the unconditional row). A span is
  `TunaProcessor.num_image_tokens` slots (1 + (size / pixels per token)²). While a step runs, the decoder's and the
  flow head's caches hold every row's tokens, the target span included: rows × tokens × the key and value
  projections' widths summed over both stacks' layers × 2 bytes (bf16 at every precision).
* Activations of one forward over the target spans (bf16): rows × span × (3 × intermediate + 10 × hidden) × 2 bytes,
  the working set of a flow-head block (the MLP's gate, up and product; the residual, the normed input, its six AdaLN
  parameters spread over the span, the attention output, the decoder's output), plus the two boolean omni masks
  (decoder, flow head) of rows × span × tokens bytes. Attention is taken to run in a memory-efficient kernel (no
  score matrix); the samples and the VAE's encode and decode are left out.
* Peak = weights + cache + activations. Fits: the smallest GPU whose memory holds the largest of the three calls'
  peaks plus `HEADROOM_GIB` (CUDA context, allocator slack).
"""

import argparse

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from tuna_hf import TunaForUnifiedMultimodal
from tuna_hf.convert_official import official_token_ids, tuna_config_from_official
from tuna_hf.official_presets import OFFICIAL_PRESETS
from tuna_hf.pipelines.base import TOKENS_AFTER_TARGET_SPAN
from tuna_hf.testing import build_byte_tokenizer, tiny_tuna_processor

GIB = 2**30
BF16_BYTES = 2
QUANTIZED_BYTES = {"bf16": None, "int8": 1.0, "4-bit": 0.5}  # a quantizable Linear weight's bytes per parameter
COMPONENTS = {
    "decoder": ("model.language_model.", "lm_head."),
    "flow head": ("flow_head.",),
    "visual encoder": ("model.vision_tower.", "model.connector.", "model.patch_embed."),
    "Wan VAE": ("model.vae.",),
}
OTHER = "other"  # the timestep embedder, Tuna-2's mask token
PROMPT = "x" * 64  # 64 tokens: the byte-level tokenizer of `tuna_hf.testing` has no merges
CALLS = {"T2I 512²": ("t2i", 512), "T2I 1024²": ("t2i", 1024), "edit 512²": ("edit", 512)}
GPU_CLASSES_GIB = (24, 40, 48, 80)
HEADROOM_GIB = 1.0


def build_preset(name: str, tokenizer) -> TunaForUnifiedMultimodal:
    """The preset's model on the meta device, its token ids those of `tokenizer`."""
    spec = OFFICIAL_PRESETS[name]
    config = tuna_config_from_official(
        spec["official_class"],
        spec["model_kwargs"],
        spec["llm_config"],
        official_token_ids(tokenizer),
        spec["siglip_config"],
    )
    with torch.device("meta"):
        return TunaForUnifiedMultimodal(config)


def quantizable_weights(model) -> set[str]:
    """The weights int8 and 4-bit store quantized: those of the `nn.Linear` layers transformers' quantizers convert."""
    skipped = HfQuantizer.get_modules_to_not_convert(model, keep_in_fp32_modules=list(model._keep_in_fp32_modules))
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if type(module) is nn.Linear and should_convert_module(name, skipped)
    }


def component_of(parameter_name: str) -> str:
    return next((name for name, prefixes in COMPONENTS.items() if parameter_name.startswith(prefixes)), OTHER)


def weight_sizes(model) -> dict[str, dict[str, float]]:
    """Per component (in `COMPONENTS` order, then `OTHER`): `params` and the bytes at each precision."""
    quantized = quantizable_weights(model)
    float32 = set(model._keep_in_fp32_modules_strict)
    sizes = {}
    for name, parameter in model.named_parameters():
        row = sizes.setdefault(component_of(name), dict.fromkeys(["params", *QUANTIZED_BYTES], 0))
        row["params"] += parameter.numel()
        full = 4 if float32 & set(name.split(".")) else BF16_BYTES
        for precision, quantized_bytes in QUANTIZED_BYTES.items():
            row[precision] += parameter.numel() * (quantized_bytes if quantized_bytes and name in quantized else full)
    return {name: sizes[name] for name in [*COMPONENTS, OTHER] if name in sizes}


def kv_bytes_per_token(model) -> int:
    """What one token adds to the prompt caches: its keys and values in every decoder and flow-head layer, bf16."""
    layers = [*model.model.language_model.layers, *model.flow_head.layers]
    return BF16_BYTES * sum(
        layer.self_attn.k_proj.out_features + layer.self_attn.v_proj.out_features for layer in layers
    )


def call_rows(processor, task: str, size: int) -> tuple[int, int, int]:
    """`(rows, tokens, span)` of a guided call at `size`², as the pipelines cache them while a step runs."""
    build = processor.build_edit_inputs if task == "edit" else processor.build_generation_inputs
    input_ids = build(PROMPT, PROMPT, height=size, width=size, padding_side="left")["input_ids"]
    rows, tokens = input_ids[:, :-TOKENS_AFTER_TARGET_SPAN].shape
    return rows, tokens, processor.num_image_tokens(size, size)


def call_memory(model, processor, task: str, size: int) -> dict[str, float]:
    """The rows of a call, the bytes of its prompt caches and of one forward's activations over the target spans."""
    rows, tokens, span = call_rows(processor, task, size)
    head = model.config.flow_head_config
    per_token = (3 * head.intermediate_size + 10 * head.hidden_size) * BF16_BYTES  # a flow-head block's tensors
    return {
        "rows": rows,
        "tokens": tokens,
        "cache": rows * tokens * kv_bytes_per_token(model),
        "activations": rows * span * (per_token + 2 * tokens),
    }


def smallest_gpu(peak_bytes: float) -> str:
    fits = (f"{gpu} GB" for gpu in GPU_CLASSES_GIB if peak_bytes / GIB + HEADROOM_GIB <= gpu)
    return next(fits, "none")


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)) for cells in [header, *rows]
    )


def size_presets(names: list[str]) -> dict[str, dict]:
    """Per preset: its weight sizes, K/V bytes per token and the memory of each of `CALLS`."""
    tokenizer, results = build_byte_tokenizer(), {}
    for name in names:
        model = build_preset(name, tokenizer)
        processor = tiny_tuna_processor(tokenizer, pixels_per_token=model.config.pixels_per_token)
        weights = weight_sizes(model)
        results[name] = {
            "weights": weights,
            "total": {key: sum(row[key] for row in weights.values()) for key in ["params", *QUANTIZED_BYTES]},
            "kv_per_token": kv_bytes_per_token(model),
            "calls": {call: call_memory(model, processor, *task) for call, task in CALLS.items()},
        }
    return results


def weights_table(results: dict, markdown: bool) -> str:
    header = ["preset", "component", "params", *(f"{precision} GiB" for precision in QUANTIZED_BYTES)]
    rows = []
    for name, result in results.items():
        for component, row in [*result["weights"].items(), ("total", result["total"])]:
            rows.append([name, component, f"{row['params']:,}", *(gib(row[p]) for p in QUANTIZED_BYTES)])
    return render(header, rows, markdown)


def cache_table(results: dict, markdown: bool) -> str:
    header = ["preset", "K/V KiB per token", "call", "rows × tokens", "prompt cache GiB", "activations GiB"]
    rows = []
    for name, result in results.items():
        kv = f"{result['kv_per_token'] / 2**10:.0f}"
        for call, memory in result["calls"].items():
            shape = f"{memory['rows']} × {memory['tokens']}"
            rows.append([name, kv, call, shape, gib(memory["cache"]), gib(memory["activations"])])
    return render(header, rows, markdown)


def summary_table(results: dict, markdown: bool) -> str:
    header = ["preset", "precision", "params", "weights GiB", *(f"{call} peak GiB" for call in CALLS), "fits"]
    rows = []
    for name, result in results.items():
        params = result["total"]["params"]
        for precision in QUANTIZED_BYTES:
            weights = result["total"][precision]
            peaks = [weights + memory["cache"] + memory["activations"] for memory in result["calls"].values()]
            cells = [f"{params / 1e9:.2f}B", gib(weights), *map(gib, peaks), smallest_gpu(max(peaks))]
            rows.append([name, precision, *cells])
    return render(header, rows, markdown)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", choices=list(OFFICIAL_PRESETS), default=list(OFFICIAL_PRESETS))
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    args = parser.parse_args(argv)
    results = size_presets(args.presets)
    for title, table in (
        ("Weights per component", weights_table),
        ("Prompt caches and activations of one guided call (bf16)", cache_table),
        (f"Peak of one call: weights + cache + activations; fits with {HEADROOM_GIB:g} GiB headroom", summary_table),
    ):
        print(f"{title}\n\n{table(results, args.markdown)}\n")


if __name__ == "__main__":
    main()
