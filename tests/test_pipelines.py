"""TunaPipeline / TunaEditPipeline on tiny random models: diffusers behaviour, caching, layout, loading, LoRA,
errors."""

import inspect
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import AutoModelForImageTextToText, AutoProcessor

import tuna_hf.pipelines.base
from tuna_hf import (
    TunaEditPipeline,
    TunaFlowMatchScheduler,
    TunaForUnifiedMultimodal,
    TunaPipeline,
    TunaPipelineOutput,
    TunaProcessor,
    TunaVideoPipelineOutput,
)
from tuna_hf.pipelines import OFFICIAL_EDIT_NEGATIVE_PROMPT, OFFICIAL_GUIDANCE_DEFAULTS
from tuna_hf.scheduling_tuna import LEGACY_GUIDANCE_KEYS, OFFICIAL_SAMPLING_DEFAULTS
from tuna_hf.testing import add_random_lora, tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
ENCODERS = ("vae_siglip", "siglip", "patch")
SIZE = 32
STEPS = 3


def tiny_pipeline(visual_encoder, tokenizer, cls=TunaPipeline):
    model = tiny_tuna_model(visual_encoder, tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant)
    return cls(transformer=model, processor=tiny_tuna_processor(tokenizer, SIZE, SIZE), scheduler=scheduler)


@pytest.fixture(scope="module")
def pipelines(byte_tokenizer):
    return {encoder: tiny_pipeline(encoder, byte_tokenizer) for encoder in ENCODERS}


def generate(pipe, *args, seed=0, **kwargs):
    """`pipe(*args, **kwargs).images` with few steps and a seeded generator; the prompt defaults to "a red circle"."""
    kwargs = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(seed), **kwargs}
    if not args and "prompt" not in kwargs:
        kwargs["prompt"] = "a red circle"
    return pipe(*args, **kwargs).images


@pytest.mark.parametrize("visual_encoder", ENCODERS)
def test_prompt_cache_gives_the_same_images(pipelines, visual_encoder):
    """Different prompt lengths in one batch (left padding), CFG rows batched: cached and uncached samples agree."""
    pipe = pipelines[visual_encoder]
    prompts = ["a red circle", "a much longer prompt about a green triangle at the bottom"]
    kwargs = {"negative_prompt": ["low quality", ""], "output_type": "latent"}
    cached = generate(pipe, prompts, use_prompt_cache=True, **kwargs)
    uncached = generate(pipe, prompts, use_prompt_cache=False, **kwargs)
    assert cached.abs().max() > 0.1
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("visual_encoder", ENCODERS)
def test_edit_prompt_cache_gives_the_same_images(byte_tokenizer, pipelines, visual_encoder):
    edit = TunaEditPipeline.from_pipe(pipelines[visual_encoder])
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    kwargs = {"image": image, "prompt": ["make it blue", "turn it into a large square"], "output_type": "latent"}
    cached = generate(edit, use_prompt_cache=True, **kwargs)
    uncached = generate(edit, use_prompt_cache=False, **kwargs)
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)


def test_batched_prompts_equal_single_prompts(pipelines):
    pipe = pipelines["patch"]
    prompts = ["a red circle", "a blue square at the top left of the picture"]
    latents = 2 * torch.randn(2, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    batched = pipe(prompts, num_inference_steps=STEPS, latents=latents, output_type="latent").images
    for i, prompt in enumerate(prompts):
        single = pipe(prompt, num_inference_steps=STEPS, latents=latents[i : i + 1], output_type="latent").images
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-4, rtol=1e-4)


def test_seed_reproducibility_and_images_per_prompt(pipelines):
    pipe = pipelines["siglip"]
    first = generate(pipe, ["a", "b"], num_images_per_prompt=2, output_type="np")
    again = generate(pipe, ["a", "b"], num_images_per_prompt=2, output_type="np")
    assert first.shape == (4, SIZE, SIZE, 3) and first.dtype == np.float32 and 0 <= first.min() <= first.max() <= 1
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


