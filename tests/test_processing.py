"""TunaImageProcessor / TunaProcessor: official preprocessing and token layouts (../shared/parity references)."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import VARIANTS, require_parity
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer

from tuna_hf.image_processing_tuna import TunaImageProcessor
from tuna_hf.processing_tuna import TunaProcessor, add_tuna_tokens

PAD_ID = 534
QUESTION = "Describe this image."


def synthetic_image(width=97, height=61, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference_transform(image, height, width):
    """Independent re-derivation of the official runner transform (PIL bicubic cover-resize, floor crop, [-1, 1])."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    array = np.asarray(resized, dtype=np.float32)[top : top + height, left : left + width] / np.float32(255)
    return ((array - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)


def unpadded(row):
    row = row.tolist()
    return row[: row.index(PAD_ID)] if PAD_ID in row else row


@pytest.fixture(scope="module")
def processor():
    tokenizer = add_tuna_tokens(AutoTokenizer.from_pretrained(require_parity() / "tokenizer"))
    return TunaProcessor(TunaImageProcessor(), tokenizer)


@pytest.mark.parametrize("size", [(64, 64), (48, 64), (32, 80), (96, 32)])
def test_pixels_match_independent_transform(size):
    image = synthetic_image()
    pixels = TunaImageProcessor()(image, height=size[0], width=size[1], return_tensors="pt")["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, *size)
    torch.testing.assert_close(pixels[0], torch.from_numpy(reference_transform(image, *size)), atol=1e-6, rtol=0)


def test_video_pixels_are_per_frame_transforms():
    frames = [synthetic_image(seed=seed) for seed in range(5)]
    videos = TunaImageProcessor()(videos=[frames, frames[::-1]], height=48, width=64, return_tensors="pt")
    assert videos["pixel_values"].shape == (2, 3, 5, 48, 64)
    for t, frame in enumerate(frames):
        expected = torch.from_numpy(reference_transform(frame, 48, 64))
        torch.testing.assert_close(videos["pixel_values"][0, :, t], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(videos["pixel_values"][1, :, 4 - t], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"height": 50}, "`height`"),
        ({"width": 8}, "`width`"),
        ({"size": {"height": 64, "width": 70}}, '`size["width"]`'),
    ],
)
def test_size_must_be_multiple_of_divisor(kwargs, argument):
    with pytest.raises(ValueError, match=re.escape(f"{argument} must be a positive multiple of 16")):
        TunaImageProcessor()(synthetic_image(), **kwargs)


def test_postprocess_truncates_like_official_denorm():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0, 2 * 200.9 / 255 - 1]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    expected = [0, 0, 127, 254, 255, 255, 200]  # 127.5 -> 127, 254.87 -> 254, 200.9 -> 200: truncation
    processor = TunaImageProcessor()
    assert processor.postprocess(x, output_type="np")[0, 0, :, 0].tolist() == expected
    assert processor.postprocess(x, output_type="pt")[0, 0, 0].tolist() == expected
    assert np.asarray(processor.postprocess(x)[0])[0, :, 0].tolist() == expected


def test_add_tuna_tokens_matches_official_ids():
    tokenizer = AutoTokenizer.from_pretrained(require_parity() / "tokenizer")
    assert len(tokenizer) == 534
    add_tuna_tokens(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "<image>", "<|vid_start|>", "<|vid_end|>"])
    assert ids == [534, 535, 536, 537] and len(tokenizer) == 538 and tokenizer.pad_token_id == 534


def test_num_image_tokens(processor):
    assert processor.num_image_tokens(64, 64) == 17
    assert processor.num_image_tokens(48, 64) == 13
    assert processor.num_image_tokens(48, 64, num_frames=9) == 1 + 3 * 12
    with pytest.raises(ValueError, match="`num_frames`"):
        processor.num_image_tokens(48, 64, num_frames=4)
    with pytest.raises(ValueError, match="`height`"):
        processor.num_image_tokens(40, 64)


def test_chat_template_matches_official_prompt(processor):
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    items = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    plain = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    assert processor.apply_chat_template(items, add_generation_prompt=True) == expected
    assert processor.apply_chat_template(plain, add_generation_prompt=True) == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_understanding_tokens_match_parity(processor, variant):
    inputs = load_file(require_parity() / variant / "inputs.safetensors")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    out = processor(text=prompt, images=synthetic_image(), height=64, width=64)
    assert out["input_ids"].tolist() == inputs["und.text_tokens"].tolist()
    assert out["attention_mask"].all() and out["pixel_values"].shape == (1, 3, 64, 64)
    offset = out["input_ids"][0].tolist().index(processor.boi_token_id) + 1
    assert [offset, processor.num_image_tokens(64, 64)] == inputs["und.modality_positions"][0, 0].tolist()


