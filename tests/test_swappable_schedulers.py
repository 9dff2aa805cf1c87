"""The pipelines sample with diffusers' flow-matching schedulers too (docs/architecture.md §6): the model's prediction
is converted to the flow they integrate, the initial noise has the model's scale, unfit schedulers are refused."""

import threading

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    UniPCMultistepScheduler,
)

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.scheduling_tuna import scheduler_model_output
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

SIZE = 32
FLOW_SOLVER = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
SCHEDULERS = {
    "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "euler-dynamic": lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
    "heun": FlowMatchHeunDiscreteScheduler,
    "unipc": lambda: UniPCMultistepScheduler(**FLOW_SOLVER),
    "dpm": lambda: DPMSolverMultistepScheduler(**FLOW_SOLVER),
}


@pytest.fixture(scope="module")
def base_pipelines(byte_tokenizer):
    pipelines = {}
    for encoder in ("vae_siglip", "patch"):
        model = tiny_tuna_model(encoder, byte_tokenizer)
        scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant)
        processor = tiny_tuna_processor(byte_tokenizer, SIZE, SIZE)
        pipelines[encoder] = TunaPipeline(transformer=model, processor=processor, scheduler=scheduler)
        pipelines[encoder].set_progress_bar_config(disable=True)
    return pipelines


def sample(pipe, seed=0, **kwargs):
    kwargs = {"prompt": "a red circle", "num_inference_steps": 3, "output_type": "pt", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("encoder", ["vae_siglip", "patch"])
def test_each_scheduler_gives_valid_images_for_both_predictions(base_pipelines, encoder, name):
    pipe = TunaPipeline.from_pipe(base_pipelines[encoder], scheduler=SCHEDULERS[name]())
    steps = []
    images = sample(pipe, callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    assert images.shape == (1, 3, SIZE, SIZE) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    scheduler = pipe.scheduler.from_config(pipe.scheduler.config)
    image_seq_len = pipe.processor.num_image_tokens(SIZE, SIZE) - 1
    assert len(steps) == len(pipe.prepare_timesteps(scheduler, 3, image_seq_len, "cpu", torch.float32))
    edit = TunaEditPipeline.from_pipe(pipe)
    edited = edit(images[0], "make it blue", num_inference_steps=3, output_type="pt").images
    assert edited.shape == (1, 3, SIZE, SIZE) and torch.isfinite(edited).all()


@pytest.mark.parametrize("prediction_type", ["velocity", "x0"])
def test_diffusers_euler_on_the_tuna_grid_takes_the_tuna_steps(prediction_type):
    """The conversion is exact: on TUNA's own grid (x0: 1/N ≥ 0.05, where the JiT clamp is the identity), diffusers'
    Euler fed the converted prediction reproduces TunaFlowMatchScheduler's updates."""
    tuna = TunaFlowMatchScheduler(prediction_type=prediction_type, shift=3.0 if prediction_type == "velocity" else 1)
    tuna.set_timesteps(6)
    euler = FlowMatchEulerDiscreteScheduler()
    euler.set_timesteps(sigmas=tuna.sigmas[:-1].numpy())
    torch.manual_seed(0)
    sample_tuna = sample_euler = torch.randn(2, 4, 1, 3, 3)
    for i, (t_tuna, t_euler) in enumerate(zip(tuna.timesteps, euler.timesteps, strict=True)):
        prediction = torch.randn(2, 4, 1, 3, 3)
        sigma = float(euler.sigmas[i])
        flow = scheduler_model_output(euler, prediction, sample_euler, sigma, prediction_type)
        sample_tuna = tuna.step(prediction, t_tuna, sample_tuna).prev_sample
        sample_euler = euler.step(flow, t_euler, sample_euler).prev_sample
        torch.testing.assert_close(sample_euler, sample_tuna, rtol=1e-5, atol=1e-5)


def test_initial_noise_has_the_model_scale(base_pipelines):
    """Diffusers' flow schedulers start from sigma 1: the model's training noise (`noise_scale`, 2 for JiT x0)."""
    pipe = TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=FlowMatchEulerDiscreteScheduler())
    assert pipe.initial_noise_sigma == pipe.transformer.config.noise_scale == 2
    assert base_pipelines["patch"].initial_noise_sigma == base_pipelines["patch"].scheduler.config.noise_scale


def test_the_default_scheduler_is_unchanged_by_a_sibling_with_another(base_pipelines):
    pipe = base_pipelines["patch"]
    before = sample(pipe)
    sample(TunaPipeline.from_pipe(pipe, scheduler=UniPCMultistepScheduler(**FLOW_SOLVER)))
    assert isinstance(pipe.scheduler, TunaFlowMatchScheduler)
    torch.testing.assert_close(sample(pipe), before, rtol=0, atol=0)


def test_a_saved_pipeline_keeps_its_diffusers_scheduler(tmp_path, base_pipelines):
    pipe = TunaPipeline.from_pipe(base_pipelines["vae_siglip"], scheduler=UniPCMultistepScheduler(**FLOW_SOLVER))
    pipe.save_pretrained(tmp_path)
    loaded = TunaPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, UniPCMultistepScheduler)
    public = [{k: v for k, v in s.config.items() if k[0] != "_"} for s in (loaded.scheduler, pipe.scheduler)]
    assert public[0] == public[1]
    torch.testing.assert_close(sample(loaded), sample(pipe), rtol=0, atol=0)


