"""tuna-hf served by vLLM-Omni's offline engine on the CPU, through its own request and output types.

Slow (the environment alone takes minutes to install): `bash tests/vllm_omni/run.sh` sets it up and runs this file.
The shapes checkpoint answers, all at once, five text-to-image requests (four sharing steps and guidance, each with
its own seed, and one with other steps, guidance and seed) and one edit; every picture is read back with ShapesBench's
reader, and each request's picture is the one tuna-hf's own pipeline draws with that request's parameters. Then the
generic diffusers adapter serves the checkpoint too, and tiny Tuna and Tuna-R repositories are served as their own
pipelines draw.
"""

import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes import Edit, Scene
from tuna_hf.demo.shapes_bench import edit_is_right, read_scene
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints" / "shapes-tuna-2"
SOURCE = Scene("green", "square", "center")


@dataclass(frozen=True)
class Case:
    """One request: a scene to draw (or an edit), its seed, steps and guidance (None: the repository's)."""

    name: str
    seed: int
    steps: int
    guidance_scale: float | None = None
    scene: Scene | None = None
    edit: Edit | None = None


CASES = (
    Case("red circle", 0, 20, scene=Scene("red", "circle", "top left")),
    Case("blue triangle", 1, 20, scene=Scene("blue", "triangle", "bottom right")),
    Case("yellow square", 2, 20, scene=Scene("yellow", "square", "right")),
    Case("orange circle", 3, 20, scene=Scene("orange", "circle", "top")),
    Case("purple triangle", 7, 12, guidance_scale=2.0, scene=Scene("purple", "triangle", "left")),
    Case("edit", 5, 20, edit=Edit(SOURCE, "color", Scene("purple", "square", "center"))),
)
BATCHED = [case for case in CASES if case.scene is not None and case.steps == 20 and case.guidance_scale is None]


def image(source) -> dict:
    """A vLLM-Omni prompt's image input."""
    return {"multi_modal_data": {"image": source}}


def omni_prompt(case: Case) -> dict:
    if case.edit is not None:
        return {"prompt": case.edit.instruction, **image(case.edit.source.draw())}
    return {"prompt": case.scene.caption}


def sampling_params(seed: int, steps: int, guidance_scale: float | None = None):
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    return OmniDiffusionSamplingParams(seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale)


def case_request(case: Case) -> tuple[dict, object]:
    return omni_prompt(case), sampling_params(case.seed, case.steps, case.guidance_scale)


async def answer(omni, request_id: str, prompt: dict, params) -> tuple[object, float]:
    """The request's final output and its latency (submission to answer)."""
    start, final = time.perf_counter(), None
    async for output in omni.generate(prompt, params, request_id=request_id):
        final = output
    return final, time.perf_counter() - start


async def serve(model: Path, requests: dict[str, tuple[dict, object]], **engine_kwargs) -> dict:
    """Starts vLLM-Omni's engine on `model` and submits all `requests` (id: prompt and sampling parameters) at once,
    each on its own; up to `max_num_seqs` of them per engine step."""
    from vllm_omni.entrypoints.async_omni import AsyncOmni

    start = time.perf_counter()
    omni = AsyncOmni(model=str(model), dtype="float32", **engine_kwargs)
    started = time.perf_counter()
    try:
        answers = await asyncio.gather(*(answer(omni, name, *request) for name, request in requests.items()))
        finished = time.perf_counter()
    finally:
        omni.shutdown()
    return {
        "outputs": {name: output for name, (output, _) in zip(requests, answers, strict=True)},
        "latencies": {name: latency for name, (_, latency) in zip(requests, answers, strict=True)},
        "engine_start": started - start,
        "requests": finished - started,
    }


@pytest.fixture(scope="module")
def served(request):
    """Runs the engine once for the module; the sizes of the text-to-image calls it made are recorded."""
    from tuna_hf.vllm_omni.pipeline import TunaOmniPipeline

    calls: list[int] = []
    run_text_to_image = TunaOmniPipeline.run_text_to_image

    def recording(self, requests):
        calls.append(len(requests))
        return run_text_to_image(self, requests)

    # The single-process engine runs the pipeline in this process, so the patch is seen.
    requests = {case.name: case_request(case) for case in CASES}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TunaOmniPipeline, "run_text_to_image", recording)
        # Up to 6 requests per engine step, waiting up to 2 s for a batch to fill.
        result = asyncio.run(serve(CHECKPOINT, requests, max_num_seqs=6, request_batch_max_wait_ms=2000))
    result["text_to_image_calls"] = calls
    latencies = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result["latencies"].items())
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(
            f"\nvLLM-Omni engine: start {result['engine_start']:.1f} s, {len(CASES)} requests answered in "
            f"{result['requests']:.2f} s (latencies: {latencies}); text-to-image calls of {calls} requests"
        )
    return result


def image_of(served, case: Case):
    output = served["outputs"][case.name]
    assert output is not None and not output.error, f"{case.name}: {output and output.error}"
    assert len(output.images) == 1
    return output.images[0]


def direct_image(case: Case):
    """What tuna-hf's own pipeline draws for the case, with a generator of its seed."""
    pipe = TunaPipeline.from_pretrained(CHECKPOINT, dtype=torch.float32)
    generator = torch.Generator().manual_seed(case.seed)
    kwargs = {"num_inference_steps": case.steps, "guidance_scale": case.guidance_scale, "generator": generator}
    if case.edit is not None:
        return TunaEditPipeline.from_pipe(pipe)(case.edit.source.draw(), case.edit.instruction, **kwargs).images[0]
    return pipe(case.scene.caption, **kwargs).images[0]


