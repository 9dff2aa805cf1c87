"""Tiny random TUNA models of all three variants: shapes, omni mask, generation with cache, save/load, errors."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from tuna_hf import TunaConfig, TunaForUnifiedMultimodal, TunaModel
from tuna_hf.modeling_tuna import TunaImageSpans, omni_attention_mask
from tuna_hf.testing import tiny_tuna_config, tiny_tuna_model, tiny_tuna_processor

ENCODERS = ("vae_siglip", "siglip", "patch")


def question_inputs(processor, height=32, width=48, question="What is this?"):
    image = torch.rand(3, height, width)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[image], height=height, width=width, return_tensors="pt")


@pytest.fixture(scope="module")
def processor(byte_tokenizer):
    return tiny_tuna_processor(byte_tokenizer)


@pytest.mark.parametrize("visual_encoder", ENCODERS)
@torch.no_grad()
def test_forward_shapes(byte_tokenizer, processor, visual_encoder):
    model = tiny_tuna_model(visual_encoder, byte_tokenizer)
    inputs = processor.build_generation_inputs(["a red circle"], ["low quality"], height=32, width=48)
    latents = torch.randn(
        2, model.config.latent_channels, 1, *(32 // 16, 48 // 16) if visual_encoder == "vae_siglip" else (32, 48)
    )
    output = model(**inputs, image_latents=latents, timesteps=torch.tensor([0.3, 0.3]))
    assert output.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert output.flow_prediction.shape == latents.shape
    assert torch.isfinite(output.flow_prediction).all()


@torch.no_grad()
def test_omni_attention_mask(byte_tokenizer, processor):
    """Causal everywhere, bidirectional inside each span (timestep slot included), boi/eoi outside the span."""
    model = tiny_tuna_model("patch", byte_tokenizer)
    inputs = processor.build_generation_inputs(["a cat"], height=32, width=32)
    ids = inputs["input_ids"][0]
    span = (ids == model.config.image_token_id).nonzero().flatten()
    first, last = span[0].item(), span[-1].item()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    positions = torch.arange(len(ids))[None]
    spans = model.model.image_spans(inputs["input_ids"])
    mask = omni_attention_mask(model.config.text_config, embeds, inputs["attention_mask"], None, positions, spans)
    allowed = mask[0, 0]
    assert allowed.dtype == torch.bool
    assert allowed[first, last] and allowed[last, first]  # bidirectional inside the span
    assert not allowed[first - 1, first]  # <|vision_start|> does not see the span
    assert allowed[last + 1, first] and not allowed[last + 1, last + 2]  # after the span: causal
    text = ~torch.isin(torch.arange(len(ids)), span)
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    assert torch.equal(allowed[text][:, text], causal[text][:, text])


@pytest.mark.parametrize("visual_encoder", ENCODERS)
@torch.no_grad()
def test_generate_with_cache_equals_without(byte_tokenizer, processor, visual_encoder):
    model = tiny_tuna_model(visual_encoder, byte_tokenizer, sample_vae_posterior=False)
    inputs = question_inputs(processor)
    # A random model may emit span tokens, which a full (uncached) forward then reads as an image without pixels.
    span_tokens = [model.config.boi_token_id, model.config.image_token_id, model.config.eoi_token_id]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "suppress_tokens": span_tokens}
    cached = model.generate(**inputs, **kwargs, use_cache=True)
    uncached = model.generate(**inputs, **kwargs, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 6


@torch.no_grad()
def test_tuna_video_frames_in_the_batch(byte_tokenizer, processor):
    """Tuna folds the latent frames into the SigLIP batch; 5 frames → 2 latent frames of tokens."""
    model = tiny_tuna_model("vae_siglip", byte_tokenizer, sample_vae_posterior=False)
    tokens = processor.num_image_tokens(32, 32, num_frames=5)
    assert tokens == 1 + 2 * 2 * 2
    ids = torch.tensor(
        [[1, model.config.boi_token_id] + [model.config.image_token_id] * tokens + [model.config.eoi_token_id, 2]]
    )
    output = model(input_ids=ids, pixel_values=torch.rand(1, 3, 5, 32, 32) * 2 - 1, timesteps=torch.tensor([1.0]))
    assert output.flow_prediction.shape == (1, 48, 2, 2, 2)


@pytest.mark.parametrize("visual_encoder", ENCODERS)
def test_save_load_is_bit_exact(tmp_path, byte_tokenizer, processor, visual_encoder):
    model = tiny_tuna_model(visual_encoder, byte_tokenizer)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded) is TunaForUnifiedMultimodal
    reference = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, value in [*loaded.named_parameters(), *loaded.named_buffers()]:
        assert torch.equal(value, reference[key]), key
    assert "auto_map" not in (tmp_path / "config.json").read_text()


def test_bfloat16_loading_keeps_the_vae_in_float32(tmp_path, byte_tokenizer, processor):
    tiny_tuna_model("vae_siglip", byte_tokenizer).save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.model.vae.parameters()} == {torch.float32}
    generated = model.generate(**question_inputs(processor), max_new_tokens=2, do_sample=False)
    assert generated.shape[0] == 1


def test_auto_classes_in_a_fresh_process(tmp_path, byte_tokenizer, processor):
    tiny_tuna_model("patch", byte_tokenizer).save_pretrained(tmp_path / "transformer")
    processor.save_pretrained(tmp_path / "processor")
    script = f"""
