"""The pipelines on the official tiny checkpoints reproduce the official samplers (../shared/parity, README tolerances):
every intermediate sample, the final sample, and the uint8 image; with and without prompt caching."""

import pytest
import torch
from conftest import VARIANTS, require_parity
from safetensors.torch import load_file

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaImageProcessor, TunaPipeline, TunaProcessor

SAMPLE_TOL = 5e-4  # parity README: sampling trajectories
PROMPT, NEGATIVE = "a red cube on a blue table", "low quality"
INSTRUCTION, EDIT_NEGATIVE = "make it sunset", "blurry, low quality"
STEPS, GUIDANCE = 4, 3.0


def references(variant):
    folder = require_parity() / variant
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


@pytest.fixture(scope="module")
def parity_processor():
    from transformers import AutoTokenizer

    from tuna_hf import add_tuna_tokens

    tokenizer = add_tuna_tokens(AutoTokenizer.from_pretrained(require_parity() / "tokenizer"))
    return TunaProcessor(TunaImageProcessor(size={"height": 48, "width": 64}), tokenizer)


def make_pipeline(cls, model, processor, variant, solver="euler"):
    """The harness ran every variant with Euler, plus Heun for Tuna-R (`t2i_heun`)."""
    scheduler = TunaFlowMatchScheduler.from_official_defaults(variant, solver=solver)
    return cls(transformer=model, processor=processor, scheduler=scheduler)


class TrajectoryRecorder:
    """`callback_on_step_end` that keeps the sample after every model call."""

    def __init__(self):
        self.samples = []

    def __call__(self, pipe, i, t, tensors):
        self.samples.append(tensors["latents"].clone())
        return {}


def assert_trajectory(recorder, outputs, prefix):
    """After call k the sample is what the official sampler fed to call k + 1 (row 0 of its CFG batch)."""
    num_calls = len([key for key in outputs if key.startswith(f"{prefix}.call") and key.endswith(".z_in")])
    assert len(recorder.samples) == num_calls
    for k, sample in enumerate(recorder.samples[:-1]):
        expected = outputs[f"{prefix}.call{k + 1}.z_in"][:1]
        torch.testing.assert_close(sample, expected, atol=SAMPLE_TOL, rtol=SAMPLE_TOL)


def assert_image(image, expected_uint8):
    """`image` is the pipeline's `"np"` output, float in [0, 1]."""
    difference = (torch.as_tensor(image * 255).round().int() - expected_uint8.int()).abs().max()
    assert difference <= 1, f"uint8 images differ by up to {difference}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("use_prompt_cache", [True, False])
def test_text_to_image_sampling(parity_models, parity_processor, variant, use_prompt_cache):
    inputs, outputs = references(variant)
    pipe = make_pipeline(TunaPipeline, parity_models(variant), parity_processor, variant)
    recorder = TrajectoryRecorder()
    sample = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=inputs["t2i.initial_z"][:1],
        output_type="latent",
        use_prompt_cache=use_prompt_cache,
        callback_on_step_end=recorder,
    ).images
    assert_trajectory(recorder, outputs, "t2i")
    torch.testing.assert_close(sample, outputs["t2i.final_sample"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_text_to_image_from_seed(parity_models, parity_processor, variant):
    """The official run seeds the global RNG with 42 and draws the initial noise first: a generator does the same."""
    _, outputs = references(variant)
    pipe = make_pipeline(TunaPipeline, parity_models(variant), parity_processor, variant)
    image = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(42),
        output_type="np",
    ).images
    assert_image(image, outputs["t2i.image_uint8"])


def test_tuna_decodes_with_its_vae(parity_models, parity_processor):
    from tuna_hf.wan_vae import decode_wan_latents

    _, outputs = references("tuna")
    decoded = decode_wan_latents(parity_models("tuna").model.vae, outputs["t2i.final_sample"])
    torch.testing.assert_close(decoded, outputs["t2i.vae_decoded"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL)


def test_tuna_r_heun_sampling(parity_models, parity_processor):
    """Tuna-R's official default solver: 2N − 1 calls, the last interval Euler."""
    inputs, outputs = references("tuna_r")
    pipe = make_pipeline(TunaPipeline, parity_models("tuna_r"), parity_processor, "tuna_r", solver="heun")
    recorder = TrajectoryRecorder()
    image = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=inputs["t2i_heun.initial_z"][:1],
        output_type="np",
        callback_on_step_end=recorder,
    ).images
    assert_trajectory(recorder, outputs, "t2i_heun")
    torch.testing.assert_close(
        recorder.samples[-1], outputs["t2i_heun.final_sample"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL
    )
    assert_image(image, outputs["t2i_heun.image_uint8"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("use_prompt_cache", [True, False])
def test_editing_sampling(parity_models, parity_processor, variant, use_prompt_cache):
    """The source enters at t = 1 in both rows; Tuna's source is the official VAE posterior sample, given as latents."""
    inputs, outputs = references(variant)
    pipe = make_pipeline(TunaEditPipeline, parity_models(variant), parity_processor, variant)
    recorder = TrajectoryRecorder()
    image = pipe(
        prompt=INSTRUCTION,
        negative_prompt=EDIT_NEGATIVE,
        image_latents=inputs["edit.image_edit_original"][:1],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=inputs["edit.initial_z"][:1],
        output_type="np",
        use_prompt_cache=use_prompt_cache,
        callback_on_step_end=recorder,
    ).images
    assert_trajectory(recorder, outputs, "edit")
    torch.testing.assert_close(recorder.samples[-1], outputs["edit.final_sample"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL)
    assert_image(image, outputs["edit.image_uint8"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_processor_rows_match_official_tokens(parity_processor, variant):
    """Our rows (official right padding) equal the official token sequences up to their fixed-length padding."""
    inputs, _ = references(variant)
    rows = parity_processor.build_generation_inputs([PROMPT], [NEGATIVE], height=48, width=64)["input_ids"]
    official = inputs["t2i.text_tokens"][:, : rows.shape[1]]
    assert torch.equal(rows[rows != parity_processor.pad_token_id], official[rows != parity_processor.pad_token_id])
    edit_rows = parity_processor.build_edit_inputs([INSTRUCTION], [EDIT_NEGATIVE], height=48, width=64)["input_ids"]
    official = inputs["edit.text_tokens"][:, : edit_rows.shape[1]]
    keep = edit_rows != parity_processor.pad_token_id
    assert torch.equal(edit_rows[keep], official[keep])
