"""The compatibility layer (`tuna_hf._compat`): each shim gives what the newer library gives, on every version."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, Qwen2Config, SiglipVisionConfig

from tuna_hf import TunaConfig, TunaFlowHeadConfig, TunaForUnifiedMultimodal
from tuna_hf._compat import build_sub_config, pil_to_rgb_array, slice_logits_to_keep
from tuna_hf.testing import build_byte_tokenizer, tiny_tuna_config, tiny_tuna_processor

TINY_DECODER = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_the_default_config_builds_and_its_flow_head_follows_the_decoder():
    config = TunaConfig()
    assert isinstance(config.text_config, Qwen2Config) and config.vision_config is None
    assert config.flow_head_config.hidden_size == config.text_config.hidden_size


def test_a_decoder_given_as_a_dict_sets_the_flow_head_defaults():
    config = TunaConfig(text_config={"model_type": "qwen2", **TINY_DECODER}, visual_encoder="siglip", patch_size=16)
    assert config.flow_head_config.hidden_size == 128 and config.flow_head_config.num_attention_heads == 2
    assert isinstance(config.vision_config, SiglipVisionConfig)
    assert TunaConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_sub_configs_are_built_as_the_newer_library_builds_them():
    qwen = Qwen2Config(**TINY_DECODER)
    assert build_sub_config("text_config", qwen, AutoConfig) is qwen
    assert build_sub_config("vision_config", None, AutoConfig, optional=True) is None
    assert isinstance(
        build_sub_config("flow_head_config", {"hidden_size": 64}, TunaFlowHeadConfig), TunaFlowHeadConfig
    )
    built = build_sub_config("text_config", {"hidden_size": 64}, AutoConfig, "qwen2")
    assert isinstance(built, Qwen2Config) and built.hidden_size == 64


@pytest.mark.parametrize(
    ("text_config", "message"),
    [("qwen2", "text_config"), ({"model_type": "nope"}, "`text_config.model_type` must be a transformers model type")],
)
def test_bad_sub_configs_are_refused_by_name(text_config, message):
    with pytest.raises((StrictDataclassError, ValueError), match=message):
        TunaConfig(text_config=text_config)


def test_concurrent_processor_calls_keep_their_own_defaults(byte_tokenizer):
    processor = tiny_tuna_processor(byte_tokenizer)
    expected = type(processor(text="a red circle")["input_ids"])

    def call(index):
        if index % 2:
            return type(processor(text="a red circle", common_kwargs={"return_tensors": None})["input_ids"])
        return type(processor(text="a red circle")["input_ids"])

    with ThreadPoolExecutor(4) as pool:
        kinds = list(pool.map(call, range(64)))
    assert kinds[0::2] == [expected] * 32 and type(processor(text="x")["input_ids"]) is expected


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB", "L"])
def test_pil_images_become_rgb_with_transparency_on_white(mode):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:2, :, 3], rgba[2:, :, 3] = 200, 255, 0  # red-ish top half, transparent bottom half
    image = PIL.Image.fromarray(rgba, "RGBA").convert(mode)
    pixels = pil_to_rgb_array(image)
    assert pixels.shape == (4, 5, 3) and pixels.dtype == np.uint8
    if "A" in mode:
        assert (pixels[2:] == 255).all()
    try:  # transformers >= 5.21 has the same conversion itself
        from transformers.image_transforms import convert_to_rgb

        np.testing.assert_array_equal(pixels, convert_to_rgb(image, return_numpy=True))
    except TypeError:
        pass


@pytest.mark.parametrize(
    "logits_to_keep",
    [0, 1, 3, torch.tensor([0, 2]), torch.tensor([[1, 3], [0, 2]]), torch.tensor([[True, False, True, False]] * 2)],
    ids=["all", "last", "last-3", "1-D", "2-D", "mask"],
)
def test_slice_logits_to_keep(logits_to_keep):
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    kept = slice_logits_to_keep(hidden, logits_to_keep)
    if isinstance(logits_to_keep, int):
        assert torch.equal(kept, hidden[:, -logits_to_keep:])
    elif logits_to_keep.dtype == torch.bool:
        assert torch.equal(kept, hidden[logits_to_keep])
    elif logits_to_keep.ndim == 2:
        assert torch.equal(kept[1, 0], hidden[1, 0]) and torch.equal(kept[0, 1], hidden[0, 3])
    else:
        assert torch.equal(kept, hidden[:, logits_to_keep])


def test_activation_checkpointing_names_on_every_version():
    model = TunaForUnifiedMultimodal(tiny_tuna_config("patch", build_byte_tokenizer())).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
