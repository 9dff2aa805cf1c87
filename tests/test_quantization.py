"""Quantized loading with transformers' quantizers, directly and through diffusers' `PipelineQuantizationConfig`, on
the shapes checkpoint, for every backend that runs on this CPU (`tuna_hf.testing.cpu_quantization_configs`): the
declared layers stay in high precision, the weights shrink, and answers and images read back as in bf16."""

from pathlib import Path

import pytest
import torch
from diffusers import PipelineQuantizationConfig

from tuna_hf import TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.demo.shapes import all_scenes
from tuna_hf.demo.shapes_bench import bench_subset, read_scene, score_understanding
from tuna_hf.testing import cpu_quantization_configs, stored_weight_bytes

SHAPES = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tuna-2"
CONFIGS = cpu_quantization_configs()
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KEPT = ("model.vae", "model.timestep_embedder", "flow_head.final_layer", "lm_head")  # lm_head: quantizers' default


def load(quantization_config=None) -> TunaForUnifiedMultimodal:
    extra = {} if quantization_config is None else {"quantization_config": quantization_config}
    return TunaForUnifiedMultimodal.from_pretrained(SHAPES, subfolder="transformer", dtype=torch.bfloat16, **extra)


def is_plain_float(linear: torch.nn.Module) -> bool:
    return type(linear.weight) is torch.nn.Parameter and linear.weight.dtype in FLOAT_DTYPES


def readings(pipe: TunaPipeline, scenes) -> list:
    generator = torch.Generator().manual_seed(0)
    images = pipe([scene.caption for scene in scenes], num_inference_steps=20, generator=generator).images
    return [read_scene(image) for image in images]


@pytest.fixture(scope="module")
def reference():
    """The bf16 model, its pipeline, its weight bytes, and its readings of 9 scenes."""
    scenes = bench_subset(all_scenes(), 9)
    model = load()
    pipe = TunaPipeline.from_pretrained(SHAPES, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return {"pipe": pipe, "scenes": scenes, "bytes": stored_weight_bytes(model), "readings": readings(pipe, scenes)}


def test_the_backends_that_run_on_a_cpu_are_installed():
    assert len(CONFIGS) == 6, "the test extras install torchao, optimum-quanto and bitsandbytes"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_model_answers_and_draws_as_bf16(reference, name):
    model = load(CONFIGS[name])
    linears = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    kept = {layer for layer in linears if layer.startswith(KEPT)}
    assert kept and all(is_plain_float(linears[layer]) for layer in kept)
    assert not any(is_plain_float(linears[layer]) for layer in linears.keys() - kept)
    ratio = stored_weight_bytes(model) / reference["bytes"]
    assert ratio < (0.4 if "4" in name and "torchao" not in name else 0.62)  # torchao's CPU int4 stores int8
    scenes = reference["scenes"]
    processor = reference["pipe"].processor
    assert score_understanding(model, processor, scenes) == score_understanding(
        reference["pipe"].transformer, processor, scenes
    )
    pipe = TunaPipeline.from_pipe(reference["pipe"], transformer=model)
    pipe.set_progress_bar_config(disable=True)
    assert readings(pipe, scenes) == reference["readings"]


@pytest.mark.parametrize("name", [name for name in CONFIGS if name.startswith("torchao int8")])
def test_pipeline_quantization_config_quantizes_the_transformer(reference, name):
    quantization_config = PipelineQuantizationConfig(quant_mapping={"transformer": CONFIGS[name]})
    pipe = TunaPipeline.from_pretrained(SHAPES, quantization_config=quantization_config, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert stored_weight_bytes(pipe.transformer) / reference["bytes"] < 0.62
    assert readings(pipe, reference["scenes"]) == reference["readings"]
