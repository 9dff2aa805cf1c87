"""TunaFlowMatchScheduler reproduces the official grids and updates (docs/architecture.md §6) and round-trips its
config."""

import json

import pytest
import torch

from tuna_hf import TunaFlowMatchScheduler
from tuna_hf.scheduling_tuna import LEGACY_GUIDANCE_KEYS, OFFICIAL_SAMPLING_DEFAULTS


def public_config(config):
    """Config values as JSON gives them back (tuples → lists), without diffusers' private bookkeeping."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items() if key[0] != "_"}


def flow_times(scheduler):
    """TUNA's time (t = 1 clean) of every model call."""
    return [round(1 - float(t) / scheduler.config.num_train_timesteps, 6) for t in scheduler.timesteps]


def test_velocity_grid_is_shifted_and_has_one_call_less_than_steps():
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna")
    scheduler.set_timesteps(4)
    assert flow_times(scheduler) == [0.0, round(1 / 7, 6), 0.4]  # t / (t + 3 − 3t) on linspace(0, 1, 4)
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 49 and scheduler.order == 1


@pytest.mark.parametrize(
    "solver, calls", [("euler", [0, 0.25, 0.5, 0.75]), ("heun", [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75])]
)
def test_x0_grid_is_uniform(solver, calls):
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2", solver=solver, shift=3.0)
    scheduler.set_timesteps(4)
    assert flow_times(scheduler) == calls  # the shift is ignored, as by the official JiT sampler
    assert scheduler.order == (2 if solver == "heun" else 1)  # diffusers' meaning: model calls per step


def test_x0_grid_in_bfloat16_matches_the_official_bf16_grid():
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    scheduler.set_timesteps(50, grid_dtype=torch.bfloat16)
    official = torch.linspace(0, 1, 51, dtype=torch.bfloat16)[:-1].float()
    assert torch.equal(1 - scheduler.timesteps / 1000, official)
    assert abs(float(official[-1]) - 0.98046875) < 1e-9


def test_euler_velocity_step():
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna")
    scheduler.set_timesteps(4)
    sample, velocity = torch.randn(2, 3), torch.randn(2, 3)
    updated = scheduler.step(velocity, scheduler.timesteps[0], sample).prev_sample
    torch.testing.assert_close(updated, sample + (1 / 7) * velocity)


def test_x0_steps_clamp_the_denominator_and_end_with_euler():
    """v = (x0 − x) / max(0.05, 1 − t); with 4 intervals the last call (t = 0.75) steps to t = 1."""
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    scheduler.set_timesteps(4)
    sample, x0 = torch.randn(5), torch.randn(5)
    for t in scheduler.timesteps:
        expected = sample + 0.25 * (x0 - sample) / max(0.05, float(t) / 1000)
        sample = scheduler.step(x0, t, sample).prev_sample
        torch.testing.assert_close(sample, expected)
    torch.testing.assert_close(sample, x0)  # 1 − t = 0.25 > 0.05: the last step lands on x0

    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    scheduler.set_timesteps(50)
    sample = torch.zeros(1)
    for t in scheduler.timesteps[:-1]:
        sample = scheduler.step(torch.ones(1), t, sample).prev_sample
    last = scheduler.step(torch.ones(1), scheduler.timesteps[-1], sample).prev_sample
    torch.testing.assert_close(last, sample + 0.02 * (1 - sample) / 0.05)  # the clamp is active at t = 0.98


def test_heun_predictor_corrector():
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_r")
    scheduler.set_timesteps(2)  # calls at t = 0 (predictor), 0.5 (corrector), 0.5 (final Euler)
    x, x0_first, x0_second, x0_last = torch.randn(4, 3).unbind()
    predicted = scheduler.step(x0_first, scheduler.timesteps[0], x).prev_sample
    torch.testing.assert_close(predicted, x + 0.5 * (x0_first - x))
    corrected = scheduler.step(x0_second, scheduler.timesteps[1], predicted).prev_sample
    first_velocity, second_velocity = x0_first - x, (x0_second - predicted) / 0.5
    torch.testing.assert_close(corrected, x + 0.5 * (0.5 * (first_velocity + second_velocity)))
    final = scheduler.step(x0_last, scheduler.timesteps[2], corrected).prev_sample
    torch.testing.assert_close(final, corrected + 0.5 * (x0_last - corrected) / 0.5)


@pytest.mark.parametrize("variant", sorted(OFFICIAL_SAMPLING_DEFAULTS))
def test_official_defaults_round_trip(tmp_path, variant):
    scheduler = TunaFlowMatchScheduler.from_official_defaults(variant)
    scheduler.save_pretrained(tmp_path)
    loaded = TunaFlowMatchScheduler.from_pretrained(tmp_path)
    assert public_config(loaded.config) == public_config(scheduler.config)
    assert loaded.init_noise_sigma == {"tuna": 1.0, "tuna_r": 2.0, "tuna_2": 2.0}[variant]
    assert loaded.config.solver == ("heun" if variant == "tuna_r" else "euler")
    assert not set(LEGACY_GUIDANCE_KEYS) & set(loaded.config)  # guidance is the pipeline's


def test_an_older_config_keeps_its_guidance_settings_for_the_pipeline(tmp_path, caplog):
    """A scheduler config saved when it held the guidance settings loads without a warning; they stay readable."""
    legacy = {**OFFICIAL_SAMPLING_DEFAULTS["tuna_2"], "guidance_scale": 3.0, "guidance_interval": [0.0, 0.925]}
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "TunaFlowMatchScheduler", **legacy}))
    with caplog.at_level("WARNING"):
        loaded = TunaFlowMatchScheduler.from_pretrained(tmp_path)
    assert "not expected" not in caplog.text
    assert loaded.config.guidance_interval == [0.0, 0.925] and loaded.config.solver == "euler"


def test_bad_arguments():
    with pytest.raises(ValueError, match="`variant`"):
        TunaFlowMatchScheduler.from_official_defaults("tuna-3")
    with pytest.raises(ValueError, match="`solver`"):
        TunaFlowMatchScheduler(solver="dopri5")
    with pytest.raises(ValueError, match="`prediction_type`"):
        TunaFlowMatchScheduler(prediction_type="epsilon")
    with pytest.raises(ValueError, match="`num_inference_steps`"):
        TunaFlowMatchScheduler().set_timesteps(1)
