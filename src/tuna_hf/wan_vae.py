"""Wan 2.2 VAE helpers for TUNA: diffusers config, checkpoint conversion, latent (de)normalisation.

TUNA (variant A) works in the latent space of the Wan 2.2 VAE (48 channels, 16x spatial / 4x temporal
compression). We run that VAE as ``diffusers.AutoencoderKLWan`` and reproduce TUNA's normalisation here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from .locks import lock_for

# Per-channel latent std of the Wan 2.2 VAE. Identical to `latents_std` of diffusers' Wan2.2 AutoencoderKLWan
# config and to `WAN_VAE_2_2_STD` of the official `tuna/models/vae/wan22_vae.py`.
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

_PATCH_SIZE = 2  # Wan 2.2 folds 2x2 pixel patches into channels: 3 RGB -> 12 VAE channels


def wan22_vae_config(
    z_dim: int = 48,
    dim: int = 160,
    dec_dim: int = 256,
    dim_mult: Sequence[int] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    attn_scales: Sequence[float] = (),
    temperal_downsample: Sequence[bool] = (False, True, True),
    dropout: float = 0.0,
) -> dict:
    """Keyword arguments of ``AutoencoderKLWan`` for the official Wan 2.2 VAE arguments (defaults = real VAE).

    ``latents_mean`` is set to the *std* list: that is the normalisation TUNA was trained with (see
    :func:`normalize_wan_latents`), so ``(z - latents_mean) / latents_std`` gives TUNA latents. The helpers below
    only read ``latents_std``, so they also work with the upstream Wan2.2 config (whose mean differs).
    """
    channels = 3 * _PATCH_SIZE**2
    return {
        "base_dim": dim,
        "decoder_base_dim": dec_dim,
        "z_dim": z_dim,
        "dim_mult": list(dim_mult),
        "num_res_blocks": num_res_blocks,
        "attn_scales": list(attn_scales),
        "temperal_downsample": list(temperal_downsample),
        "dropout": dropout,
        "is_residual": True,
        "in_channels": channels,
        "out_channels": channels,
        "patch_size": _PATCH_SIZE,
        "scale_factor_temporal": 2 ** sum(map(bool, temperal_downsample)),
        "scale_factor_spatial": _PATCH_SIZE * 2 ** (len(dim_mult) - 1),
        "latents_mean": list(WAN22_LATENTS_STD),
        "latents_std": list(WAN22_LATENTS_STD),
    }


# Upstream `Wan2.2_VAE.pth` -> AutoencoderKLWan. Exactly one block rule must match every key; the residual-block
# leaf names are renamed afterwards. Attention leaves (norm.gamma, to_qkv, proj) and resample.1 keep their names.
_BLOCK_RULES = [
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
    (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
    (r"^(encoder|decoder)\.middle\.0\.(?=residual)", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.middle\.1\.(?=norm|to_qkv|proj)", r"\1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.middle\.2\.(?=residual)", r"\1.mid_block.resnets.1."),
    # encoder.downsamples.I.downsamples.J.* / decoder.upsamples.I.upsamples.J.*
    (r"^(encoder\.down|decoder\.up)samples\.(\d+)\.(down|up)samples\.(\d+)\.(?=residual|shortcut)",
     r"\1_blocks.\2.resnets.\4."),
    (r"^(encoder\.down|decoder\.up)samples\.(\d+)\.(down|up)samples\.\d+\.(?=resample|time_conv)",
     r"\1_blocks.\2.\3sampler."),
]  # fmt: skip
_RESIDUAL_LEAVES = {
    "residual.0.": "norm1.",
    "residual.2.": "conv1.",
    "residual.3.": "norm2.",
    "residual.6.": "conv2.",
    "shortcut.": "conv_shortcut.",
}


def _rename(key: str) -> str | None:
    for pattern, replacement in _BLOCK_RULES:
        new_key, hit = re.subn(pattern, replacement, key)
        if hit:
            return re.sub(r"\.(residual\.[0236]\.|shortcut\.)", lambda m: "." + _RESIDUAL_LEAVES[m[1]], new_key)
    return None


def convert_wan22_vae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an upstream ``Wan2.2_VAE.pth`` state dict to the ``AutoencoderKLWan`` layout (tensors are shared)."""
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        new_key = _rename(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    if unmapped:
        raise KeyError(f"{len(unmapped)} unmapped Wan2.2 VAE keys: {sorted(unmapped)}")
    return converted


# TUNA normalisation quirk (docs/architecture.md §11; official `wan22_vae.py` sets WAN_VAE_2_2_MEAN = WAN_VAE_2_2_STD):
# the per-channel std is used as *both* shift and scale, and the checkpoints were trained that way.
def _channel_view(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values.view(1, -1, *([1] * (like.ndim - 2)))


def normalize_wan_latents(mu: torch.Tensor, latents_std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Raw VAE mean ``[B, C, ...]`` -> TUNA latent: ``(mu - std) / std`` per channel."""
    std = _channel_view(latents_std, mu)
    return (mu - std) / std


def denormalize_wan_latents(z: torch.Tensor, latents_std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """TUNA latent -> raw VAE latent: ``z * std + std`` per channel (inverse of :func:`normalize_wan_latents`)."""
    std = _channel_view(latents_std, z)
    return z * std + std


@torch.no_grad()
def sample_wan_posterior(vae, pixels: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
    """Encode pixels ``[B, 3, T, H, W]`` in [-1, 1] to TUNA latents; the posterior mean when ``sample=False``.

    As in the official ``WanVAE_.sample``, the noise std ``exp(logvar / 2)`` is added *after* normalisation and
    is not divided by the channel std.
    """
    with lock_for(vae):  # the VAE keeps a call's conv caches on itself
        posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    mu = normalize_wan_latents(posterior.mean, vae.config.latents_std)
    if not sample:
        return mu
    std = torch.exp(0.5 * posterior.logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + std * noise


@torch.no_grad()
def decode_wan_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """TUNA latents ``[B, 48, T, h, w]`` -> pixels ``[B, 3, T', H, W]`` clamped to [-1, 1]."""
    latents = denormalize_wan_latents(z.to(vae.dtype), vae.config.latents_std)
    with lock_for(vae):  # the VAE keeps a call's conv caches on itself
        return vae.decode(latents).sample.clamp(-1.0, 1.0)