@pytest.mark.parametrize("visual_encoder", ENCODERS)
def test_output_types(pipelines, visual_encoder):
    pipe = pipelines[visual_encoder]
    config = pipe.transformer.config
    images = generate(pipe)
    assert isinstance(images[0], PIL.Image.Image) and images[0].size == (SIZE, SIZE)
    assert generate(pipe, output_type="pt").shape == (1, 3, SIZE, SIZE)
    side = SIZE // pipe.vae_scale_factor
    assert generate(pipe, output_type="latent").shape == (1, config.latent_channels, 1, side, side)
    output = pipe("x", num_inference_steps=STEPS, return_dict=False)
    assert isinstance(output, tuple) and len(output[0]) == 1


def test_default_sampling_settings_are_the_official_ones(pipelines):
    """The scheduler holds the time grid (Tuna-R: Heun, 2N − 1 calls), the pipeline config the guidance (4)."""
    calls = []
    pipe = pipelines["siglip"]
    pipe("x", num_inference_steps=STEPS, callback_on_step_end=lambda p, i, t, kw: calls.append(p.guidance_scale) or {})
    assert calls == [4.0] * (2 * STEPS - 1)
    settings = {name: pipe.config[name] for name in OFFICIAL_GUIDANCE_DEFAULTS["tuna_r"]}
    assert settings == {"guidance_scale": 4.0, "edit_guidance_scale": 5.0, "video_guidance_scale": 6.0} | {
        "guidance_interval": (0.0, 1.0)
    }


def test_guidance_interval(byte_tokenizer):
    """Guidance at flow times `low < t < high` (official `cfg_interval`), the conditional prediction elsewhere."""
    pipe = tiny_pipeline("patch", byte_tokenizer)
    pipe = TunaPipeline.from_pipe(pipe, guidance_interval=(0.2, 0.6))
    scales = []

    def record(pipe, i, t, tensors):
        scales.append(pipe.guidance_scale_at(1 - float(t) / 1000, pipe.guidance_scale))
        return {}

    generate(pipe, num_inference_steps=4, guidance_scale=3.0, callback_on_step_end=record, output_type="latent")
    assert scales == [1.0, 3.0, 3.0, 1.0]  # t = 0, 0.25, 0.5, 0.75
    always = generate(pipe, num_inference_steps=4, guidance_scale=3.0, output_type="latent")
    official = generate(
        TunaPipeline.from_pipe(pipe, guidance_interval=(0, 1)), num_inference_steps=4, output_type="latent"
    )
    assert (always - official).abs().max() > 1e-4


def test_heun_order_means_model_calls_per_step(pipelines):
    """Tuna-R's Heun: 2N − 1 model calls, `order` 2, and the progress bar counts the N steps."""
    pipe = pipelines["siglip"]
    bars = []
    original = pipe.progress_bar

    def progress_bar(**kwargs):
        bar = original(**kwargs)
        bars.append(bar)
        return bar

    pipe.progress_bar = progress_bar
    try:
        generate(pipe, output_type="latent")
    finally:
        del pipe.progress_bar
    assert pipe.scheduler.order == 2 and pipe.num_timesteps == 2 * STEPS - 1
    assert bars[0].total == STEPS and bars[0].n == STEPS


