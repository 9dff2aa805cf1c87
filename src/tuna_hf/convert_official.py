"""The official checkpoints (facebookresearch/tuna-2) in our terms: their model config and state-dict keys.

Official inner-model keys (`tuna.model.*`, `diffusion_head_a.*`, …, see the anatomy §1.3) are renamed to ours; the
Wan 2.2 VAE (`vae.model.*`, Tuna only) is converted to the diffusers `AutoencoderKLWan` layout.
"""

import re
from collections.abc import Mapping

import torch
from transformers import Qwen2Config, SiglipVisionConfig

from .configuration_tuna import TunaConfig
from .wan_vae import convert_wan22_vae_state_dict, wan22_vae_config

# Official wrapper class → our `visual_encoder`.
OFFICIAL_VISUAL_ENCODERS = {
    "TunaModel": "vae_siglip",
    "Tuna2RPixelModel": "siglip",
    "Tuna2PixelModel": "patch",
}

OFFICIAL_KEY_RULES = [
    (r"^tuna\.model\.", "model.language_model."),
    (r"^tuna\.lm_head\.", "lm_head."),
    (r"^vision_model\.", "model.vision_tower."),
    (r"^siglip_proj\.0\.", "model.connector.norm."),
    (r"^siglip_proj\.1\.", "model.connector.linear_1."),
    (r"^siglip_proj\.3\.", "model.connector.linear_2."),
    (r"^vision_encoder\.patch_embedding\.", "model.patch_embed.proj."),
    (r"^vision_encoder\.norm\.", "model.patch_embed.norm."),
    (r"^mask_token$", "model.mask_token"),
    (r"^time_embed\.mlp\.0\.", "model.timestep_embedder.linear_1."),
    (r"^time_embed\.mlp\.2\.", "model.timestep_embedder.linear_2."),
    (r"^diffusion_head_a\.(\d+)\.adaLN_modulation\.1\.", r"flow_head.layers.\1.modulation."),
    (r"^diffusion_head_a\.", "flow_head.layers."),
    (r"^diffusion_head_b\.norm_final\.", "flow_head.final_layer.norm."),
    (r"^diffusion_head_b\.linear\.", "flow_head.final_layer.proj."),
    (r"^diffusion_head_b\.adaLN_modulation\.1\.", "flow_head.final_layer.modulation."),
]
OFFICIAL_VAE_PREFIX = "vae.model."


def rename_official_key(key: str) -> str | None:
    """Our name for an official (non-VAE) key, or None when no rule maps it."""
    for pattern, replacement in OFFICIAL_KEY_RULES:
        new_key, hits = re.subn(pattern, replacement, key)
        if hits:
            return new_key
    return None


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official inner-model state dict; returns `(converted, unmapped_keys)` (tensors are shared)."""
    converted, unmapped, vae = {}, [], {}
    for key, tensor in state_dict.items():
        if key.startswith(OFFICIAL_VAE_PREFIX):
            vae[key.removeprefix(OFFICIAL_VAE_PREFIX)] = tensor
        elif (new_key := rename_official_key(key)) is not None:
            converted[new_key] = tensor
        else:
            unmapped.append(key)
    if vae:
        converted.update({f"model.vae.{key}": tensor for key, tensor in convert_wan22_vae_state_dict(vae).items()})
    return converted, unmapped


def load_official_state_dict(model, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load an official state dict into a `TunaForUnifiedMultimodal`, strictly: every mismatch is an error."""
    converted, unmapped = convert_official_state_dict(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(unmapped + [key for key in converted if key not in expected])
    mismatched = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(converted) & set(expected)
        if converted[key].shape != expected[key].shape
    )
    problems = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    if any(problems.values()):
        raise ValueError(
            "The official checkpoint does not match the model:\n"
            + "\n".join(f"  {name} ({len(items)}): {items}" for name, items in problems.items() if items)
        )
    model.load_state_dict(converted, strict=True)


def tuna_config_from_official(
    official_class: str,
    model_kwargs: Mapping,
    llm_config: Mapping,
    token_ids: Mapping[str, int],
    siglip_config: Mapping | None = None,
    vae_kwargs: Mapping | None = None,
) -> TunaConfig:
    """Our config from the official model YAML values (`model_kwargs`), the base LLM and SigLIP configs.

    `official_class` is the wrapper class name (e.g. `Tuna2PixelModel`); `token_ids` are the tokenizer's ids for
    `image_pad`, `boi`, `eoi` (keys as in the official `tuna_token_ids`: `img_pad_id`, `boi_id`, `eoi_id`).
    """
    visual_encoder = OFFICIAL_VISUAL_ENCODERS.get(official_class.rsplit(".", 1)[-1])
    if visual_encoder is None:
        raise ValueError(
            f"Unknown official model class {official_class!r}; expected one of {list(OFFICIAL_VISUAL_ENCODERS)}."
        )
    text_config = Qwen2Config(**{k: v for k, v in llm_config.items() if not k.startswith("_")})
    flow_head_config = {
        "hidden_size": text_config.hidden_size,
        "intermediate_size": text_config.intermediate_size,
        "num_hidden_layers": model_kwargs["flow_head_num"],
        "num_attention_heads": model_kwargs["num_attention_heads"],
        "num_key_value_heads": model_kwargs["num_key_value_heads"],
        "max_position_embeddings": text_config.max_position_embeddings,
    }
    return TunaConfig(
        text_config=text_config,
        vision_config=_official_siglip_config(visual_encoder, model_kwargs, siglip_config),
        flow_head_config=flow_head_config,
        visual_encoder=visual_encoder,
        latent_channels=model_kwargs["image_latent_dim"],
        patch_size=model_kwargs["patch_size"],
        vae_config=wan22_vae_config(**(vae_kwargs or {})) if visual_encoder == "vae_siglip" else None,
        use_mask_token=bool(model_kwargs.get("enable_mask_token", False)),
        mask_ratio_min=model_kwargs.get("masked_image_ratio_min", -0.7),
        mask_ratio_max=model_kwargs.get("masked_image_ratio", 0.3),
        image_token_id=token_ids["img_pad_id"],
        boi_token_id=token_ids["boi_id"],
        eoi_token_id=token_ids["eoi_id"],
    )


def _official_siglip_config(visual_encoder, model_kwargs, siglip_config) -> SiglipVisionConfig | None:
    """The SigLIP tower as the official code builds it: resized grid/patch/channels, layers up to the feature layer."""
    if visual_encoder == "patch":
        return None
    if siglip_config is None:
        raise ValueError(f"`siglip_config` is required for the {visual_encoder!r} variant.")
    config = SiglipVisionConfig(**{k: v for k, v in siglip_config.items() if not k.startswith("_")})
    config.image_size = model_kwargs.get("siglip_image_size", config.image_size)
    config.patch_size = model_kwargs.get("siglip_patch_size", config.patch_size)
    config.num_channels = model_kwargs.get("siglip_num_channels", config.num_channels)
    feature_layer = model_kwargs.get("siglip_feature_layer", -2)
    config.num_hidden_layers = (
        feature_layer + 1 if feature_layer >= 0 else config.num_hidden_layers + feature_layer + 1
    )
    config.vision_use_head = False
    return config