def test_multistep_state_stays_with_each_call(base_pipelines):
    """UniPC keeps its previous outputs on the scheduler: every call samples on its own copy."""
    pipe = TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=UniPCMultistepScheduler(**FLOW_SOLVER))
    expected = [sample(pipe, seed=seed, num_inference_steps=4) for seed in range(4)]
    results = [None] * 4

    def run(seed):
        results[seed] = sample(pipe, seed=seed, num_inference_steps=4)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, alone in zip(results, expected, strict=True):
        torch.testing.assert_close(result, alone, rtol=0, atol=0)


@pytest.mark.parametrize(
    "scheduler",
    [DDIMScheduler(), UniPCMultistepScheduler(), UniPCMultistepScheduler(use_flow_sigmas=True)],
    ids=["ddim", "unipc-epsilon", "unipc-flow-sigmas-epsilon"],
)
def test_a_scheduler_that_does_not_integrate_the_flow_is_refused(base_pipelines, scheduler):
    with pytest.raises(ValueError, match=r"`scheduler` must be a TunaFlowMatchScheduler, a diffusers FlowMatch\*"):
        TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=scheduler)


@pytest.mark.parametrize("solver", [UniPCMultistepScheduler, DPMSolverMultistepScheduler])
def test_multistep_solvers_start_at_their_first_step_when_rounded_timesteps_coincide(base_pipelines, solver):
    """A strong shift rounds the first two timesteps to 999: the solver must still take every step in order."""
    scheduler = solver(**FLOW_SOLVER, flow_shift=12.0)
    pipe = TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=scheduler)
    scheduler.set_timesteps(100)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]
    steps = []
    images = sample(pipe, num_inference_steps=100, callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    assert steps == list(range(100)) and torch.isfinite(images).all()


@pytest.mark.parametrize(
    "scheduler, setting",
    [
        (FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling=True"),
        (
            DPMSolverMultistepScheduler(**FLOW_SOLVER, algorithm_type="sde-dpmsolver++"),
            "algorithm_type='sde-dpmsolver",
        ),
        (FlowMatchLCMScheduler(), "FlowMatchLCMScheduler"),
    ],
    ids=["stochastic-euler", "sde-dpm", "lcm"],
)
def test_a_scheduler_that_draws_noise_is_refused(base_pipelines, scheduler, setting):
    with pytest.raises(ValueError, match=rf"`scheduler` draws noise in its steps \({setting}"):
        TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=scheduler)


def test_sigmas_outside_the_flow_range_are_refused(base_pipelines):
    scheduler = DPMSolverMultistepScheduler(**FLOW_SOLVER, use_karras_sigmas=True)
    pipe = TunaPipeline.from_pipe(base_pipelines["patch"], scheduler=scheduler)
    with pytest.raises(ValueError, match=r"DPMSolverMultistepScheduler's sigmas span .* not flow sigmas in \[0, 1\]"):
        sample(pipe)