def test_a_repository_with_the_guidance_in_its_scheduler_config_loads_the_same(tmp_path):
    """Repositories saved before the guidance settings moved to `model_index.json` (the embedded checkpoint among
    them) kept them in the scheduler config: they load with the same settings and give bit-identical images, and
    `save_pretrained` writes the current layout."""
    current = REPO / "checkpoints" / "shapes-tuna-2"
    legacy = tmp_path / "legacy"
    (legacy / "scheduler").mkdir(parents=True)
    for name in ("transformer", "processor"):
        (legacy / name).symlink_to(current / name)
    index = json.loads((current / "model_index.json").read_text())
    settings = {key: index.pop(key) for key in LEGACY_GUIDANCE_KEYS}
    (legacy / "model_index.json").write_text(json.dumps(index))
    scheduler_config = json.loads((current / "scheduler" / "scheduler_config.json").read_text())
    (legacy / "scheduler" / "scheduler_config.json").write_text(json.dumps({**scheduler_config, **settings}))

    pipes = [TunaPipeline.from_pretrained(folder, dtype=torch.float32) for folder in (current, legacy)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    assert [pipe.config.guidance_interval for pipe in pipes] == [(0.0, 0.925)] * 2
    assert dict(pipes[1].scheduler.config) == dict(pipes[0].scheduler.config)
    prompt = {"prompt": ["a red circle at the top left", "a blue square at the center"], "num_inference_steps": 4}
    images = [generate(pipe, **prompt, output_type="np") for pipe in pipes]
    assert np.array_equal(*images)
    source = {"image": PIL.Image.new("RGB", (64, 64), "white"), "prompt": "make it blue", "num_inference_steps": 4}
    edits = [generate(TunaEditPipeline.from_pipe(pipe), **source, output_type="np") for pipe in pipes]
    assert np.array_equal(*edits)

    pipes[1].save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "model_index.json").read_text())
    assert resaved["guidance_interval"] == [0.0, 0.925] and resaved["guidance_scale"] == 3.0
    resaved_scheduler = json.loads((tmp_path / "resaved" / "scheduler" / "scheduler_config.json").read_text())
    assert not set(LEGACY_GUIDANCE_KEYS) & set(resaved_scheduler)


def test_saved_settings_load_equal(tmp_path, pipelines):
    pipe = TunaPipeline.from_pipe(pipelines["patch"], guidance_interval=[0.1, 0.9], edit_guidance_scale=1.5)
    pipe.save_pretrained(tmp_path)
    loaded = TunaPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    public = {key: value for key, value in pipe.config.items() if not key.startswith("_")}
    assert {key: loaded.config[key] for key in public} == public
    assert loaded.config.guidance_interval == (0.1, 0.9)


def test_the_scheduler_must_predict_what_the_model_predicts(byte_tokenizer):
    model = tiny_tuna_model("patch", byte_tokenizer)
    with pytest.raises(ValueError, match=r"scheduler's `prediction_type` \('velocity'\) must be the model's \('x0'\)"):
        TunaPipeline(model, tiny_tuna_processor(byte_tokenizer), TunaFlowMatchScheduler.from_official_defaults("tuna"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"guidance_interval": (0.9, 0.1)}, "`guidance_interval` must satisfy 0 ≤ low < high ≤ 1"),
        ({"guidance_interval": 0.5}, "`guidance_interval` must be two flow times"),
        ({"edit_guidance_scale": float("nan")}, "`edit_guidance_scale` must be a finite number ≥ 0"),
    ],
)
def test_bad_pipeline_settings(pipelines, settings, message):
    with pytest.raises(ValueError, match=message):
        TunaPipeline.from_pipe(pipelines["patch"], **settings)


def test_an_encoded_prompt_serves_several_calls(pipelines):
    """`encode_prompt` works on its own; its rows and cache give the images `prompt=` gives, call after call."""
    pipe = pipelines["patch"]
    rows, cache = pipe.encode_prompt(
        ["a red circle", "a blue square"], negative_prompt="blurry", height=SIZE, width=SIZE
    )
    for seed in (0, 1):
        expected = generate(pipe, ["a red circle", "a blue square"], negative_prompt="blurry", seed=seed)
        encoded = generate(pipe, prompt=None, prompt_rows=rows, prompt_cache=cache, seed=seed)
        assert [np.asarray(image).tolist() for image in encoded] == [np.asarray(image).tolist() for image in expected]
    with pytest.raises(ValueError, match="encoded without unconditional rows"):
        unguided, _ = pipe.encode_prompt("x", do_classifier_free_guidance=False, use_prompt_cache=False)
        generate(pipe, prompt=None, prompt_rows=unguided, guidance_scale=3.0)


