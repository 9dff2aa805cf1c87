"""Low-memory running with diffusers' machinery: storage casting (`enable_layerwise_casting`), group offloading
(`enable_group_offload`), model and sequential CPU offload. What needs an accelerator is skipped without one."""

from pathlib import Path

import diffusers
import pytest
import torch
from packaging import version

from tuna_hf import TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes import all_scenes
from tuna_hf.demo.shapes_bench import bench_subset, read_scene
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "checkpoints" / "shapes-tuna-2"
SIZE = 32
requires_accelerator = pytest.mark.skipif(
    not torch.accelerator.is_available(), reason="offloading to the CPU needs an accelerator to run on"
)
# diffusers < 0.42's `ModuleGroup` reads `torch.accelerator.current_accelerator().type`, None on a CPU-only machine
# (0.42 goes through `TorchDeviceBackend(onload_device)`); with an accelerator, the older versions offload as well.
group_offload_runs_here = pytest.mark.skipif(
    not torch.accelerator.is_available() and version.parse(diffusers.__version__) < version.parse("0.42"),
    reason="diffusers < 0.42 builds group offloading only when an accelerator is present",
)


def tiny_pipeline(tokenizer, encoder):
    model = tiny_tuna_model(encoder, tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant)
    pipe = TunaPipeline(transformer=model, processor=tiny_tuna_processor(tokenizer, SIZE, SIZE), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts=("a red circle", "a much longer prompt about a blue square"), **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(list(prompts), num_inference_steps=3, generator=generator, output_type="pt", **kwargs).images


@group_offload_runs_here
@pytest.mark.parametrize("encoder", ["vae_siglip", "patch"])
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading_gives_the_same_images(byte_tokenizer, encoder, offload_type):
    """Onloaded and offloaded on the CPU, the hooks run as on an accelerator; the images are exactly the same."""
    pipe = tiny_pipeline(byte_tokenizer, encoder)
    expected = sample(pipe)
    blocks = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    cpu = torch.device("cpu")
    pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type=offload_type, **blocks)
    torch.testing.assert_close(sample(pipe), expected, rtol=0, atol=0)
    torch.testing.assert_close(sample(pipe, use_prompt_cache=False), expected, rtol=1e-5, atol=1e-5)


def test_layerwise_casting_keeps_the_declared_layers(byte_tokenizer):
    pipe = tiny_pipeline(byte_tokenizer, "vae_siglip")
    expected = sample(pipe)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    dtypes = {name: parameter.dtype for name, parameter in pipe.transformer.named_parameters()}
    assert dtypes["model.language_model.layers.0.mlp.up_proj.weight"] == torch.bfloat16
    assert dtypes["flow_head.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    kept_modules = ("model.vae.", "model.timestep_embedder.", "flow_head.final_layer.")
    kept = [name for name in dtypes if name.startswith(kept_modules) or "norm" in name]
    assert kept and all(dtypes[name] == torch.float32 for name in kept)
    torch.testing.assert_close(sample(pipe), expected, rtol=0, atol=0.05)  # bf16 storage of random weights


def test_fp8_storage_reads_back_the_same_scenes():
    """fp8 storage (e4m3) of the shapes checkpoint: every generated scene reads back as without it."""
    scenes = bench_subset(all_scenes(), 9)
    prompts = [scene.caption for scene in scenes]
    pipe = TunaPipeline.from_pretrained(SHAPES, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    expected = [read_scene(image) for image in pipe(prompts, num_inference_steps=20).images]
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert [read_scene(image) for image in pipe(prompts, num_inference_steps=20).images] == expected
    assert all(scene_reading.matches(scene) for scene_reading, scene in zip(expected, scenes, strict=True))


@requires_accelerator
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_gives_the_same_images(offload):
    device = torch.accelerator.current_accelerator()
    pipe = TunaPipeline.from_pretrained(SHAPES, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    expected = sample(pipe)
    pipe = TunaPipeline.from_pretrained(SHAPES, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    getattr(pipe, offload)(device=device)
    torch.testing.assert_close(sample(pipe), expected, rtol=1e-5, atol=1e-5)
