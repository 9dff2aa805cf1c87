"""`set_attention_backend`, diffusers' attention-backend call (vLLM-Omni's diffusers adapter makes it), on TUNA."""

import pytest
import torch

from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

IMPLEMENTATIONS = {"native": "sdpa", "flex": "flex_attention", "_native_math": "eager", "NATIVE": "sdpa"}


def attention_implementations(model) -> dict[str, str | None]:
    config = model.config
    return {
        "decoder": config.text_config._attn_implementation,
        "flow head": config.flow_head_config._attn_implementation,
        "SigLIP": config.vision_config._attn_implementation,
    }


@torch.no_grad()
def flow_prediction(model, processor) -> torch.Tensor:
    inputs = processor.build_generation_inputs(["a red circle"], ["low quality"], height=32, width=48)
    latents = torch.randn(2, model.config.latent_channels, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    return model(**inputs, image_latents=latents, timesteps=torch.tensor([0.3, 0.3])).flow_prediction


@pytest.mark.parametrize("backend", IMPLEMENTATIONS)
def test_the_backend_selects_the_implementation_of_every_attention(byte_tokenizer, backend):
    model = tiny_tuna_model("siglip", byte_tokenizer)
    model.set_attention_backend(backend)
    implementation = IMPLEMENTATIONS[backend]
    assert model.config._attn_implementation == implementation
    assert attention_implementations(model) == dict.fromkeys(("decoder", "flow head", "SigLIP"), implementation)


def test_the_math_backend_computes_what_sdpa_does(byte_tokenizer):
    model, processor = tiny_tuna_model("patch", byte_tokenizer), tiny_tuna_processor(byte_tokenizer)
    reference = flow_prediction(model, processor)
    model.set_attention_backend("_native_math")
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(flow_prediction(model, processor), reference, rtol=1e-4, atol=1e-5)
    model.set_attention_backend("native")
    torch.testing.assert_close(flow_prediction(model, processor), reference, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["flash", "sage", "xformers", "not-a-backend", None])
def test_backends_without_an_arbitrary_mask_raise(byte_tokenizer, backend):
    model = tiny_tuna_model("patch", byte_tokenizer)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        model.set_attention_backend(backend)
    assert model.config._attn_implementation == "sdpa"