@pytest.mark.parametrize("edit", [False, True])
def test_guidance_below_one_extrapolates_as_the_official_sampler(pipelines, edit):
    """Official samplers guide for any g > 0: a one-step sample is affine in g, so g = 0.5 lies at −0.5 of the way
    from g = 1 to g = 2; 0 and 1 are the conditional prediction alone."""
    pipe = TunaEditPipeline.from_pipe(pipelines["patch"]) if edit else pipelines["patch"]
    source = {"image": PIL.Image.new("RGB", (SIZE, SIZE), "red")} if edit else {}
    samples = {
        g: generate(pipe, **source, num_inference_steps=1, guidance_scale=g, output_type="latent")
        for g in (0.0, 0.5, 1.0, 2.0)
    }
    torch.testing.assert_close(samples[0.0], samples[1.0])
    assert (samples[2.0] - samples[1.0]).abs().max() > 1e-4
    torch.testing.assert_close(samples[0.5] - samples[1.0], -0.5 * (samples[2.0] - samples[1.0]), atol=1e-6, rtol=0)


def test_an_unused_negative_prompt_is_reported(pipelines, caplog):
    with caplog.at_level("WARNING", logger="tuna_hf.pipelines.pipeline_tuna"):
        generate(pipelines["patch"], negative_prompt="blurry", guidance_scale=1.0, output_type="latent")
    assert "`negative_prompt` is not used: guidance_scale=1.0 does not guide" in caplog.text


def test_callback_can_change_latents_and_interrupt(pipelines):
    pipe = pipelines["patch"]
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(i)
        if i == 1:
            pipe._interrupt = True
        return {"latents": torch.zeros_like(tensors["latents"])}

    latents = pipe("x", num_inference_steps=4, callback_on_step_end=callback, output_type="latent").images
    assert seen == [0, 1] and pipe.num_timesteps == 4
    assert torch.equal(latents, torch.zeros_like(latents))


def test_text_to_video(pipelines):
    generator = torch.Generator().manual_seed(0)
    frames = pipelines["vae_siglip"](
        "x", num_frames=5, num_inference_steps=STEPS, generator=generator, output_type="np"
    )
    frames = frames.frames
    assert frames.shape == (1, 5, SIZE, SIZE, 3)
    output = pipelines["vae_siglip"]("x", num_frames=5, num_inference_steps=STEPS)
    assert isinstance(output, TunaVideoPipelineOutput) and len(output.frames[0]) == 5
    assert isinstance(output.frames[0][0], PIL.Image.Image)


def test_edit_defaults_to_the_source_size(pipelines):
    edit = TunaEditPipeline.from_pipe(pipelines["patch"])
    image = PIL.Image.new("RGB", (50, 40), (200, 30, 30))
    edited = edit(image, "make it blue", num_inference_steps=STEPS).images[0]
    assert edited.size == (48, 32)


def test_edit_image_latents_equal_image(pipelines):
    """For the pixel variants the flow-space source is the processed image itself."""
    edit = TunaEditPipeline.from_pipe(pipelines["siglip"])
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    pixels = edit.processor.image_processor(image, return_tensors="pt")["pixel_values"].unsqueeze(2)
    from_image = generate(edit, image=image, prompt="make it blue", output_type="latent")
    from_latents = generate(edit, image_latents=pixels, prompt="make it blue", output_type="latent")
    torch.testing.assert_close(from_image, from_latents)


def test_save_layout_and_generic_loading(tmp_path, pipelines):
    pipe = pipelines["vae_siglip"]
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "TunaPipeline"
    assert index["transformer"] == ["tuna_hf.modeling_tuna", "TunaForUnifiedMultimodal"]
    assert index["processor"] == ["tuna_hf.processing_tuna", "TunaProcessor"]
    assert index["scheduler"] == ["tuna_hf.scheduling_tuna", "TunaFlowMatchScheduler"]
    assert json.loads((tmp_path / "transformer" / "config.json").read_text())["model_type"] == "tuna"

    loaded = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(loaded, TunaPipeline)
    assert np.array_equal(generate(pipe, output_type="np"), generate(loaded, output_type="np"))
    assert isinstance(
        AutoModelForImageTextToText.from_pretrained(tmp_path, subfolder="transformer"), TunaForUnifiedMultimodal
    )
    assert isinstance(AutoProcessor.from_pretrained(tmp_path, subfolder="processor"), TunaProcessor)