import tuna_hf, torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
root = {str(tmp_path)!r}
assert type(AutoConfig.from_pretrained(root, subfolder="transformer")).__name__ == "TunaConfig"
assert type(AutoModel.from_pretrained(root, subfolder="transformer")).__name__ == "TunaForUnifiedMultimodal"
generator = AutoModelForImageTextToText.from_pretrained(root, subfolder="transformer")
assert type(generator).__name__ == "TunaForUnifiedMultimodal"
assert type(AutoProcessor.from_pretrained(root, subfolder="processor")).__name__ == "TunaProcessor"
"""
    subprocess.run([sys.executable, "-c", script], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


def test_auto_model_answers_and_the_base_model_has_its_name(tmp_path, byte_tokenizer):
    tiny_tuna_model("siglip", byte_tokenizer).save_pretrained(tmp_path)
    from transformers import AutoModel

    assert isinstance(AutoModel.from_pretrained(tmp_path), TunaForUnifiedMultimodal)
    assert isinstance(TunaModel.from_pretrained(tmp_path), TunaModel)


def test_image_text_to_text_pipeline(tmp_path, byte_tokenizer, processor):
    tiny_tuna_model("patch", byte_tokenizer).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vqa = pipeline("image-text-to-text", model=str(tmp_path), processor=AutoProcessor.from_pretrained(tmp_path))
    from PIL import Image

    image = Image.new("RGB", (64, 64), (220, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Color?"}]}]
    result = vqa(text=messages, max_new_tokens=3)
    assert isinstance(result[0]["generated_text"], (str, list))


def test_gradient_checkpointing_backward(byte_tokenizer, processor):
    model = tiny_tuna_model("siglip", byte_tokenizer).train()
    model.activation_checkpointing_enable()
    inputs = question_inputs(processor)
    output = model(**inputs, labels=inputs["input_ids"], timesteps=torch.tensor([0.5]))
    (output.loss + output.flow_prediction.square().mean()).backward()
    assert model.flow_head.layers[0].modulation.weight.grad is not None
    assert model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.grad is not None


def test_tied_embeddings(byte_tokenizer):
    config = tiny_tuna_config("patch", byte_tokenizer)
    config.text_config.tie_word_embeddings = True
    config.tie_word_embeddings = True
    model = TunaForUnifiedMultimodal(config)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


class TestErrors:
    @pytest.fixture(scope="class")
    def model(self, byte_tokenizer):
        return tiny_tuna_model("patch", byte_tokenizer)

    def test_unknown_variant(self, byte_tokenizer):
        with pytest.raises(ValueError, match=r"visual_encoder.*'clip'"):
            TunaConfig(visual_encoder="clip")

    def test_image_size_not_a_multiple(self, model, processor):
        inputs = question_inputs(processor)
        with pytest.raises(ValueError, match=r"pixel_values.*multiples of 16"):
            model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 30, 48))

    def test_span_does_not_fit_the_image(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(ValueError, match="timestep slot"):
            model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 64, 64))

    def test_missing_vision_inputs(self, model, processor):
        with pytest.raises(ValueError, match="neither `pixel_values` nor `image_latents`"):
            model(input_ids=question_inputs(processor)["input_ids"])

    def test_more_images_than_spans(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(ValueError, match=r"1 image span.*2 image"):
            model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(2, 3, 32, 48))

    def test_sequence_longer_than_context(self, model):
        with pytest.raises(ValueError, match="exceeds the context of 8192"):
            model(input_ids=torch.zeros(1, 8193, dtype=torch.long))

    def test_integer_pixels(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(TypeError, match=r"pixel_values.*floating"):
            model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 32, 48, dtype=torch.uint8))

    def test_device_mismatch(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(ValueError, match="pixel_values` is on meta"):
            model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 32, 48, device="meta"))

    def test_wrong_latent_channels(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(ValueError, match=r"image_latents` must be \[num_images, 3"):
            model(input_ids=inputs["input_ids"], image_latents=torch.zeros(1, 48, 1, 32, 48))

    def test_timesteps_count(self, model, processor):
        inputs = question_inputs(processor, height=32, width=48)
        with pytest.raises(ValueError, match="one value per image"):
            model(input_ids=inputs["input_ids"], image_latents=torch.zeros(1, 3, 1, 32, 48), timesteps=torch.ones(3))

    def test_video_frame_count_for_the_vae(self, byte_tokenizer, processor):
        model = tiny_tuna_model("vae_siglip", byte_tokenizer)
        with pytest.raises(ValueError, match="1 \\+ 4·k frames"):
            model(input_ids=torch.zeros(1, 4, dtype=torch.long), pixel_values=torch.zeros(1, 3, 3, 32, 32))


def test_a_cast_keeps_the_image_rope_frequencies_in_float32(byte_tokenizer):
    """`.to(torch.bfloat16)` casts the model but not the 3-D RoPE's frequencies, which the official code computes in
    float32 at every call; the rotations come out as the float32 ones, rounded once."""
    model = tiny_tuna_model("patch", byte_tokenizer)
    rope = model.flow_head.rotary_emb
    frequencies = rope.image_inv_freq.clone()
    spans = TunaImageSpans.from_input_ids(torch.tensor([[0] + [7] * 17]), image_token_id=7)
    hidden = torch.zeros(1, 18, 64)
    expected = rope(hidden, torch.arange(18)[None], spans, (1, 4, 4)).image
    model.to(torch.bfloat16)
    assert rope.image_inv_freq.dtype == torch.float32 and torch.equal(rope.image_inv_freq, frequencies)
    cast = rope(hidden.bfloat16(), torch.arange(18)[None], spans, (1, 4, 4)).image
    assert all(torch.equal(a, b.bfloat16()) for a, b in zip(cast, expected, strict=True))
