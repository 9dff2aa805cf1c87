"""The released official TUNA configurations as data, for `convert_official --preset` (no network needed).

Each preset holds what the official model YAML (`configs/model/*.yaml` of facebookresearch/tuna-2) contributes to the
architecture and to training (masking, understanding noise), and the configs of the pretrained parts it names: the
Qwen2.5-Instruct LLM and, for Tuna and Tuna-R, SigLIP2 so400m-patch16-384 (docs/architecture.md §1, §10). The Wan 2.2
VAE uses `wan22_vae_config()`'s defaults.
"""

QWEN25_1_5B_INSTRUCT = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
QWEN25_7B_INSTRUCT = {
    **QWEN25_1_5B_INSTRUCT,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
}
SIGLIP2_SO400M_PATCH16_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}

# SigLIP on the 48-channel Wan latents with a 1×1 patch embedding (Tuna), or on 512² pixels (Tuna-R).
_TUNA_SIGLIP = {"siglip_image_size": 32, "siglip_patch_size": 1, "siglip_num_channels": 48, "siglip_feature_layer": -2}
_FLOW_HEAD_7B = {"num_attention_heads": 56, "num_key_value_heads": 14, "flow_head_num": 16}

OFFICIAL_PRESETS = {
    "tuna-2b": {
        "official_class": "tuna.models.tuna.TunaModel",
        "base_model": "Qwen/Qwen2.5-1.5B-Instruct",
        "model_kwargs": {
            "num_attention_heads": 24,
            "num_key_value_heads": 8,
            "flow_head_num": 40,
            "patch_size": 1,
            "image_latent_dim": 48,
            **_TUNA_SIGLIP,
        },
        "llm_config": QWEN25_1_5B_INSTRUCT,
        "siglip_config": SIGLIP2_SO400M_PATCH16_384,
    },
    "tuna-7b": {
        "official_class": "tuna.models.tuna.TunaModel",
        "base_model": "Qwen/Qwen2.5-7B-Instruct",
        "model_kwargs": {**_FLOW_HEAD_7B, "patch_size": 1, "image_latent_dim": 48, **_TUNA_SIGLIP},
        "llm_config": QWEN25_7B_INSTRUCT,
        "siglip_config": SIGLIP2_SO400M_PATCH16_384,
    },
    "tuna-r-7b": {
        "official_class": "tuna.models.tuna_2r_pixel.Tuna2RPixelModel",
        "base_model": "Qwen/Qwen2.5-7B-Instruct",
        "model_kwargs": {
            **_FLOW_HEAD_7B,
            "patch_size": 16,
            "image_latent_dim": 3,
            "siglip_image_size": 512,
            "siglip_feature_layer": -2,
            "enable_mask_token": False,
            "masked_image_ratio": 0.75,
            "masked_image_ratio_min": 0.0,
            "mmu_noise_prob": 0.1,
            "mmu_noise_level": 0.1,
        },
        "llm_config": QWEN25_7B_INSTRUCT,
        "siglip_config": SIGLIP2_SO400M_PATCH16_384,
    },
    "tuna-2-7b": {
        "official_class": "tuna.models.tuna_2_pixel.Tuna2PixelModel",
        "base_model": "Qwen/Qwen2.5-7B-Instruct",
        "model_kwargs": {
            **_FLOW_HEAD_7B,
            "patch_size": 16,
            "image_latent_dim": 3,
            "enable_mask_token": True,
            "masked_image_ratio": 0.3,
            "masked_image_ratio_min": -0.7,
            "mmu_noise_prob": 0.1,
            "mmu_noise_level": 0.1,
        },
        "llm_config": QWEN25_7B_INSTRUCT,
        "siglip_config": None,
    },
}