def test_from_pipe_shares_modules_without_casting(tmp_path, pipelines):
    pipelines["vae_siglip"].save_pretrained(tmp_path)
    pipe = TunaPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    edit = TunaEditPipeline.from_pipe(pipe)
    assert edit.transformer is pipe.transformer and edit.scheduler is pipe.scheduler
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.model.vae.dtype == torch.float32
    image = generate(edit, image=PIL.Image.new("RGB", (SIZE, SIZE)), prompt="make it red", output_type="np")
    assert image.shape == (1, SIZE, SIZE, 3)


def test_edit_negative_prompt_is_a_repository_setting(tmp_path, byte_tokenizer, pipelines):
    """Without `negative_prompt`, editing uses the repository's `edit_negative_prompt` (official by default); it is
    saved in model_index.json, loaded back and carried over by `from_pipe`."""
    official = TunaEditPipeline.from_pipe(pipelines["patch"])
    assert official.config.edit_negative_prompt == OFFICIAL_EDIT_NEGATIVE_PROMPT
    source = {"image": PIL.Image.new("RGB", (SIZE, SIZE), (40, 70, 220)), "prompt": "make it red"}
    explicit = generate(official, **source, negative_prompt=OFFICIAL_EDIT_NEGATIVE_PROMPT, output_type="latent")
    torch.testing.assert_close(generate(official, **source, output_type="latent"), explicit)

    empty = tiny_pipeline("patch", byte_tokenizer)
    empty.register_to_config(edit_negative_prompt="")
    empty.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["edit_negative_prompt"] == ""
    edit = TunaEditPipeline.from_pipe(TunaPipeline.from_pretrained(tmp_path, dtype=torch.float32))
    assert edit.config.edit_negative_prompt == ""
    by_default = generate(edit, **source, output_type="latent")
    torch.testing.assert_close(by_default, generate(edit, **source, negative_prompt="", output_type="latent"))
    assert (by_default - explicit).abs().max() > 1e-4
    with pytest.raises(TypeError, match="edit_negative_prompt"):
        TunaPipeline(empty.transformer, empty.processor, empty.scheduler, edit_negative_prompt=None)


def test_hub_repo_ids_go_through_download(tmp_path, pipelines, monkeypatch):
    """Diffusers' own `download` rejects tuna_hf components; ours fetches the whole repository (no network here)."""
    pipelines["patch"].save_pretrained(tmp_path)
    requested = []

    def fake_snapshot_download(repo_id, **kwargs):
        requested.append((repo_id, kwargs["revision"]))
        return str(tmp_path)

    monkeypatch.setattr(tuna_hf.pipelines.base, "snapshot_download", fake_snapshot_download)
    loaded = TunaPipeline.from_pretrained("someone/tuna-2-tiny", revision="main", dtype=torch.float32)
    assert requested == [("someone/tuna-2-tiny", "main")] and isinstance(loaded, TunaPipeline)


class TestLora:
    @pytest.fixture
    def pipe(self, byte_tokenizer):
        return tiny_pipeline("patch", byte_tokenizer)

    def test_peft_directory_and_diffusers_file(self, tmp_path, byte_tokenizer, pipe):
        from peft import get_peft_model_state_dict

        base = generate(pipe, output_type="latent")
        add_random_lora(pipe.transformer)
        adapted = generate(pipe, output_type="latent")
        assert (adapted - base).abs().max() > 1e-3
        pipe.transformer.save_pretrained(tmp_path / "peft")
        TunaPipeline.save_lora_weights(
            tmp_path / "diffusers",
            transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name="style"),
            transformer_lora_adapter_metadata=pipe.transformer.peft_config["style"].to_dict(),
        )
        for source in (tmp_path / "peft", tmp_path / "diffusers"):
            fresh = tiny_pipeline("patch", byte_tokenizer)
            fresh.load_lora_weights(source, adapter_name="style")
            torch.testing.assert_close(generate(fresh, output_type="latent"), adapted)

    def test_set_adapters_fuse_and_unload(self, pipe):
        base = generate(pipe, output_type="latent")
        add_random_lora(pipe.transformer)
        adapted = generate(pipe, output_type="latent")
        pipe.set_adapters(["style"], adapter_weights=[0.0])
        torch.testing.assert_close(generate(pipe, output_type="latent"), base)
        pipe.set_adapters(["style"], adapter_weights=[1.0])
        pipe.fuse_lora(components=["transformer"])
        torch.testing.assert_close(generate(pipe, output_type="latent"), adapted, atol=1e-4, rtol=1e-4)
        pipe.unfuse_lora(components=["transformer"])
        pipe.unload_lora_weights()
        torch.testing.assert_close(generate(pipe, output_type="latent"), base, atol=1e-5, rtol=1e-5)

    def test_file_without_transformer_weights(self, tmp_path, pipe):
        from safetensors.torch import save_file

        save_file({"unet.lora_A.weight": torch.zeros(1)}, tmp_path / "pytorch_lora_weights.safetensors")
        with pytest.raises(ValueError, match=r"keys must start with `transformer\.`"):
            pipe.load_lora_weights(tmp_path)


