"""Record TUNA parity references by running the OFFICIAL code on tiny random models.

This script is the harness behind the reference folders that `tests/test_parity.py`,
`tests/test_pipeline_parity.py` and `tests/test_conversion.py` read (``TUNA_PARITY_DIR``). It runs
INSIDE the official environment (see ``parity/make_official_env.sh``), imports the official package
``tuna`` from the checkout given with ``--official`` and never imports ``tuna_hf``::

    python parity/record_references.py --official /path/to/tuna-2 --variant all --output DIR

For every variant it builds the tiny configuration documented in the folder README (written next to
the references), re-randomises all weights with a fixed rule and seed, calls the official model
``forward``, ``t2i_generate``/``t2i_generate_edit`` and the official pipelines (``mmu``, ``t2i``,
``t2i_edit``) and stores what went in and what came out, key for key in the layout the tests read.

The official files are never edited; a few runtime patches make a CPU run possible (listed in
`RUNTIME_PATCHES` and in the README this script writes).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

OFFICIAL_COMMIT = "b53594e308095b573c31be46f24ea62936f3c440"
VARIANTS = ("tuna_2", "tuna_r", "tuna")

# ---------------------------------------------------------------------------------------------------
# Harness constants (the values of the shared reference run).
# ---------------------------------------------------------------------------------------------------
HARNESS = {
    "UND_HW": [64, 64],
    "GEN_HW": [48, 64],
    "PROMPT_GEN": "a red cube on a blue table",
    "NEG_GEN": "low quality",
    "EDIT_INSTR": "make it sunset",
    "NEG_EDIT": "blurry, low quality",
    "MMU_Q": "Describe this image.",
    "T_VALUES": [0.25, 0.7],
    "CFG": 3.0,
    "STEPS": 4,
    "NOISE_SCALE": 2.0,
    "SHIFT": 3.0,
    "FLOW_MAX_TEXT_LEN": 16,
    "MMU_MAX_NEW": 8,
    "UND_IMAGE": "data_examples/imgs/image1.png",
    "EDIT_IMAGE": "data_examples/imgs/edit0.png",
}
SEEDS = {"build": 0, "flow_noise_generator": 7, "understanding": 11, "t2i": 42, "edit": 43}
RANDOMIZE_SEED = 1000
RANDOMIZE_RULE = (
    "Deterministically give *every* parameter a non-trivial random value. The official "
    "`reset_parameters` zero-initialises the adaLN modulations and the final projection of the flow "
    "head (so a fresh model predicts exactly 0), and the Wan VAE is left uninitialised; neither is "
    "useful for parity. Rule (one torch.Generator seeded with `seed`, parameters in "
    "`named_parameters()` order, one N(0,1) draw of the parameter's shape each): norm weights "
    "(including the Wan VAE's [C, 1, 1, 1] RMS_norm gammas) ~ 1 + 0.1 N(0,1); norm biases and all "
    "other 1-D params ~ 0.05 N(0,1); every other >=2-D param "
    "~ N(0,1) / sqrt(fan_in) with fan_in = numel(param[0]). Shared (tied) params are drawn once."
)

# Tiny Qwen2 LLM (saved as a local `llm_model_path` directory). vocab 576 is shrunk by the official
# `resize_token_embeddings(len(tokenizer))` to 538.
QWEN2_TINY = {
    "vocab_size": 576,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "torch_dtype": "float32",
}
# Tiny SigLIP config directory (`siglip_model_id`); the wrappers override size/patch/channels.
SIGLIP_TINY = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 64,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
# Tiny Wan2.2 VAE (the official wrapper hard-wires the decoder width to 256; patched to 8).
VAE_TINY = {
    "z_dim": 48,
    "dim": 8,
    "dec_dim": 8,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

_COMMON_PIXEL = {
    "frozen_params": ["vae"],
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "attention_backend": "sdpa",
    "patch_size": 16,
    "image_latent_dim": 3,
    "image_latent_height": 16,
    "image_latent_width": 16,
    "hq_image_latent_height": 64,
    "hq_image_latent_width": 64,
    "mixed_modal_latent_height": 32,
    "mixed_modal_latent_width": 32,
    "add_time_embeds": True,
    "add_aspect_ratio_embeds": False,
    "mrope_type": "dit_3drope_mm",
    "reshape_frame_to_batch_dim": False,
    "gradient_checkpointing": False,
}
_SAMPLING = {
    "path_type": "Linear",
    "prediction": "velocity",
    "snr_type": "lognorm",
    "do_shift": True,
    "sampling_method": "euler",
    "guidance_scale": 7.5,
    "num_inference_steps": 50,
    "time_shifting_factor": 3.0,
    "atol": 1e-06,
    "rtol": 0.001,
    "reverse": False,
}

# Wrapper kwargs: the Hydra model yamls (configs/model/*.yaml) with tiny sizes, flow_head_num=2,
# gradient_checkpointing=False and mmu_noise_prob=0 (the official 0.1 noises 10 % of inference
# understanding calls at random).
VARIANT_SPECS = {
    "tuna_2": {
        "official_class": "tuna.models.tuna_2_pixel.Tuna2PixelModel",
        "inner_class": "tuna.models.tuna_2_pixel.Tuna2Pixel",
        "pipeline_class": "tuna.pipelines.tuna_2_pixel_pipeline.Tuna2PixelPipeline",
        "yaml": "configs/model/tuna_2_pixel_7b.yaml",
        "pixel": True,
        "tied": False,
        "t2i_generation_mode": "t2i_pixel",
        "wrapper_kwargs": {
            "llm_model_path": "assets/qwen2_tiny",
            "load_stage1_model": None,
            **_COMMON_PIXEL,
            "enable_mask_token": True,
            "masked_image_ratio": 0.3,
            "masked_image_ratio_min": -0.7,
            "mmu_noise_prob": 0.0,
            "mmu_noise_level": 0.1,
            "ntp_coeff": 1.0,
            "flow_coeff": 1.0,
            "und_max_t0": 1.0,
            "dtype": "bf16",
            "flow_head_num": 2,
            "noise_scale": 2.0,
            **_SAMPLING,
        },
    },
    "tuna_r": {
        "official_class": "tuna.models.tuna_2r_pixel.Tuna2RPixelModel",
        "inner_class": "tuna.models.tuna_2r_pixel.Tuna2RPixel",
        "pipeline_class": "tuna.pipelines.tuna_2r_pixel_pipeline.Tuna2RPixelPipeline",
        "yaml": "configs/model/tuna_2r_pixel_7b.yaml",
        "pixel": True,
        "tied": False,
        "t2i_generation_mode": "t2i_pixel",
        "wrapper_kwargs": {
            "siglip_model_id": "assets/siglip_tiny",
            "siglip_image_size": 64,
            "siglip_feature_layer": -2,
            "llm_model_path": "assets/qwen2_tiny",
            **{k: v for k, v in _COMMON_PIXEL.items() if k not in ("attention_backend", "gradient_checkpointing")},
            "clip_latent_dim": 48,
            "flow_head_num": 2,
            "attention_backend": "sdpa",
            "loss_weight": None,
            "train_eps": None,
            "sample_eps": None,
            "ntp_coeff": 1.0,
            "flow_coeff": 1.0,
            "und_max_t0": 1.0,
            "use_disp": False,
            "load_stage1_model": None,
            "gradient_checkpointing": False,
            "dtype": "bf16",
            "enable_mask_token": False,
            "masked_image_ratio": 0.75,
            "masked_image_ratio_min": 0.0,
            "mmu_noise_prob": 0.0,
            "mmu_noise_level": 0.1,
            "noise_scale": 2.0,
            **_SAMPLING,
        },
    },
    "tuna": {
        "official_class": "tuna.models.tuna.TunaModel",
        "inner_class": "tuna.models.tuna.Tuna",
        "pipeline_class": "tuna.pipelines.tuna_pipeline.TunaPipeline",
        "yaml": "configs/model/tuna_2b.yaml",
        "pixel": False,
        "tied": True,
        "t2i_generation_mode": "t2i",
        "wrapper_kwargs": {
            "siglip_model_id": "assets/siglip_tiny",
            "siglip_image_size": 4,
            "siglip_patch_size": 1,
            "siglip_num_channels": 48,
            "siglip_feature_layer": -2,
            "vae_model_id": "tiny-random-wan2.2-vae",
            "llm_model_path": "assets/qwen2_tiny_tied",
            "load_stage1_model": None,
            "frozen_params": ["vae"],
            "hidden_size": 128,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "attention_backend": "sdpa",
            "patch_size": 1,
            "image_latent_dim": 48,
            "image_latent_height": 32,
            "image_latent_width": 32,
            "hq_image_latent_height": 64,
            "hq_image_latent_width": 64,
            "mixed_modal_latent_height": 32,
            "mixed_modal_latent_width": 32,
            "clip_latent_dim": 48,
            "add_time_embeds": True,
            "add_aspect_ratio_embeds": False,
            "mrope_type": "dit_3drope_mm",
            "reshape_frame_to_batch_dim": False,
            "gradient_checkpointing": False,
            "ntp_coeff": 0.2,
            "flow_coeff": 1.0,
            "und_max_t0": 1.0,
            "dtype": "bf16",
            "flow_head_num": 2,
            **_SAMPLING,
        },
    },
}

# The 22 Qwen2.5 special tokens, in Qwen's id order (they follow the 512 BPE ids).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# The Qwen2.5 chat template, reduced to what the harness uses (system, user, assistant turns).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == "
    "'system' and not loop.first) or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role "
    "+ '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if "
    "add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOKENIZER_FIXED_PHRASES = [
    HARNESS["PROMPT_GEN"],
    HARNESS["NEG_GEN"],
    HARNESS["EDIT_INSTR"],
    HARNESS["NEG_EDIT"],
    HARNESS["MMU_Q"],
    SYSTEM_PROMPT,
]

RUNTIME_PATCHES = [
    "`torchvision._meta_registrations` is replaced by an empty module before torchvision is imported "
    "(a torchvision wheel built for another torch build cannot register its C ops against CPU torch; "
    "TUNA only uses torchvision's python transforms).",
    "`Wan2_2_VAE.from_pretrained` builds the tiny VAE from config (no hub), and the module-level "
    "`_video_vae` is given the tiny `dec_dim` (the official wrapper hard-wires 256).",
    "`Tuna*.forward(..., device='cuda:0')` default: when a caller (the samplers) passes no `device`, it "
    "is set to `text_tokens.device`.",
    "Pipelines are built with `use_tf32=False`, `device='cpu'`, `weight_dtype=float32`.",
    "Config overrides: sizes as documented, `flow_head_num=2`, `gradient_checkpointing=False`, `mmu_noise_prob=0.0`.",
    "Local tiny LLM / tokenizer / SigLIP-config directories (made by this script under a temporary "
    "folder, which is the working directory of the run) are passed as `llm_model_path` / "
    "`siglip_model_id`; the SigLIP warm-init from pretrained fails (no weights there) and is skipped "
    "by the official try/except.",
]


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[record] {message}", flush=True)


def import_attr(path: str):
    module_name, _, attr = path.rpartition(".")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(repo: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)


def contiguous_cpu(tensors: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


# ---------------------------------------------------------------------------------------------------
# Runtime patches (no official file is edited)
# ---------------------------------------------------------------------------------------------------
def install_import_patches(official: Path) -> None:
    sys.path.insert(0, str(official))
    if "torchvision" not in sys.modules:
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision  # noqa: F401


def install_model_patches() -> None:
    import tuna.models.vae.wan22_vae as wan

    original_video_vae = wan._video_vae

    def tiny_video_vae(pretrained_path=None, z_dim=16, dim=160, device="cpu", **kwargs):
        kwargs.setdefault("dec_dim", VAE_TINY["dec_dim"])
        return original_video_vae(pretrained_path=pretrained_path, z_dim=z_dim, dim=dim, device=device, **kwargs)

    def tiny_from_pretrained(cls, repo_id=None, z_dim=48, c_dim=160, dtype=torch.float32, device="cpu"):
        return cls(
            z_dim=VAE_TINY["z_dim"],
            c_dim=VAE_TINY["dim"],
            vae_pth=None,
            dim_mult=tuple(VAE_TINY["dim_mult"]),
            temperal_downsample=tuple(VAE_TINY["temperal_downsample"]),
            dtype=dtype,
            device=device,
        )

    wan._video_vae = tiny_video_vae
    wan.Wan2_2_VAE.from_pretrained = classmethod(tiny_from_pretrained)

    for spec in VARIANT_SPECS.values():
        cls = import_attr(spec["inner_class"])
        if getattr(cls.forward, "_parity_device_default", False):
            continue
        cls.forward = _with_device_default(cls.forward)


def _with_device_default(forward):
    def patched(self, *args, **kwargs):
        if "device" not in kwargs:
            text_tokens = args[0] if args else kwargs.get("text_tokens")
            kwargs["device"] = text_tokens.device
        return forward(self, *args, **kwargs)

    patched._parity_device_default = True
    return patched


# ---------------------------------------------------------------------------------------------------
# Tiny assets: tokenizer, LLM, SigLIP config
# ---------------------------------------------------------------------------------------------------
def tokenizer_training_texts(official: Path) -> list[str]:
    files = [
        official / "assets" / "prompts.txt",
        *sorted(Path(p) for p in glob.glob(str(official / "data_examples" / "*.jsonl"))),
    ]
    texts = []
    for path in files:
        texts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts + TOKENIZER_FIXED_PHRASES


def build_tokenizer(official: Path, target: Path) -> None:
    """A 534-token Qwen2TokenizerFast: 512 byte-level BPE ids trained here, then the 22 Qwen specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, special_tokens=[]
    )
    backend.train_from_iterator(tokenizer_training_texts(official), trainer=trainer)
    assert backend.get_vocab_size() == 512, backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(target))
    assert len(tokenizer) == 534, len(tokenizer)


