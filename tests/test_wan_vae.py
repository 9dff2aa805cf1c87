"""Parity of the Wan 2.2 VAE helpers with the official TUNA reference run (tiny random VAE)."""

import pytest
import torch
from conftest import official_vae_kwargs, require_parity

from tuna_hf.wan_vae import (
    WAN22_LATENTS_STD,
    convert_wan22_vae_state_dict,
    decode_wan_latents,
    denormalize_wan_latents,
    normalize_wan_latents,
    sample_wan_posterior,
    wan22_vae_config,
)

ATOL = 1e-4


@pytest.fixture(scope="module")
def tuna_dir():
    return require_parity() / "tuna"


@pytest.fixture(scope="module")
def upstream_state_dict(tuna_dir):
    return torch.load(tuna_dir / "vae.pt", weights_only=True)


@pytest.fixture(scope="module")
def vae(tuna_dir, upstream_state_dict):
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan(**wan22_vae_config(**official_vae_kwargs(tuna_dir))).to(torch.float32).eval()
    model.load_state_dict(convert_wan22_vae_state_dict(upstream_state_dict), strict=True)
    return model


@pytest.fixture(scope="module")
def references(tuna_dir):
    from safetensors.torch import load_file

    return load_file(tuna_dir / "inputs.safetensors"), load_file(tuna_dir / "outputs.safetensors")


def test_default_config_is_wan22():
    config = wan22_vae_config()
    assert len(WAN22_LATENTS_STD) == 48
    assert config["latents_std"] == list(WAN22_LATENTS_STD)
    assert (config["base_dim"], config["decoder_base_dim"], config["z_dim"]) == (160, 256, 48)
    assert (config["in_channels"], config["patch_size"]) == (12, 2)
    assert (config["scale_factor_spatial"], config["scale_factor_temporal"]) == (16, 4)


def test_normalisation_round_trip():
    z = torch.randn(2, 48, 1, 3, 4)
    restored = denormalize_wan_latents(normalize_wan_latents(z, WAN22_LATENTS_STD), WAN22_LATENTS_STD)
    torch.testing.assert_close(restored, z, atol=1e-5, rtol=0)


def test_key_renames_and_unmapped_keys_raise():
    upstream = {
        "conv1.bias": torch.zeros(1),
        "decoder.head.2.weight": torch.zeros(1),
        "encoder.middle.2.residual.3.gamma": torch.zeros(1),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": torch.zeros(1),
        "decoder.upsamples.0.upsamples.3.time_conv.bias": torch.zeros(1),
    }
    assert sorted(convert_wan22_vae_state_dict(upstream)) == [
        "decoder.conv_out.weight",
        "decoder.up_blocks.0.upsampler.time_conv.bias",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.resnets.1.norm2.gamma",
        "quant_conv.bias",
    ]
    with pytest.raises(KeyError, match=r"encoder\.unknown\.weight"):
        convert_wan22_vae_state_dict({**upstream, "encoder.unknown.weight": torch.zeros(1)})


def test_deterministic_encode_matches_flow_clean(vae, references):
    inputs, _ = references
    latents = sample_wan_posterior(vae, inputs["flow.clean_pixels"], sample=False)
    torch.testing.assert_close(latents, inputs["flow.clean"], atol=ATOL, rtol=0)


def test_stochastic_encode_matches_edit_source(vae, references):
    # The official edit pipeline draws the source posterior noise first after torch.manual_seed(43).
    inputs, _ = references
    pixels = inputs["edit.source_pixels"].permute(0, 2, 1, 3, 4)  # [B, N, C, H, W] -> [B, C, T=1, H, W]
    torch.manual_seed(43)
    latents = sample_wan_posterior(vae, pixels)
    torch.testing.assert_close(latents, inputs["edit.image_edit_original"][:1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("task", ["t2i", "edit"])
def test_decode_matches_reference(vae, references, task):
    _, outputs = references
    pixels = decode_wan_latents(vae, outputs[f"{task}.final_sample"])
    torch.testing.assert_close(pixels, outputs[f"{task}.vae_decoded"], atol=ATOL, rtol=0)


def test_model_checkpoint_vae_matches_vae_pt(tuna_dir, upstream_state_dict):
    prefix = "vae.model."
    full = torch.load(tuna_dir / "model.pt", weights_only=True)
    from_model = convert_wan22_vae_state_dict({k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)})
    from_vae_pt = convert_wan22_vae_state_dict(upstream_state_dict)
    assert from_model.keys() == from_vae_pt.keys()
    for key, tensor in from_vae_pt.items():
        torch.testing.assert_close(from_model[key], tensor, atol=0, rtol=0, msg=key)
