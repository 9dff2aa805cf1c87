"""Building a fresh TUNA from pretrained parts (Qwen2.5, SigLIP, Wan 2.2 VAE) saved locally, as stage 1 starts."""

import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from tuna_hf import TunaForUnifiedMultimodal
from tuna_hf.testing import build_byte_tokenizer
from tuna_hf.wan_vae import wan22_vae_config


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512)
    )  # fmt: skip
    qwen.save_pretrained(root / "qwen")
    siglip = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=64, patch_size=16)
    )  # fmt: skip
    siglip.save_pretrained(root / "siglip")
    AutoencoderKLWan(**wan22_vae_config(dim=8, dec_dim=8)).save_pretrained(root / "vae")
    return root, qwen, siglip


def test_tuna_r_from_parts(parts):
    root, qwen, siglip = parts
    tokenizer = build_byte_tokenizer()
    vision_config = SiglipVisionConfig(**{**siglip.config.to_dict(), "num_hidden_layers": 2})
    flow_head = {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    model = TunaForUnifiedMultimodal.from_pretrained_parts(
        root / "qwen", tokenizer, "siglip", vision_tower=root / "siglip", vision_config=vision_config,
        flow_head_config=flow_head,
    )  # fmt: skip
    # The official `resize_token_embeddings(len(tokenizer))` shrinks the padded vocabulary.
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) < 320
    torch.testing.assert_close(model.get_input_embeddings().weight, qwen.model.embed_tokens.weight[: len(tokenizer)])
    torch.testing.assert_close(
        model.model.language_model.layers[1].mlp.up_proj.weight, qwen.model.layers[1].mlp.up_proj.weight
    )
    kept = model.model.vision_tower.encoder.layers
    assert len(kept) == 2
    torch.testing.assert_close(kept[1].mlp.fc1.weight, siglip.encoder.layers[1].mlp.fc1.weight)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_tuna_from_parts_takes_the_vae(parts):
    root, _, _ = parts
    vision_config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=4, patch_size=1, num_channels=48)  # fmt: skip
    model = TunaForUnifiedMultimodal.from_pretrained_parts(
        root / "qwen", build_byte_tokenizer(), "vae_siglip", vision_tower=root / "siglip", vae=root / "vae",
        vision_config=vision_config, latent_channels=48, patch_size=1,
        flow_head_config={"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
    )  # fmt: skip
    reference = AutoencoderKLWan.from_pretrained(root / "vae")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.model.vae.state_dict()[key], value), key
    # SigLIP's 16x16 RGB patch embedding does not fit the 1x1 latent patch embedding: not warm-started.
    assert model.model.vision_tower.embeddings.patch_embedding.weight.shape == (32, 48, 1, 1)