def build_llm_dir(target: Path, tokenizer_dir: Path, tied: bool) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN2_TINY, tie_word_embeddings=tied)
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(SEEDS["build"])
    Qwen2ForCausalLM(config).save_pretrained(str(target))
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, target / item.name)


def build_siglip_dir(target: Path) -> None:
    from transformers import SiglipVisionConfig

    config = SiglipVisionConfig(**SIGLIP_TINY)
    config.architectures = ["SiglipVisionModel"]
    target.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(target))


# ---------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------
def is_norm_parameter(name: str, module_types: dict) -> bool:
    owner = name.rpartition(".")[0]
    kind = module_types.get(owner, "")
    return "norm" in kind.lower() or "norm" in owner.rpartition(".")[2].lower()


@torch.no_grad()
def randomize_weights(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    module_types = {name: type(m).__name__ for name, m in module.named_modules()}
    for name, param in module.named_parameters():
        draw = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if is_norm_parameter(name, module_types) and not name.endswith("bias"):
            value = 1.0 + 0.1 * draw  # also the Wan VAE's [C, 1, 1(, 1)] RMS_norm gammas
        elif param.ndim >= 2:
            value = draw / math.sqrt(param[0].numel())
        else:
            value = 0.05 * draw
        param.copy_(value.to(param.dtype))


# ---------------------------------------------------------------------------------------------------
# Recording helpers
# ---------------------------------------------------------------------------------------------------
class CallRecorder:
    """Wraps a model function the samplers call as `fn(z, t, **kwargs)`; keeps z_in, t, output."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []
        self.kwargs = None

    def __call__(self, z, t, **kwargs):
        out = self.fn(z, t, **kwargs)
        if self.kwargs is None:
            self.kwargs = kwargs
        self.calls.append({"z_in": z.detach().clone(), "t": t.detach().clone(), "pred_cfg": out.detach().clone()})
        return out


@contextlib.contextmanager
def patched_attr(obj, name, value):
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


class Variant:
    def __init__(self, name: str, official: Path):
        self.name = name
        self.spec = VARIANT_SPECS[name]
        self.official = official
        self.report = {}
        self.timings = {}

    # -- build ---------------------------------------------------------------------------------------
    def build(self):
        wrapper_cls = import_attr(self.spec["official_class"])
        torch.manual_seed(SEEDS["build"])
        self.wrapper = wrapper_cls(**self.spec["wrapper_kwargs"])
        self.inner = self.wrapper.tuna_model
        self.vocab_before_resize = QWEN2_TINY["vocab_size"]
        randomize_weights(self.inner, RANDOMIZE_SEED)
        self.wrapper.to(torch.float32).eval()
        self.tokenizer = self.wrapper.text_tokenizer
        self.token_ids = self.wrapper.tuna_token_ids
        return self

    def new_pipeline(self, height, width, generation_mode):
        pipeline_cls = import_attr(self.spec["pipeline_class"])
        kwargs = {
            "model": self.wrapper,
            "text_tokenizer": self.tokenizer,
            "tuna_token_ids": self.token_ids,
            "config": None,
            "weight_dtype": torch.float32,
            "device": "cpu",
            "use_tf32": False,
            "use_chat_template": False,
            "add_aspect_ratio_embeds": False,
            "height": height,
            "width": width,
            "generation_mode": generation_mode,
            "latent_frames": 1,
        }
        if self.name == "tuna":
            kwargs["vae_model"] = self.inner.vae
        elif self.name == "tuna_r":
            kwargs["vae_model"] = getattr(self.inner, "vae", None)
        return pipeline_cls(**kwargs)

    def load_image(self, relative, hw):
        from PIL import Image
        from tuna.inference.runner import image_transform

        image = Image.open(self.official / relative).convert("RGB")
        return image_transform(image, resolution=tuple(hw))

    def attention_mask(self, batch, length, modality_positions):
        return self.wrapper.create_attention_mask(
            batch, length, modality_positions, torch.device("cpu"), torch.float32
        )[0]

    # -- flow-head forwards --------------------------------------------------------------------------
    @torch.no_grad()
    def record_flow(self, inputs, outputs, debug):
        from tuna.models.misc import prepare_gen_input

        start = time.time()
        height, width = HARNESS["GEN_HW"]
        num_tokens = (height // 16) * (width // 16) + 1
        ids = self.token_ids
        cond, uncond, mp_cond, mp_uncond = prepare_gen_input(
            [HARNESS["PROMPT_GEN"]],
            self.tokenizer,
            num_tokens,
            ids["bos_id"],
            ids["eos_id"],
            ids["boi_id"],
            ids["eoi_id"],
            self.tokenizer.pad_token_id,
            ids["img_pad_id"],
            HARNESS["FLOW_MAX_TEXT_LEN"],
            "cpu",
            negative_prompt=HARNESS["NEG_GEN"],
        )
        length = cond.shape[1]
        mask_cond = self.attention_mask(1, length, mp_cond)
        mask_uncond = self.attention_mask(1, length, mp_uncond)
        mp_both = torch.cat([mp_cond, mp_uncond])
        mask_both = self.attention_mask(2, length, mp_both)
        tokens_both = torch.cat([cond, uncond])

        pixels = self.load_image(HARNESS["EDIT_IMAGE"], HARNESS["GEN_HW"])[None, :, None]  # [1, 3, 1, H, W]
        if self.spec["pixel"]:
            clean = pixels
            noise_scale = HARNESS["NOISE_SCALE"]
        else:
            inputs["flow.clean_pixels"] = pixels
            clean = self.inner.vae.sample(pixels, deterministic=True)
            noise_scale = 1.0
        generator = torch.Generator().manual_seed(SEEDS["flow_noise_generator"])
        noise = torch.randn(clean.shape, generator=generator) * noise_scale
        t_values = torch.tensor(HARNESS["T_VALUES"], dtype=torch.float32)
        inputs.update(
            {
                "flow.text_tokens_cond": cond,
                "flow.text_tokens_uncond": uncond,
                "flow.modality_positions_cond": mp_cond,
                "flow.modality_positions_uncond": mp_uncond,
                "flow.attention_mask_cond": mask_cond,
                "flow.attention_mask_uncond": mask_uncond,
                "flow.t_values": t_values,
                "flow.clean": clean,
                "flow.noise": noise,
            }
        )

        def forward(tokens, x_t, t, mask, mp):
            return self.inner(
                text_tokens=tokens,
                image_latents=x_t,
                t=t,
                attention_mask=mask,
                modality_positions=mp,
                output_hidden_states=True,
                max_seq_len=tokens.shape[1],
                device=tokens.device,
            )

        report = {}
        g = HARNESS["CFG"]
        for step in range(len(t_values)):
            t = t_values[step : step + 1]
            x_t = t * clean + (1 - t) * noise
            inputs[f"flow.t{step}.x_t"] = x_t
            with self.debug_hooks(debug) if step == 0 else contextlib.nullcontext():
                logits_cond, pred_cond = forward(cond, x_t, t, mask_cond, mp_cond)
            logits_uncond, pred_uncond = forward(uncond, x_t, t, mask_uncond, mp_uncond)
            _, pred_both = forward(tokens_both, torch.cat([x_t, x_t]), t.repeat(2), mask_both, mp_both)
            pred_cfg = self.inner.t2i_generate(
                image_latents=torch.cat([x_t, x_t]),
                t=t.repeat(2),
                text_tokens=tokens_both,
                attention_mask=mask_both,
                modality_positions=mp_both,
                output_hidden_states=True,
                max_seq_len=length,
                guidance_scale=g,
            )[:1]
            outputs.update(
                {
                    f"flow.t{step}.pred_cond": pred_cond,
                    f"flow.t{step}.pred_uncond": pred_uncond,
                    f"flow.t{step}.pred_cond_batched": pred_both[:1],
                    f"flow.t{step}.pred_uncond_batched": pred_both[1:],
                    f"flow.t{step}.pred_cfg": pred_cfg,
                    f"flow.t{step}.logits_cond": logits_cond,
                    f"flow.t{step}.logits_uncond": logits_uncond,
                }
            )
            report[f"t{step}"] = {
                "t": HARNESS["T_VALUES"][step],
                "max|cfg - (uncond + g*(cond-uncond))| (unbatched parts)": float(
                    (pred_cfg - (pred_uncond + g * (pred_cond - pred_uncond))).abs().max()
                ),
                "max|batched - unbatched| cond": float((pred_both[:1] - pred_cond).abs().max()),
                "max|pred_cond|": float(pred_cond.abs().max()),
            }
        self.report["flow"] = report
        self.timings["flow"] = round(time.time() - start, 2)

    @contextlib.contextmanager
    def debug_hooks(self, debug):
        inner = self.inner
        handles = []

        def keep(key, value):
            if key not in debug:
                debug[key] = (value[0] if isinstance(value, tuple) else value).detach().clone()

        def output_hook(key):
            return lambda module, args, output: keep(key, output)

        if self.spec["pixel"] and self.name == "tuna_2":
            handles.append(inner.vision_encoder.register_forward_hook(output_hook("dbg.image_embeds")))
        else:
            handles.append(
                inner.vision_model.register_forward_hook(
                    lambda m, a, output: keep("dbg.siglip_last_hidden", output.last_hidden_state)
                )
            )
            handles.append(inner.siglip_proj.register_forward_hook(output_hook("dbg.image_embeds")))
        handles.append(inner.time_embed.register_forward_hook(output_hook("dbg.time_embeds")))

        def llm_input_hook(module, args, kwargs):
            keep("dbg.llm_inputs_embeds", kwargs["inputs_embeds"])

        def llm_output_hook(module, args, kwargs, output):
            keep("dbg.llm_last_hidden_postnorm", output["hidden_states"][-1])

        handles.append(inner.tuna.register_forward_pre_hook(llm_input_hook, with_kwargs=True))
        handles.append(inner.tuna.register_forward_hook(llm_output_hook, with_kwargs=True))
        for index, layer in enumerate(inner.tuna.model.layers):

            def layer_hook(module, args, kwargs, index=index):
                keep(f"dbg.llm_hidden_in_layer{index}", args[0] if args else kwargs["hidden_states"])

            handles.append(layer.register_forward_pre_hook(layer_hook, with_kwargs=True))
        for index, block in enumerate(inner.diffusion_head_a):
            handles.append(block.register_forward_hook(output_hook(f"dbg.flow_block{index}_out")))
        handles.append(inner.diffusion_head_b.register_forward_hook(output_hook("dbg.final_layer_out")))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- understanding -------------------------------------------------------------------------------
    @torch.no_grad()
    def record_understanding(self, inputs, outputs):
        start = time.time()
        height, width = HARNESS["UND_HW"]
        pipe = self.new_pipeline(height, width, self.spec["t2i_generation_mode"])
        pixel_values = self.load_image(HARNESS["UND_IMAGE"], HARNESS["UND_HW"])[None]  # [1, 3, H, W]
        seen = {}
        inner_forward = self.inner.forward

        def forward(*args, **kwargs):
            result = inner_forward(*args, **kwargs)
            if kwargs.get("return_input_embeds") and "input_embeds" not in seen:
                seen.update(
                    {
                        k: kwargs[k]
                        for k in ("text_tokens", "image_latents", "t", "attention_mask", "modality_positions")
                    }
                )
                seen["input_embeds"] = result.detach().clone()
            return result

        generate = self.inner.mmu_generate

        def mmu_generate(*args, **kwargs):
            tokens = generate(*args, **kwargs)
            seen["generated_ids"] = torch.stack([torch.as_tensor(tok).reshape(()) for tok in tokens]).to(torch.int64)
            return tokens

        torch.manual_seed(SEEDS["understanding"])
        with patched_attr(self.inner, "forward", forward), patched_attr(self.inner, "mmu_generate", mmu_generate):
            text = pipe.mmu(
                do_sample=False,
                max_new_tokens=HARNESS["MMU_MAX_NEW"],
                prompt=HARNESS["MMU_Q"],
                pixel_values=pixel_values,
                height=height,
                width=width,
            )
        logits = self.inner.tuna(inputs_embeds=seen["input_embeds"], attention_mask=seen["attention_mask"]).logits
        inputs.update(
            {
                "und.pixel_values": pixel_values,
                "und.text_tokens": seen["text_tokens"],
                "und.modality_positions": seen["modality_positions"],
                "und.t": seen["t"].reshape(-1),
                "und.attention_mask": seen["attention_mask"],
                "und.image_latents": seen["image_latents"],
            }
        )
        outputs.update(
            {
                "und.input_embeds": seen["input_embeds"],
                "und.logits": logits,
                "und.generated_ids": seen["generated_ids"],
            }
        )
        self.report["understanding"] = {"generated_text": text, "generated_ids": seen["generated_ids"].tolist()}
        self.timings["understanding"] = round(time.time() - start, 2)

    # -- sampling ------------------------------------------------------------------------------------
    def _record_sampling(self, prefix, pipe, method_name, model_fn_name, call_kwargs, seed, inputs, outputs):
        recorder = CallRecorder(getattr(self.inner, model_fn_name))
        decoded = {}
        decode = pipe._decode_latents

        def decode_latents(latents):
            decoded["final_sample"] = latents.detach().clone()
            return decode(latents)

        vae = getattr(pipe, "vae_model", None) if self.name == "tuna" else None
        contexts = [
            patched_attr(self.inner, model_fn_name, recorder),
            patched_attr(pipe, "_decode_latents", decode_latents),
        ]
        if vae is not None:
            batch_decode = vae.batch_decode

            def recording_batch_decode(zs):
                images = batch_decode(zs)
                decoded["vae_decoded"] = images.detach().clone()
                return images

            contexts.append(patched_attr(vae, "batch_decode", recording_batch_decode))
        start = time.time()
        torch.manual_seed(seed)
        with contextlib.ExitStack() as stack, torch.inference_mode():
            for context in contexts:
                stack.enter_context(context)
            images = getattr(pipe, method_name)(**call_kwargs)
        kwargs = recorder.kwargs
        inputs[f"{prefix}.text_tokens"] = kwargs["text_tokens"]
        inputs[f"{prefix}.modality_positions"] = kwargs["modality_positions"]
        inputs[f"{prefix}.initial_z"] = recorder.calls[0]["z_in"]
        if "image_edit_original" in kwargs:
            inputs[f"{prefix}.image_edit_original"] = kwargs["image_edit_original"]
        for index, call in enumerate(recorder.calls):
            for key, value in call.items():
                outputs[f"{prefix}.call{index}.{key}"] = value
        outputs[f"{prefix}.final_sample"] = decoded["final_sample"]
        if "vae_decoded" in decoded:
            outputs[f"{prefix}.vae_decoded"] = decoded["vae_decoded"]
        outputs[f"{prefix}.image_uint8"] = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
        self.timings[prefix] = round(time.time() - start, 2)
        return recorder, kwargs

    def sampling_kwargs(self, method):
        return {
            "num_inference_steps": HARNESS["STEPS"],
            "guidance_scale": HARNESS["CFG"],
            "transport": self.wrapper.transport,
            "sampler": self.wrapper.sampler,
            "sampling_method": method,
            "atol": 1e-6,
            "rtol": 1e-3,
            "time_shifting_factor": HARNESS["SHIFT"],
            "noise_scale": HARNESS["NOISE_SCALE"],
        }

    def record_t2i(self, inputs, outputs, prefix="t2i", method="euler"):
        height, width = HARNESS["GEN_HW"]
        pipe = self.new_pipeline(height, width, self.spec["t2i_generation_mode"])
        call_kwargs = {
            "prompts": [HARNESS["PROMPT_GEN"]],
            **self.sampling_kwargs(method),
            "pixel_values": None,
            "second_time": False,
            "negative_prompt": HARNESS["NEG_GEN"],
            "cfg_interval": (0.0, 1.0),
        }
        recorder, _ = self._record_sampling(
            prefix, pipe, "t2i", "t2i_generate", call_kwargs, SEEDS["t2i"], inputs, outputs
        )
        self.report[prefix] = {"model_calls": len(recorder.calls), "method": method}

    def record_edit(self, inputs, outputs):
        height, width = HARNESS["GEN_HW"]
        pipe = self.new_pipeline(height, width, "edit")
        source = self.load_image(HARNESS["EDIT_IMAGE"], HARNESS["GEN_HW"])[None, None]  # [1, 1, 3, H, W]
        inputs["edit.source_pixels"] = source
        call_kwargs = {
            "prompts": [HARNESS["EDIT_INSTR"]],
            **self.sampling_kwargs("euler"),
            "pixel_values": source,
            "image_masks": None,
            "negative_prompt": HARNESS["NEG_EDIT"],
        }
        recorder, kwargs = self._record_sampling(
            "edit", pipe, "t2i_edit", "t2i_generate_edit", call_kwargs, SEEDS["edit"], inputs, outputs
        )
        self.report["edit"] = {
            "model_calls": len(recorder.calls),
            "max_seq_len": int(kwargs["max_seq_len"]),
            "num_visual_tokens": int(pipe.num_visual_tokens),
        }

    # -- checks --------------------------------------------------------------------------------------
    @torch.no_grad()
    def reload_check(self, model_pt: Path, inputs, outputs):
        """model.pt through the official loader into a model with other random weights: same outputs."""
        from tuna.inference.checkpoint_loader import load_checkpoint

        wrapper_cls = import_attr(self.spec["official_class"])
        torch.manual_seed(SEEDS["build"] + 1)
        other = wrapper_cls(**self.spec["wrapper_kwargs"])
        randomize_weights(other.tuna_model, RANDOMIZE_SEED + 1)
        missing, unexpected = other.tuna_model.load_state_dict(torch.load(model_pt, weights_only=True), strict=False)
        if self.name == "tuna":  # the official loader drops `.vae.` keys; the VAE comes with its own file
            load_checkpoint(other.tuna_model, str(model_pt))
        other.to(torch.float32).eval()
        _, pred = other.tuna_model(
            text_tokens=inputs["flow.text_tokens_cond"],
            image_latents=inputs["flow.t0.x_t"],
            t=inputs["flow.t_values"][:1],
            attention_mask=inputs["flow.attention_mask_cond"],
            modality_positions=inputs["flow.modality_positions_cond"],
            output_hidden_states=True,
            max_seq_len=inputs["flow.text_tokens_cond"].shape[1],
            device=torch.device("cpu"),
        )
        self.report["checkpoint_reload"] = {
            "missing_keys": list(missing),
            "unexpected_keys": list(unexpected),
            "max_abs_diff_after_reload": float((pred - outputs["flow.t0.pred_cond"]).abs().max()),
        }

    # -- config.json ---------------------------------------------------------------------------------
    def describe(self, official_commit, state_dict):
        llm = self.inner.tuna.config
        head = self.inner.diffusion_head_config
        description = {
            "variant": self.name,
            "official_class": self.spec["official_class"],
            "inner_class": self.spec["inner_class"],
            "official_commit": official_commit,
            "official_model_yaml": self.spec["yaml"],
            "wrapper_kwargs": self.spec["wrapper_kwargs"],
            "llm_config_after_resize": {
                "model_type": llm.model_type,
                "vocab_size": llm.vocab_size,
                "hidden_size": llm.hidden_size,
                "intermediate_size": llm.intermediate_size,
                "num_hidden_layers": llm.num_hidden_layers,
                "num_attention_heads": llm.num_attention_heads,
                "num_key_value_heads": llm.num_key_value_heads,
                "hidden_act": llm.hidden_act,
                "rms_norm_eps": llm.rms_norm_eps,
                "rope_theta": llm.rope_theta,
                "rope_scaling": llm.rope_scaling,
                "max_position_embeddings": llm.max_position_embeddings,
                "use_sliding_window": llm.use_sliding_window,
                "sliding_window": llm.sliding_window,
                "attention_dropout": llm.attention_dropout,
                "tie_word_embeddings": llm.tie_word_embeddings,
                "torch_dtype": str(llm.torch_dtype).replace("torch.", ""),
                "_attn_implementation": llm._attn_implementation,
                "head_dim (derived)": llm.hidden_size // llm.num_attention_heads,
                "attention_qkv_bias": self.inner.tuna.model.layers[0].self_attn.q_proj.bias is not None,
            },
            "llm_config_vocab_before_resize": self.vocab_before_resize,
            "tokenizer": {
                "len": len(self.tokenizer),
                "tuna_token_ids": self.token_ids,
                "pad_token": self.tokenizer.pad_token,
                "pad_id": self.tokenizer.pad_token_id,
                "eos_token": self.tokenizer.eos_token,
            },
            "flow_head": {
                "num_layers": len(self.inner.diffusion_head_a),
                "hidden_size": head.hidden_size,
                "num_attention_heads": head.num_attention_heads,
                "num_key_value_heads": head.num_key_value_heads,
                "head_dim": head.head_dim,
                "intermediate_size": head.intermediate_size,
                "rms_norm_eps": head.rms_norm_eps,
                "rope_theta": head.rope_theta,
                "rope_scaling": getattr(head, "rope_scaling", None),
                "qk_norm": getattr(head, "qk_norm", None),
                "hidden_act": head.hidden_act,
                "attention_bias": head.attention_bias,
                "final_layer_out_features": self.inner.diffusion_head_b.linear.out_features,
            },
            "inner_register_to_config": {k: v for k, v in dict(self.inner.config).items() if not k.startswith("_")},
            "randomize": {"seed": RANDOMIZE_SEED, "rule": RANDOMIZE_RULE},
            "seeds": SEEDS,
            "state_dict": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state_dict.items()},
        }
        if self.name != "tuna_2":
            vision = self.inner.vision_model
            config = vision.config
            description["siglip_config_effective"] = {
                "hidden_size": config.hidden_size,
                "intermediate_size": config.intermediate_size,
                "num_attention_heads": config.num_attention_heads,
                "image_size": config.image_size,
                "patch_size": config.patch_size,
                "num_channels": config.num_channels,
                "hidden_act": config.hidden_act,
                "layer_norm_eps": config.layer_norm_eps,
                "attention_dropout": config.attention_dropout,
                "num_hidden_layers_in_config": config.num_hidden_layers,
                "num_layers_kept": len(vision.encoder.layers),
                "post_layernorm": type(vision.post_layernorm).__name__,
                "head": "none (vision_use_head=False)" if not getattr(config, "vision_use_head", True) else "head",
                "attn_implementation": config._attn_implementation or "eager",
            }
            description["siglip_config_file"] = {
                "model_type": "siglip_vision_model",
                "architectures": ["SiglipVisionModel"],
                **SIGLIP_TINY,
            }
        if self.name == "tuna":
            description["vae"] = {
                **VAE_TINY,
                "scale_mean": "WAN_VAE_2_2_MEAN (== WAN_VAE_2_2_STD, official quirk)",
                "scale_inv_std": "1 / WAN_VAE_2_2_STD",
                "note": "Wan2_2_VAE(z_dim=48, c_dim=8, dim_mult=(1,2,4,4), temperal_downsample=(False,True,True)) "
                "with decoder dec_dim=8",
            }
        description["harness_constants"] = HARNESS
        description["environment"] = environment()
        description["runtime_patches"] = RUNTIME_PATCHES
        return description


def environment():
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------
# One variant, end to end
# ---------------------------------------------------------------------------------------------------
def record_variant(name: str, official: Path, output: Path, official_commit: str, reload_check: bool) -> dict:
    from safetensors.torch import save_file

    log(f"{name}: building {VARIANT_SPECS[name]['official_class']}")
    variant = Variant(name, official).build()
    folder = output / name
    folder.mkdir(parents=True, exist_ok=True)
    inputs, outputs, debug = {}, {}, {}

    log(f"{name}: flow-head forwards")
    variant.record_flow(inputs, outputs, debug)
    log(f"{name}: understanding (mmu)")
    variant.record_understanding(inputs, outputs)
    log(f"{name}: text-to-image (euler)")
    variant.record_t2i(inputs, outputs)
    if name == "tuna_r":
        log(f"{name}: text-to-image (heun)")
        variant.record_t2i(inputs, outputs, prefix="t2i_heun", method="heun")
    log(f"{name}: editing")
    variant.record_edit(inputs, outputs)

    state_dict = variant.inner.state_dict()
    model_pt = folder / "model.pt"
    torch.save(state_dict, model_pt)
    if name == "tuna":
        torch.save(variant.inner.vae.model.state_dict(), folder / "vae.pt")
    if reload_check:
        log(f"{name}: reload check")
        variant.reload_check(model_pt, inputs, outputs)

    metadata = {"variant": name}
    save_file(contiguous_cpu(inputs), folder / "inputs.safetensors", metadata=metadata)
    save_file(contiguous_cpu(outputs), folder / "outputs.safetensors", metadata=metadata)
    save_file(contiguous_cpu(debug), folder / "debug.safetensors", metadata=metadata)
    (folder / "qwen2_config.json").write_text(variant.inner.tuna.config.to_json_string(use_diff=False))
    if name != "tuna_2":
        (folder / "siglip_vision_config.json").write_text(
            variant.inner.vision_model.config.to_json_string(use_diff=False)
        )

    description = variant.describe(official_commit, state_dict)
    description["run_report"] = variant.report
    description["timings_s"] = variant.timings
    description["model_pt_sha256"] = sha256(model_pt)
    (folder / "config.json").write_text(json.dumps(jsonable(description), indent=2, ensure_ascii=False) + "\n")
    log(f"{name}: done {variant.timings}")
    return description


# ---------------------------------------------------------------------------------------------------
# README of the generated folder
# ---------------------------------------------------------------------------------------------------
def write_readme(output: Path, official_commit: str, variants, tokenizer_note: str, command: str) -> None:
    env = environment()
    patches = "\n".join(f"{i}. {text}" for i, text in enumerate(RUNTIME_PATCHES, 1))
    text = f"""# Parity references for TUNA / Tuna-R / Tuna-2 (official code, tiny random weights)

Produced by `parity/record_references.py` of tuna-hf, which ran the **official** code of
`facebookresearch/tuna-2` (Apache-2.0), commit `{official_commit}`, on CPU in float32 with tiny,
randomly initialised configurations. Nothing here is real model weights.

Command: `{command}`

Environment: Python {env["python"]}, torch {env["torch"]}, transformers {env["transformers"]},
diffusers {env["diffusers"]}, {env["threads"]} CPU threads. Variants: {", ".join(variants)}.

## Layout

`tokenizer/` (tiny Qwen2TokenizerFast, 534 tokens; the official `get_text_tokenizer()` adds
`[PAD]`, `<image>`, `<|vid_start|>`, `<|vid_end|>` at load time, giving 538), and per variant
`<variant>/`: `model.pt` (`torch.save(tuna_model.state_dict())`, what `TunaInference.save_ckpt`
writes), `vae.pt` (tuna only, layout of `Wan2.2_VAE.pth`), `config.json` (every hyper-parameter,
token id, seed, state-dict key, harness constant, the weight rule, run report and timings),
`qwen2_config.json`, `siglip_vision_config.json` (tuna, tuna_r; NB it says 3 layers, the official code
keeps the first 2 and drops `post_layernorm`), `inputs.safetensors`, `outputs.safetensors`,
`debug.safetensors` (activations of the first conditional flow forward).

Variants: `tuna_2` = `tuna.models.tuna_2_pixel.Tuna2PixelModel`, `tuna_r` =
`tuna.models.tuna_2r_pixel.Tuna2RPixelModel`, `tuna` = `tuna.models.tuna.TunaModel` (Wan2.2 VAE
latents, tied embeddings).

## Tokenizer

{tokenizer_note}

## What was computed

* **Flow forwards** (inner model `forward`, text budget 16 so L = 33): prompt
  "{HARNESS["PROMPT_GEN"]}", negative "{HARNESS["NEG_GEN"]}", t in {HARNESS["T_VALUES"]},
  `flow.noise` = `torch.randn(generator=Generator().manual_seed(7))` (x2 for the pixel variants),
  `flow.t{{i}}.x_t = t*clean + (1-t)*noise` with clean = `{HARNESS["EDIT_IMAGE"]}` at 48x64 (tuna:
  deterministic VAE mean of it). Outputs `pred_cond`, `pred_uncond`, `pred_*_batched` (one batch-2
  forward), `pred_cfg` (official `t2i_generate`, g = 3), `logits_cond/uncond`.
* **Understanding**: official pipeline `mmu` ("{HARNESS["MMU_Q"]}", `{HARNESS["UND_IMAGE"]}` at 64x64,
  `torch.manual_seed(11)` first, 8 greedy tokens); `und.image_latents` is the tensor the model was fed
  (tuna: a stochastic VAE posterior sample). `und.logits` = full-sequence LM logits of the LLM on
  `und.input_embeds`.
* **Text-to-image**: official pipeline `t2i` (4 steps, CFG 3, `torch.manual_seed(42)` right before,
  negative prompt "{HARNESS["NEG_GEN"]}"), every model call (`call{{k}}.z_in/.t/.pred_cfg`), the final
  sample (input of `_decode_latents`), `vae_decoded` (tuna) and the uint8 image; `t2i_heun.*` for tuna_r
  with `sampling_method="heun"`.
* **Editing**: official pipeline `t2i_edit` (`generation_mode="edit"`, source `{HARNESS["EDIT_IMAGE"]}`
  at 48x64, "{HARNESS["EDIT_INSTR"]}", negative "{HARNESS["NEG_EDIT"]}", 4 steps, CFG 3,
  `torch.manual_seed(43)`).

Conventions (t = 0 noise, t = 1 clean; pixel variants predict x0, tuna predicts velocity; token
layouts, attention mask, RoPE) are those of the official code; see tuna-hf's `docs/` and the
reference README in the project's shared folder for the detailed description.

## Weights

{RANDOMIZE_RULE} (seed {RANDOMIZE_SEED}; norm = a parameter of a module whose class or attribute
name contains "norm".)

## Deviations from a stock (GPU) run — runtime patches, no official file edited

{patches}
"""
    (output / "README.md").write_text(text)


TOKENIZER_TRAINED_NOTE = (
    "Trained by this script: ids 0-511 are a byte-level BPE (tokenizers `BpeTrainer`, vocab 512, Qwen2 "
    "pre-tokenizer regex, NFC) trained on the lines of the official `assets/prompts.txt` and "
    "`data_examples/*.jsonl` plus the harness phrases (prompts, negatives, instruction, question, "
    "system prompt); ids 512-533 are the 22 Qwen2.5 special tokens in Qwen order; eos `<|im_end|>`, "
    "pad `<|endoftext|>`, a Qwen2.5 chat template reduced to system/user/assistant turns. It is "
    "equivalent in structure to, but not byte-identical with, the tokenizer of the first shared "
    "reference run (whose exact training text is not recorded); pass `--tokenizer DIR` to reuse one."
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of facebookresearch/tuna-2")
    parser.add_argument("--variant", default="all", choices=[*VARIANTS, "all"])
    parser.add_argument("--output", required=True, type=Path, help="folder to write (TUNA_PARITY_DIR)")
    parser.add_argument("--tokenizer", type=Path, help="reuse this tokenizer folder instead of training one")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (reference run: 2)")
    parser.add_argument("--no-reload-check", action="store_true", help="skip re-loading model.pt into a fresh model")
    args = parser.parse_args(argv)

    official = args.official.resolve()
    output = args.output.resolve()
    if not (official / "tuna" / "models" / "tuna.py").exists():
        parser.error(f"{official} is not a checkout of facebookresearch/tuna-2 (no tuna/models/tuna.py)")
    torch.set_num_threads(args.threads)
    commit = git_commit(official) or f"unknown ({official} is not a git checkout; expected {OFFICIAL_COMMIT})"
    if commit != OFFICIAL_COMMIT:
        log(f"warning: official checkout is at {commit}, the references were designed for {OFFICIAL_COMMIT}")
    install_import_patches(official)
    install_model_patches()

    output.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = output / "tokenizer"
    if args.tokenizer is not None:
        if args.tokenizer.resolve() != tokenizer_dir.resolve():  # re-recording a folder in place keeps its tokenizer
            shutil.rmtree(tokenizer_dir, ignore_errors=True)
            shutil.copytree(args.tokenizer.resolve(), tokenizer_dir)
        tokenizer_note = f"Copied from `{args.tokenizer}` (`--tokenizer`)."
    else:
        build_tokenizer(official, tokenizer_dir)
        tokenizer_note = TOKENIZER_TRAINED_NOTE

    variants = VARIANTS if args.variant == "all" else (args.variant,)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tuna-parity-") as work:
        work = Path(work)
        build_llm_dir(work / "assets" / "qwen2_tiny", tokenizer_dir, tied=False)
        build_llm_dir(work / "assets" / "qwen2_tiny_tied", tokenizer_dir, tied=True)
        build_siglip_dir(work / "assets" / "siglip_tiny")
        previous = os.getcwd()
        os.chdir(work)  # the wrapper kwargs name the tiny assets by these relative paths
        try:
            for name in variants:
                record_variant(name, official, output, commit, not args.no_reload_check)
        finally:
            os.chdir(previous)
    command = "python parity/record_references.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_readme(output, commit, variants, tokenizer_note, command)
    log(f"wrote {output} in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