def test_understanding_through_chat_template_tokenize(processor):
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": synthetic_image()}, {"type": "text", "text": "Hi"}]}
    ]
    size = {"height": 32, "width": 48}
    out = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs=size
    )
    assert out["pixel_values"].shape == (1, 3, 32, 48)
    assert (out["input_ids"] == processor.image_pad_token_id).sum() == processor.num_image_tokens(32, 48)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_tokens_match_parity(processor, variant):
    inputs = load_file(require_parity() / variant / "inputs.safetensors")
    out = processor.build_generation_inputs("a red cube on a blue table", "low quality", height=48, width=64)
    assert out["input_ids"].shape[0] == 2
    for row, mask, reference in zip(out["input_ids"], out["attention_mask"], inputs["t2i.text_tokens"], strict=True):
        assert row[mask.bool()].tolist() == unpadded(reference)
        assert row[~mask.bool()].eq(PAD_ID).all() and mask.tolist() == sorted(mask.tolist(), reverse=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_edit_tokens_match_parity(processor, variant):
    inputs = load_file(require_parity() / variant / "inputs.safetensors")
    out = processor.build_edit_inputs("make it sunset", "blurry, low quality", height=48, width=64)
    for row, mask, reference in zip(out["input_ids"], out["attention_mask"], inputs["edit.text_tokens"], strict=True):
        assert row[mask.bool()].tolist() == unpadded(reference)


def test_falsy_negative_prompt_is_empty_text(processor):
    out = processor.build_generation_inputs(["a cat", "a dog"], [None, ""], height=32, width=32, return_tensors=None)
    span = [processor.boi_token_id] + [processor.image_pad_token_id] * 5 + [processor.eoi_token_id]
    empty = [processor.bos_token_id, *span, processor.eos_token_id]
    assert [unpadded(torch.tensor(row)) for row in out["input_ids"][2:]] == [empty, empty]
    assert len(processor.build_generation_inputs("a cat", height=32, width=32)["input_ids"]) == 1


def test_video_understanding_span(processor):
    frames = [synthetic_image(seed=seed) for seed in range(5)]
    out = processor(text="<image>\nWhat happens?", videos=[frames], height=32, width=48)
    assert out["pixel_values"].shape == (1, 3, 5, 32, 48)
    assert (out["input_ids"] == processor.image_pad_token_id).sum() == 1 + 2 * 2 * 3


def test_errors(processor):
    with pytest.raises(ValueError, match="2 <image> placeholders in the text but 1 images"):
        processor(text="<image><image>", images=synthetic_image())
    with pytest.raises(ValueError, match="1 <image> placeholders in the text but 2 videos"):
        processor(text="<image>", videos=[[synthetic_image()], [synthetic_image()]])
    with pytest.raises(ValueError, match="`max_length`"):
        processor.build_generation_inputs("a red cube on a blue table", height=48, width=64, max_length=20)
    with pytest.raises(ValueError, match="`max_length`"):
        processor.build_edit_inputs("make it sunset", height=48, width=64, max_length=30)
    with pytest.raises(ValueError, match="`max_length`"):
        processor(text="a long question <image>", images=synthetic_image(), height=32, width=32, max_length=8)
    with pytest.raises(ValueError, match="add_tuna_tokens"):
        TunaProcessor(TunaImageProcessor(), AutoTokenizer.from_pretrained(require_parity() / "tokenizer"))


def test_decode_strips_special_tokens(processor):
    ids = processor.build_generation_inputs("a red cube", "low", height=32, width=32)["input_ids"]
    assert processor.post_process_image_text_to_text(ids) == processor.batch_decode(ids, skip_special_tokens=True)
    assert processor.post_process_image_text_to_text(ids)[0] == processor.decode(ids[0], skip_special_tokens=True)
    assert "<|" not in processor.post_process_image_text_to_text(ids)[0]


def test_save_and_load_round_trip(processor, tmp_path):
    processor = TunaProcessor(TunaImageProcessor(size={"height": 48, "width": 64}), processor.tokenizer)
    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_processor"]["image_processor_type"] == "TunaImageProcessor"
    assert saved["image_token"] == "<image>" and saved["temporal_compression"] == 4

    for loaded in (TunaProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is TunaProcessor and type(loaded.image_processor) is TunaImageProcessor
        assert loaded.chat_template == processor.chat_template and len(loaded.tokenizer) == 538
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompts = [p.apply_chat_template(conversation, add_generation_prompt=True) for p in (processor, loaded)]
        assert prompts[0] == prompts[1]
        outputs = [p(text=prompts[0], images=synthetic_image()) for p in (processor, loaded)]
        for key in ("input_ids", "attention_mask", "pixel_values"):
            assert torch.equal(outputs[0][key], outputs[1][key])
        assert outputs[1]["pixel_values"].shape == (1, 3, 48, 64)
        for build in ("build_generation_inputs", "build_edit_inputs"):
            a, b = (getattr(p, build)("make it sunset", "low quality") for p in (processor, loaded))
            assert torch.equal(a["input_ids"], b["input_ids"])
            assert torch.equal(a["attention_mask"], b["attention_mask"])
