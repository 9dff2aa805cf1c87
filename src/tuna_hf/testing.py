"""Tiny random TUNA models, their processor and a byte-level BPE tokenizer, built locally (no download): for tests,
examples and benchmarks, and the tokenizer and configuration of the embedded shapes checkpoint."""

from collections import Counter

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, SiglipVisionConfig

from .configuration_tuna import TunaConfig
from .image_processing_tuna import TunaImageProcessor
from .modeling_tuna import TunaForUnifiedMultimodal
from .processing_tuna import DEFAULT_CHAT_TEMPLATE, TunaProcessor, add_tuna_tokens, tuna_token_ids
from .wan_vae import wan22_vae_config

# The Qwen2.5 special tokens TUNA's layouts use, in Qwen order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_byte_tokenizer(corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens and TUNA's four added tokens: 256 byte tokens, plus the
    merges learnt from `corpus` (`learn_byte_merges`) so that its frequent words are single tokens; any text still
    encodes, byte by byte."""
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    merges = learn_byte_merges(corpus, pre_tokenizer) if corpus else []
    vocab = sorted(pre_tokenizers.ByteLevel.alphabet()) + [left + right for left, right in merges]
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(vocab)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS,
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )
    add_tuna_tokens(tokenizer)
    return tokenizer


def learn_byte_merges(corpus: list[str], pre_tokenizer, min_count: int = 2) -> list[tuple[str, str]]:
    """Byte-pair merges of `corpus`: the most frequent adjacent pair (ties: the smaller pair) is merged until none
    occurs `min_count` times. Deterministic, unlike the `tokenizers` trainer's id order."""
    words = Counter(word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(text))
    splits = {word: list(word) for word in words}
    merges = []
    while True:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(splits[word], splits[word][1:], strict=False):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_count:
            return merges
        merges.append(best)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged


def tiny_tuna_config(
    visual_encoder: str = "patch", tokenizer=None, hidden_size: int = 64, num_layers: int = 2, **overrides
) -> TunaConfig:
    """A TUNA of the given variant with `num_layers` decoder and flow-head layers, whose token ids match `tokenizer`
    (default: `build_byte_tokenizer()`)."""
    tokenizer = tokenizer or build_byte_tokenizer()
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    flow_head_config = {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 8192,
    }
    variant = {
        "patch": {"latent_channels": 3, "patch_size": 16, "use_mask_token": True},
        "siglip": {"latent_channels": 3, "patch_size": 16, "vision_config": _tiny_siglip(64, 16, 3)},
        "vae_siglip": {
            "latent_channels": 48,
            "patch_size": 1,
            "vision_config": _tiny_siglip(4, 1, 48),
            "vae_config": wan22_vae_config(dim=8, dec_dim=8),
        },
    }[visual_encoder]
    return TunaConfig(
        text_config=text_config,
        flow_head_config=flow_head_config,
        visual_encoder=visual_encoder,
        **tuna_token_ids(tokenizer),
        **{**variant, **overrides},
    )


def tiny_tuna_model(
    visual_encoder: str = "patch", tokenizer=None, seed: int = 0, **overrides
) -> TunaForUnifiedMultimodal:
    """A random tiny TUNA in eval mode. The official init zeroes the flow head's output (AdaLN-Zero), so its
    weights are drawn from N(0, 0.05²) to make the flow predictions non-trivial."""
    torch.manual_seed(seed)
    model = TunaForUnifiedMultimodal(tiny_tuna_config(visual_encoder, tokenizer, **overrides)).eval()
    with torch.no_grad():
        for parameter in model.flow_head.parameters():
            parameter.normal_(0, 0.05)
    return model


def tiny_tuna_processor(
    tokenizer=None, height: int = 64, width: int = 64, pixels_per_token: int = 16, **kwargs
) -> TunaProcessor:
    """The processor for tiny models: byte tokenizer, default image size `height`×`width`, one image token per
    `pixels_per_token`² pixels (the model's `config.pixels_per_token`); `kwargs` go to `TunaProcessor`."""
    image_processor = TunaImageProcessor(size={"height": height, "width": width}, size_divisor=pixels_per_token)
    return TunaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_byte_tokenizer(),
        spatial_compression=pixels_per_token,
        **kwargs,
    )


def _tiny_siglip(image_size: int, patch_size: int, num_channels: int) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        vision_use_head=False,
    )


def add_random_lora(model, adapter_name: str = "style", rank: int = 4, lora_alpha: int = 8, seed: int = 3):
    """A PEFT LoRA adapter on the attention's `q_proj` and `v_proj`, with random `lora_B` (PEFT starts them at zero,
    which would leave the model unchanged)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj"])
    model.add_adapter(config, adapter_name=adapter_name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def cpu_quantization_configs() -> dict:
    """transformers quantization configs of the backends that run on a CPU, by name, for those installed (torchao,
    optimum-quanto, bitsandbytes). torchao's CPU 4-bit stores int4 values in int8 (its packed int4 layouts need CUDA).
    `TunaForUnifiedMultimodal._keep_in_fp32_modules` are skipped by each."""
    from transformers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
    from transformers.utils import is_bitsandbytes_available, is_optimum_quanto_available, is_torchao_available

    configs = {}
    if is_torchao_available():
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup

        configs["torchao int8"] = TorchAoConfig(Int8WeightOnlyConfig())
        configs["torchao int4"] = TorchAoConfig(
            IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
        )
    if is_optimum_quanto_available():
        configs["quanto int8"] = QuantoConfig(weights="int8")
        configs["quanto int4"] = QuantoConfig(weights="int4")
    if is_bitsandbytes_available():
        configs["bitsandbytes 8-bit"] = BitsAndBytesConfig(load_in_8bit=True)
        nf4 = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}
        configs["bitsandbytes nf4"] = BitsAndBytesConfig(load_in_4bit=True, **nf4)
    return configs


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """The bytes a model's parameters and buffers take as stored: quantized tensor subclasses (torchao, quanto) count
    their inner tensors, bitsandbytes weights their scales too (`get_memory_footprint` counts the former at the
    original dtype)."""

    def stored(tensor: torch.Tensor) -> list[torch.Tensor]:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return [inner for name in names for inner in stored(getattr(tensor, name))]
        scales = [getattr(tensor, "SCB", None), getattr(getattr(tensor, "quant_state", None), "absmax", None)]
        return [tensor, *(scale for scale in scales if isinstance(scale, torch.Tensor))]

    tensors = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        for inner in stored(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor):
            tensors[(inner.data_ptr(), inner.numel(), inner.dtype)] = inner.numel() * inner.element_size()
    return sum(tensors.values())