class TestErrors:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"height": 40}, "`height` must be a positive multiple of 16"),
            ({"output_type": "jpeg"}, "`output_type` must be one of"),
            ({"negative_prompt": ["a", "b"]}, "`negative_prompt` has 2 entries for a batch of 1"),
            ({"latents": torch.zeros(1, 3, 1, 8, 8)}, r"`latents` must have shape \(1, 3, 1, 32, 32\)"),
            ({"num_frames": 5}, "Text-to-video needs the Tuna variant"),
            ({"num_images_per_prompt": 0}, "`num_images_per_prompt` must be a positive integer"),
            ({"callback_on_step_end_tensor_inputs": ["noise"]}, "`callback_on_step_end_tensor_inputs` must be in"),
            ({"num_inference_steps": 0}, "`num_inference_steps` must be an integer"),
            ({"guidance_scale": -1.0}, "`guidance_scale` must be a finite number ≥ 0"),
        ],
    )
    def test_text_to_image_arguments(self, pipelines, kwargs, message):
        with pytest.raises(ValueError, match=message):
            pipelines["patch"]("x", **{"num_inference_steps": STEPS, **kwargs})

    def test_prompt_longer_than_the_context(self, pipelines):
        with pytest.raises(ValueError, match="`prompt` is too long"):
            pipelines["patch"]("x" * 9000, num_inference_steps=STEPS)

    def test_empty_prompt_list(self, pipelines):
        with pytest.raises(ValueError, match="`prompt` must be a non-empty string or list of strings"):
            pipelines["patch"]([], num_inference_steps=STEPS)

    def test_edit_needs_exactly_one_source(self, pipelines):
        edit = TunaEditPipeline.from_pipe(pipelines["patch"])
        with pytest.raises(ValueError, match="exactly one of `image` and `image_latents`"):
            edit(prompt="make it red", num_inference_steps=STEPS)

    def test_edit_latents_shape(self, pipelines):
        edit = TunaEditPipeline.from_pipe(pipelines["patch"])
        with pytest.raises(ValueError, match=r"`image_latents` must be \[num_images, 3, 1, 32, 32\]"):
            edit(image_latents=torch.zeros(1, 3, 32, 32), prompt="x", height=SIZE, width=SIZE)

    def test_edit_sources_for_prompts(self, pipelines):
        edit = TunaEditPipeline.from_pipe(pipelines["patch"])
        images = [PIL.Image.new("RGB", (SIZE, SIZE))] * 2
        with pytest.raises(ValueError, match="2 source images for 3 prompts"):
            edit(images, ["a", "b", "c"], num_inference_steps=STEPS)

    def test_output_type(self):
        assert TunaPipelineOutput(images=[]).images == []


@pytest.mark.parametrize("cls", [TunaPipeline, TunaEditPipeline])
def test_call_signature(cls):
    """The parameters diffusers' `PipelineTesterMixin` requires, plus ours."""
    parameters = inspect.signature(cls.__call__).parameters
    required = {"prompt", "negative_prompt", "height", "width", "num_inference_steps", "guidance_scale"}
    required |= {"num_images_per_prompt", "generator", "latents", "output_type", "return_dict"}
    required |= {"callback_on_step_end", "callback_on_step_end_tensor_inputs", "use_prompt_cache"}
    assert required <= set(parameters)
    assert list(parameters)[1] == ("image" if cls is TunaEditPipeline else "prompt")


