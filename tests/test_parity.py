"""Our model on the official tiny checkpoints reproduces the official outputs (../shared/parity, README tolerances)."""

import pytest
import torch
from conftest import VARIANTS, require_parity
from safetensors.torch import load_file

ATOL = RTOL = 1e-4


def references(variant):
    folder = require_parity() / variant
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_understanding_logits(parity_models, variant):
    inputs, outputs = references(variant)
    model = parity_models(variant)
    result = model(input_ids=inputs["und.text_tokens"], image_latents=inputs["und.image_latents"])
    torch.testing.assert_close(result.logits, outputs["und.logits"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_understanding_greedy_generation(parity_models, variant):
    inputs, outputs = references(variant)
    prompt = inputs["und.text_tokens"]
    generated = parity_models(variant).generate(
        input_ids=prompt, image_latents=inputs["und.image_latents"], max_new_tokens=8, do_sample=False
    )
    assert generated[0, prompt.shape[1] :].tolist() == outputs["und.generated_ids"].tolist()


@torch.no_grad()
def test_tuna_understanding_from_raw_pixels(parity_models):
    """Tuna's own VAE encodes the raw image: the official posterior sample is the first draw after seed 11."""
    inputs, outputs = references("tuna")
    torch.manual_seed(11)
    result = parity_models("tuna")(input_ids=inputs["und.text_tokens"], pixel_values=inputs["und.pixel_values"])
    torch.testing.assert_close(result.logits, outputs["und.logits"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("step", [0, 1])
@pytest.mark.parametrize("row", ["cond", "uncond"])
@torch.no_grad()
def test_flow_prediction(parity_models, variant, step, row):
    inputs, outputs = references(variant)
    result = parity_models(variant)(
        input_ids=inputs[f"flow.text_tokens_{row}"],
        image_latents=inputs[f"flow.t{step}.x_t"],
        timesteps=inputs["flow.t_values"][step : step + 1],
    )
    torch.testing.assert_close(result.flow_prediction, outputs[f"flow.t{step}.pred_{row}"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(result.logits, outputs[f"flow.t{step}.logits_{row}"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_flow_prediction_batched_rows(parity_models, variant):
    """Conditional and unconditional rows (different spans) in one forward, as the official CFG batch."""
    inputs, outputs = references(variant)
    x_t = inputs["flow.t0.x_t"]
    result = parity_models(variant)(
        input_ids=torch.cat([inputs["flow.text_tokens_cond"], inputs["flow.text_tokens_uncond"]]),
        image_latents=torch.cat([x_t, x_t]),
        timesteps=inputs["flow.t_values"][:1].repeat(2),
    )
    expected = torch.cat([outputs["flow.t0.pred_cond_batched"], outputs["flow.t0.pred_uncond_batched"]])
    torch.testing.assert_close(result.flow_prediction, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_edit_call_with_two_images_per_row(parity_models, variant):
    """The official editing call: rows [source, x_t] at times [1, t]; the target prediction is image 1 of each row."""
    inputs, outputs = references(variant)
    source, x_t = inputs["edit.image_edit_original"], outputs["edit.call0.z_in"]
    images = torch.stack([source[0], x_t[0], source[1], x_t[1]])
    t = outputs["edit.call0.t"]
    result = parity_models(variant)(
        input_ids=inputs["edit.text_tokens"],
        image_latents=images,
        timesteps=torch.stack([torch.tensor(1.0), t[0], torch.tensor(1.0), t[1]]),
        logits_to_keep=1,
    )
    cond, uncond = result.flow_prediction[1], result.flow_prediction[3]
    guided = uncond + 3.0 * (cond - uncond)
    torch.testing.assert_close(guided, outputs["edit.call0.pred_cfg"][0], atol=ATOL, rtol=RTOL)
