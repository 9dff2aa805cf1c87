"""The conversion CLI turns each official tiny checkpoint into a pipeline repository that reproduces the official
outputs through the public loaders (`TunaPipeline`, `AutoModelForImageTextToText`, `AutoProcessor`)."""

import json

import pytest
import torch
from conftest import VARIANTS, official_vae_kwargs, require_parity
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tuna_hf import TunaEditPipeline, TunaPipeline, TunaProcessor
from tuna_hf.convert_official import load_official_checkpoint, main
from tuna_hf.scheduling_tuna import OFFICIAL_SAMPLING_DEFAULTS

ATOL = RTOL = 1e-4
SAMPLE_TOL = 5e-4


def conversion_arguments(variant, work_dir, output):
    """The CLI flags for a parity folder: its official config, Qwen2/SigLIP configs, VAE, the tiny tokenizer."""
    folder = require_parity() / variant
    official = json.loads((folder / "config.json").read_text())
    official_config = work_dir / f"{variant}_model.json"
    official_config.write_text(json.dumps({"_target_": official["official_class"], **official["wrapper_kwargs"]}))
    arguments = ["--checkpoint", str(folder / "model.pt"), "--official-config", str(official_config)]
    arguments += ["--llm-config", str(folder / "qwen2_config.json"), "--tokenizer", str(folder.parent / "tokenizer")]
    arguments += ["--output", str(output), "--dtype", "fp32"]
    if (folder / "siglip_vision_config.json").exists():
        arguments += ["--siglip-config", str(folder / "siglip_vision_config.json")]
    if (folder / "vae.pt").exists():
        vae_config = work_dir / f"{variant}_vae.json"
        vae_config.write_text(json.dumps(official_vae_kwargs(folder)))
        arguments += ["--vae", str(folder / "vae.pt"), "--vae-config", str(vae_config)]
    return arguments


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One converted repository per variant, built lazily with the CLI."""
    repositories = {}

    def convert(variant):
        if variant not in repositories:
            work_dir = tmp_path_factory.mktemp(variant)
            main(conversion_arguments(variant, work_dir, work_dir / "repo"))
            repositories[variant] = work_dir / "repo"
        return repositories[variant]

    return convert


def references(variant):
    folder = require_parity() / variant
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


@pytest.mark.parametrize("variant", VARIANTS)
def test_repository_layout(converted, variant):
    repository = converted(variant)
    names = {path.name for path in repository.iterdir()}
    assert {"model_index.json", "transformer", "processor", "scheduler", "README.md"} <= names
    assert not any(path.name.startswith(".") for path in repository.parent.iterdir())  # no staging folder left
    scheduler = json.loads((repository / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["guidance_scale"] == OFFICIAL_SAMPLING_DEFAULTS[variant]["guidance_scale"]
    card = (repository / "README.md").read_text()
    assert f"variant: {variant}" in card and "{" not in card.split("```")[0]
    assert json.loads((repository / "transformer" / "config.json").read_text())["filled_layers"] is None


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_understanding_through_auto_classes(converted, variant):
    inputs, outputs = references(variant)
    repository = converted(variant)
    model = AutoModelForImageTextToText.from_pretrained(repository, subfolder="transformer", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(repository, subfolder="processor")
    assert isinstance(processor, TunaProcessor)
    prompt = inputs["und.text_tokens"]
    result = model(input_ids=prompt, image_latents=inputs["und.image_latents"])
    torch.testing.assert_close(result.logits, outputs["und.logits"], atol=ATOL, rtol=RTOL)
    generated = model.generate(input_ids=prompt, image_latents=inputs["und.image_latents"], max_new_tokens=8)
    assert generated[0, prompt.shape[1] :].tolist() == outputs["und.generated_ids"].tolist()
    flow = model(
        input_ids=inputs["flow.text_tokens_cond"],
        image_latents=inputs["flow.t1.x_t"],
        timesteps=inputs["flow.t_values"][1:],
    )
    torch.testing.assert_close(flow.flow_prediction, outputs["flow.t1.pred_cond"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sampling_through_the_pipelines(converted, variant):
    """T2I and editing with the official settings of the parity run (4 steps, guidance 3, Euler)."""
    inputs, outputs = references(variant)
    pipe = TunaPipeline.from_pretrained(converted(variant), dtype=torch.float32)
    pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, solver="euler")
    common = {"height": 48, "width": 64, "num_inference_steps": 4, "guidance_scale": 3.0, "output_type": "latent"}
    sample = pipe(
        "a red cube on a blue table", negative_prompt="low quality", latents=inputs["t2i.initial_z"][:1], **common
    )
    torch.testing.assert_close(sample.images, outputs["t2i.final_sample"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL)
    edit = TunaEditPipeline.from_pipe(pipe)
    edited = edit(
        image_latents=inputs["edit.image_edit_original"][:1],
        prompt="make it sunset",
        negative_prompt="blurry, low quality",
        latents=inputs["edit.initial_z"][:1],
        **common,
    )
    torch.testing.assert_close(edited.images, outputs["edit.final_sample"], atol=SAMPLE_TOL, rtol=SAMPLE_TOL)


def test_wrapped_checkpoint(tmp_path):
    state_dict = {"tuna.model.embed_tokens.weight": torch.zeros(2, 2)}
    torch.save({"model": state_dict, "step": 3}, tmp_path / "wrapped.pt")
    assert list(load_official_checkpoint(tmp_path / "wrapped.pt")) == ["tuna.model.embed_tokens.weight"]
    torch.save({"step": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        load_official_checkpoint(tmp_path / "bad.pt")