def test_dict_and_tuple_outputs_are_equal(pipelines):
    pipe = pipelines["vae_siglip"]
    as_dict = generate(pipe, output_type="np")
    as_tuple = pipe(
        "a red circle",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        return_dict=False,
    )[0]
    assert np.array_equal(as_dict, as_tuple)


def legacy_scheduler(tmp_path, **settings):
    """A scheduler config as saved when it held the guidance settings."""
    config = {"_class_name": "TunaFlowMatchScheduler", **OFFICIAL_SAMPLING_DEFAULTS["tuna_2"], **settings}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    return TunaFlowMatchScheduler.from_pretrained(tmp_path)


def test_an_older_scheduler_serves_every_pipeline_built_on_it(tmp_path, byte_tokenizer):
    scheduler = legacy_scheduler(tmp_path, guidance_interval=[0.0, 0.925], guidance_scale=2.5)
    model, processor = tiny_tuna_model("patch", byte_tokenizer), tiny_tuna_processor(byte_tokenizer, SIZE, SIZE)
    pipes = [cls(model, processor, scheduler) for cls in (TunaPipeline, TunaEditPipeline)]
    assert [(p.config.guidance_interval, p.config.guidance_scale) for p in pipes] == [((0.0, 0.925), 2.5)] * 2
    assert scheduler.config.guidance_interval == [0.0, 0.925]  # the given scheduler is left as it was
    assert all(not set(LEGACY_GUIDANCE_KEYS) & set(p.scheduler.config) for p in pipes)


def test_guidance_given_to_the_scheduler_as_before_reaches_the_pipeline(pipelines):
    pipe = pipelines["patch"]
    scheduler = TunaFlowMatchScheduler.from_config(pipe.scheduler.config, guidance_interval=(0.0, 0.5))
    assert TunaPipeline.from_pipe(pipe, scheduler=scheduler).config.guidance_interval == (0.0, 0.5)
    swapped = TunaPipeline.from_pipe(pipe)
    swapped.scheduler = scheduler  # after construction: refused at the call, not silently ignored
    with pytest.raises(ValueError, match=r"The scheduler's config holds \['guidance_interval'\]"):
        generate(swapped)


def test_a_pipeline_needs_its_transformer(pipelines):
    pipe = pipelines["patch"]
    with pytest.raises(ValueError, match="needs its `transformer`"):
        TunaPipeline(None, pipe.processor, pipe.scheduler)


def test_a_failing_step_leaves_a_held_prompt_cache_as_it_was(pipelines):
    pipe = pipelines["patch"]
    rows, cache = pipe.encode_prompt("a red circle", height=SIZE, width=SIZE)
    length = cache.decoder_cache.get_seq_length()

    def fail(*args):
        raise RuntimeError("the flow head failed")

    hook = pipe.transformer.flow_head.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="the flow head failed"):
            generate(pipe, prompt=None, prompt_rows=rows, prompt_cache=cache)
    finally:
        hook.remove()
    assert cache.decoder_cache.get_seq_length() == cache.flow_head_cache.get_seq_length() == length
    assert len(generate(pipe, prompt=None, prompt_rows=rows, prompt_cache=cache)) == 1


def test_calls_on_several_threads_keep_their_own_guidance(pipelines):
    """The loop works on locals and the diffusers properties are per thread: concurrent calls with other
    guidance give the images they give alone."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = pipelines["patch"]
    settings = [
        {"guidance_scale": 1.0, "seed": 0},
        {"guidance_scale": 4.0, "seed": 1},
        {"guidance_scale": 2.0, "seed": 2},
    ]
    seen = {}

    def call(kwargs):
        def record(pipe, i, t, tensors):
            seen.setdefault(kwargs["seed"], set()).add(pipe.guidance_scale)
            return {}

        return generate(pipe, output_type="latent", callback_on_step_end=record, **kwargs)

    alone = [call(kwargs) for kwargs in settings]
    seen.clear()
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(call, settings * 2))
    for index, sample in enumerate(together):
        assert torch.equal(sample, alone[index % 3])
    assert seen == {0: {1.0}, 1: {4.0}, 2: {2.0}}
