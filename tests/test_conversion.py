"""The conversion CLI turns each official tiny checkpoint into a pipeline repository that reproduces the official
outputs through the public loaders (`TunaPipeline`, `AutoModelForImageTextToText`, `AutoProcessor`)."""

import json

import pytest
import torch
from conftest import VARIANTS, official_vae_kwargs, require_parity
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tuna_hf import TunaEditPipeline, TunaPipeline, TunaProcessor
from tuna_hf.convert_official import load_official_checkpoint, main, tuna_config_from_official
from tuna_hf.official_presets import OFFICIAL_PRESETS
from tuna_hf.pipelines import OFFICIAL_GUIDANCE_DEFAULTS

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
    settings = json.loads((repository / "model_index.json").read_text())
    assert settings["guidance_scale"] == OFFICIAL_GUIDANCE_DEFAULTS[variant]["guidance_scale"]
    card = (repository / "README.md").read_text()
    assert f"variant: {variant}" in card and "{" not in card.split("```")[0]
    assert f"These are the official {variant} predict defaults." in card
    assert json.loads((repository / "transformer" / "config.json").read_text())["filled_layers"] is None


@pytest.mark.parametrize(("preset", "noise"), [("tuna-2b", 0.0), ("tuna-r-7b", 0.1), ("tuna-2-7b", 0.1)])
def test_presets_carry_the_official_understanding_noise(preset, noise):
    spec = OFFICIAL_PRESETS[preset]
    token_ids = {"img_pad_id": 1, "boi_id": 2, "eoi_id": 3}
    config = tuna_config_from_official(
        spec["official_class"], spec["model_kwargs"], spec["llm_config"], token_ids, spec["siglip_config"]
    )
    assert (config.understanding_noise_prob, config.understanding_noise_level) == (noise, 0.1)


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


class TestFoundationAndStrictness:
    """Edited copies of the Tuna-2 tiny checkpoint: removed layers, extra keys, wrong sizes."""

    @pytest.fixture
    def arguments(self, tmp_path):
        return conversion_arguments("tuna_2", tmp_path, tmp_path / "repo")

    @staticmethod
    def replace_checkpoint(arguments, tmp_path, edit):
        state_dict = dict(torch.load(arguments[1], weights_only=True))
        edit(state_dict)
        torch.save(state_dict, tmp_path / "edited.pt")
        return ["--checkpoint", str(tmp_path / "edited.pt"), *arguments[2:]]

    def test_foundation_checkpoint_is_filled_and_recorded(self, tmp_path, arguments, capsys):
        from safetensors.torch import save_file

        original = torch.load(arguments[1], weights_only=True)
        layer_1 = {k: v for k, v in original.items() if k.startswith("tuna.model.layers.1.")}
        save_file(
            {k.replace("tuna.model.", "model.", 1): v.contiguous() for k, v in layer_1.items()},
            tmp_path / "model.safetensors",
        )

        def remove_layers(state_dict):
            for key in [k for k in state_dict if k.startswith(("tuna.model.layers.1.", "diffusion_head_a.1."))]:
                del state_dict[key]

        edited = self.replace_checkpoint(arguments, tmp_path, remove_layers)
        with pytest.raises(ValueError, match=r"lacks decoder layers \[1\].*--base-llm"):
            main(edited)
        main([*edited, "--base-llm", str(tmp_path)])
        assert "flow head   | [1]" in capsys.readouterr().out
        model = AutoModelForImageTextToText.from_pretrained(tmp_path / "repo", subfolder="transformer")
        assert model.config.filled_layers == ["model.language_model.layers.1", "flow_head.layers.1"]
        for key, value in layer_1.items():
            ours = model.state_dict()[key.replace("tuna.model.", "model.language_model.", 1)]
            assert torch.equal(ours, value)
        block = model.flow_head.layers[1]
        assert not block.modulation.weight.any() and torch.equal(block.input_layernorm.weight, torch.ones(128))
        assert "foundation checkpoint" in (tmp_path / "repo" / "README.md").read_text()

    def test_unexpected_keys_are_errors_unless_allowed(self, tmp_path, arguments, capsys):
        edited = self.replace_checkpoint(arguments, tmp_path, lambda sd: sd.update({"ema.shadow": torch.zeros(1)}))
        with pytest.raises(ValueError, match=r"unexpected keys \(1\): \['ema.shadow'\]"):
            main(edited)
        main([*edited, "--allow-unexpected"])
        assert "Ignored 1 unexpected keys" in capsys.readouterr().out

    def test_shape_mismatch_against_a_preset(self, tmp_path, arguments):
        """The tiny checkpoint is not a 7B one: every mismatching tensor is listed; nothing is written."""
        index = arguments.index("--official-config")
        preset = [*arguments[:index], "--preset", "tuna-2-7b", *arguments[index + 2 :]]
        with pytest.raises(ValueError, match="shape mismatches"):
            main(preset)
        assert not (tmp_path / "repo").exists() and not any(p.name.startswith(".repo") for p in tmp_path.iterdir())

    def test_existing_output_and_vocabulary(self, tmp_path, arguments):
        (tmp_path / "repo").mkdir()
        with pytest.raises(FileExistsError, match="already exists"):
            main(arguments)
        (tmp_path / "repo").rmdir()
        edited = self.replace_checkpoint(
            arguments, tmp_path, lambda sd: sd.update({"tuna.model.embed_tokens.weight": torch.zeros(600, 128)})
        )
        with pytest.raises(ValueError, match="vocabulary has 600 rows but `--tokenizer`.*538"):
            main(edited)

    def test_push_to_hub_uploads_the_folder(self, tmp_path, arguments, monkeypatch):
        import huggingface_hub

        calls = []
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id))
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
        main([*arguments, "--push-to-hub", "someone/tuna-2-tiny"])
        assert calls[0] == "someone/tuna-2-tiny"
        assert calls[1]["folder_path"] == str(tmp_path / "repo") and calls[1]["repo_id"] == "someone/tuna-2-tiny"
        assert "someone/tuna-2-tiny" in (tmp_path / "repo" / "README.md").read_text()