def pixel_difference(image, other) -> np.ndarray:
    return np.abs(np.asarray(image, np.int16) - np.asarray(other, np.int16))


@pytest.mark.parametrize("case", [case for case in CASES if case.scene is not None], ids=lambda case: case.name)
def test_text_to_image_requests_read_back_right(served, case):
    assert read_scene(image_of(served, case)).matches(case.scene)


def test_edit_request_reads_back_right(served):
    case = CASES[-1]
    assert edit_is_right(image_of(served, case), case.edit)


def test_requests_of_one_size_steps_and_guidance_share_one_call(served):
    assert len(BATCHED) in served["text_to_image_calls"]
    assert sum(served["text_to_image_calls"]) == len([case for case in CASES if case.scene is not None])


@pytest.mark.parametrize("case", [BATCHED[2], CASES[4], CASES[5]], ids=lambda case: case.name)
def test_each_request_keeps_its_seed_steps_and_guidance(served, case):
    # Batched rows are left-padded to one length, which moves the float result a little: a pixel may differ by a
    # few levels from the request drawn alone.
    difference = pixel_difference(image_of(served, case), direct_image(case))
    assert difference.max() <= 8 and difference.mean() < 0.5


def test_the_generic_diffusers_adapter_serves_it_too():
    """vLLM-Omni's diffusers adapter (`diffusion_load_format="diffusers"`) runs `TunaPipeline` as a black box, after
    choosing an attention backend with the model's `set_attention_backend` (it falls back to `"native"`)."""
    from vllm_omni.entrypoints.omni import Omni

    case = CASES[0]
    omni = Omni(model=str(CHECKPOINT), dtype="float32", diffusion_load_format="diffusers")
    try:
        (output,) = omni.generate([omni_prompt(case)], case_request(case)[1], use_tqdm=False)
    finally:
        omni.close()
    assert read_scene(output.images[0]).matches(case.scene)


@pytest.mark.parametrize("visual_encoder", ["vae_siglip", "siglip"], ids=["Tuna", "Tuna-R"])
def test_the_other_variants_are_served_as_their_pipeline_draws(tmp_path, byte_tokenizer, visual_encoder):
    """Tiny random Tuna (Wan VAE inside the model) and Tuna-R (SigLIP, batch-rescaled decoding) repositories: two
    text-to-image requests in one call and an edit, each with its own seed, give what their own pipelines draw."""
    model = tiny_tuna_model(visual_encoder, byte_tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant)
    pipe = TunaPipeline(transformer=model, processor=tiny_tuna_processor(byte_tokenizer, 32, 32), scheduler=scheduler)
    pipe.save_pretrained(tmp_path)
    source = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    requests = {
        "a red circle": ({"prompt": "a red circle"}, sampling_params(4, 3)),
        "a blue square": ({"prompt": "a blue square"}, sampling_params(5, 3)),
        "make it green": ({"prompt": "make it green", **image(source)}, sampling_params(6, 3)),
    }
    outputs = asyncio.run(serve(tmp_path, requests, max_num_seqs=2, request_batch_max_wait_ms=2000))["outputs"]
    edit = TunaEditPipeline.from_pipe(pipe)
    for name, (prompt, params) in requests.items():
        kwargs = {"num_inference_steps": 3, "generator": torch.Generator().manual_seed(params.seed)}
        if "multi_modal_data" in prompt:
            expected = edit(source, name, **kwargs).images[0]
        else:
            expected = pipe(name, **kwargs).images[0]
        difference = pixel_difference(outputs[name].images[0], expected)
        assert difference.max() <= 8 and difference.mean() < 0.5, name


def test_the_readme_offline_block_runs_as_written(tmp_path):
    """The README's offline `Omni` block, from a folder that links the repository's checkpoints."""
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    (block,) = [code for code in blocks if "vllm_omni" in code]
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for scene in (Scene("red", "circle", "top left"), Scene("green", "square", "center")):
        drawn = PIL.Image.open(tmp_path / "outputs" / f"{scene.caption.replace(' ', '_')}.png")
        assert read_scene(drawn).matches(scene)


@pytest.mark.parametrize(
    ("prompt", "overrides", "message"),
    [
        ({"negative_prompt": "blurry"}, {}, "`prompt` must be a string"),
        ("a red circle", {"num_outputs_per_prompt": 0}, "`num_outputs_per_prompt` must be ≥ 1, got 0"),
        ("a red circle", {"num_frames": 17}, r"take none of \['num_frames'\]"),
        ("a red circle", {"sigmas": [1.0, 0.5]}, r"take none of \['sigmas'\]"),
    ],
)
def test_requests_the_pipeline_cannot_honour_are_refused_by_name(prompt, overrides, message):
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    from tuna_hf.vllm_omni.pipeline import parse_request

    with pytest.raises(ValueError, match=message):
        parse_request(prompt, OmniDiffusionSamplingParams(**overrides), "pil")


def test_a_failing_request_of_a_batch_gets_its_own_error():
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    from tuna_hf.vllm_omni.pipeline import answer, parse_request

    requests = [parse_request(text, OmniDiffusionSamplingParams(seed=0), "pil") for text in ("good", "bad", "fine")]

    def run(batch):
        if any(request.prompt == "bad" for request in batch):
            raise ValueError("`prompt` is too long")
        return [request.prompt for request in batch]

    outputs = answer(run, requests)
    assert [output.output for output in outputs] == ["good", None, "fine"]
    assert outputs[1].error and "too long" in str(outputs[1].error)
