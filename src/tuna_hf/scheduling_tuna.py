"""TUNA's flow-matching sampler as a diffusers scheduler: time grids and steps (docs/architecture.md §6).

Diffusers' convention is kept on the outside: `sigma = 1` is noise, `timesteps = sigma · 1000`, decreasing. TUNA's
time is `t = 1 − sigma` (t = 1 clean), which is what the model's `timesteps` argument takes.

* Tuna (`prediction_type="velocity"`): the model predicts `u = x_data − noise`. The official sampler integrates with
  Euler on `linspace(0, 1, N)` shifted by `t / (t + s − s·t)` (= diffusers' static shift of sigma), so N "steps" are
  N − 1 model calls (`tuna_pipeline.py`, `transport/integrators.py`).
* Tuna-R / Tuna-2 (`prediction_type="x0"`): the official JiT sampler (`jit_utils.py`). Uniform grid
  `linspace(0, 1, N + 1)` (the shift is ignored), velocity `(x0 − x) / max(0.05, 1 − t)`, Euler or Heun for the first
  N − 1 intervals and always Euler for the last one: N calls (Euler) or 2N − 1 (Heun). The initial noise is scaled by
  `noise_scale` (2). The grid is built in the model's dtype, as the official one (bf16 in the released configs).

Guidance is the pipelines' business (their config holds its defaults). The pipelines also sample with diffusers' own
flow-matching schedulers (`FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`, and multistep solvers
set to flow sigmas, such as `UniPCMultistepScheduler` / `DPMSolverMultistepScheduler`): the functions at the end of
this module check such a scheduler and turn the model's prediction into the flow `noise − x_data` they integrate
(docs/architecture.md §6).
"""

import numbers

import torch
from diffusers import SchedulerMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

SOLVERS = ("euler", "heun")


def is_integer(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# The sampler half of the official predict defaults (`scripts/launch/predict.sh`, `configs/predict/*.yaml`); the
# guidance half is `tuna_hf.pipelines.OFFICIAL_GUIDANCE_DEFAULTS`.
OFFICIAL_SAMPLING_DEFAULTS = {
    "tuna": {"prediction_type": "velocity", "solver": "euler", "shift": 3.0, "noise_scale": 1.0},
    "tuna_r": {"prediction_type": "x0", "solver": "heun", "shift": 1.0, "noise_scale": 2.0},
    "tuna_2": {"prediction_type": "x0", "solver": "euler", "shift": 1.0, "noise_scale": 2.0},
}
# Guidance settings that scheduler configs held before they moved to the pipeline config. They are kept among the
# config's "hidden" entries when such a config is loaded, for the pipeline to take over (`TunaBasePipeline`).
LEGACY_GUIDANCE_KEYS = ("guidance_scale", "edit_guidance_scale", "video_guidance_scale", "guidance_interval")


class TunaFlowMatchScheduler(SchedulerMixin, ConfigMixin):
    """
    The sampler shared by [`TunaPipeline`] and [`TunaEditPipeline`]; `step` takes the (guided) model prediction in
    the model's own convention: TUNA velocity `x_data − noise`, or the clean sample x0.

    It follows `FlowMatchEulerDiscreteScheduler`'s conventions (sigmas, `timesteps = sigma · 1000`, static shift)
    without subclassing it: its dynamic-shift and sigma-schedule options have no official counterpart here. Like
    every diffusers scheduler it holds the state of one sampling run (`set_timesteps` … `step`); the pipelines sample
    on a copy of their own per call.

    Args:
        num_train_timesteps (`int`, defaults to 1000): scale of `timesteps` (`sigma · num_train_timesteps`).
        shift (`float`, defaults to 3.0): static time shift of the velocity grid (ignored for x0, as officially).
        prediction_type (`str`, defaults to `"velocity"`): `"velocity"` (Tuna) or `"x0"` (Tuna-R, Tuna-2).
        solver (`str`, defaults to `"euler"`): `"euler"` or `"heun"` (Heun's last interval is Euler, as the official
            JiT sampler).
        noise_scale (`float`, defaults to 1.0): standard deviation of the initial noise (`init_noise_sigma`).
        x0_min_denominator (`float`, defaults to 0.05): the JiT clamp of `1 − t` when x0 is turned into a velocity.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 3.0,
        prediction_type: str = "velocity",
        solver: str = "euler",
        noise_scale: float = 1.0,
        x0_min_denominator: float = 0.05,
    ):
        if prediction_type not in ("velocity", "x0"):
            raise ValueError(f'`prediction_type` must be "velocity" or "x0", got {prediction_type!r}.')
        if solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
        self.timesteps = self.sigmas = None
        self.num_inference_steps = None
        self._step_index = None
        self._heun_state = None

    @classmethod
    def from_official_defaults(cls, variant: str, **overrides) -> "TunaFlowMatchScheduler":
        """The official sampler of `variant` (`"tuna"`, `"tuna_r"`, `"tuna_2"`; see `TunaConfig.tuna_variant`)."""
        if variant not in OFFICIAL_SAMPLING_DEFAULTS:
            raise ValueError(f"`variant` must be one of {tuple(OFFICIAL_SAMPLING_DEFAULTS)}, got {variant!r}.")
        return cls(**{**OFFICIAL_SAMPLING_DEFAULTS[variant], **overrides})

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        """Diffusers' config reading, keeping guidance settings (`LEGACY_GUIDANCE_KEYS`) of an older config, or given
        to `from_config` as before, as hidden entries instead of ignoring them: a pipeline built with this scheduler
        takes them over."""
        legacy = {key: config_dict[key] for key in LEGACY_GUIDANCE_KEYS if key in config_dict}
        legacy.update({key: kwargs.pop(key) for key in LEGACY_GUIDANCE_KEYS if key in kwargs})
        current = {key: value for key, value in config_dict.items() if key not in legacy}
        init_dict, unused_kwargs, hidden_dict = super().extract_init_dict(current, **kwargs)
        return init_dict, unused_kwargs, {**hidden_dict, **legacy}

    @property
    def order(self) -> int:
        """Model calls per step, as diffusers counts them: 2 for Heun (predictor and corrector), 1 for Euler."""
        return 2 if self.config.solver == "heun" else 1

    @property
    def init_noise_sigma(self) -> float:
        return self.config.noise_scale

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in `timesteps` (None before the first `step`)."""
        return self._step_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        grid_dtype: torch.dtype = torch.float32,
    ):
        """
        The official grid of `num_inference_steps` (TUNA's meaning: grid points for velocity, intervals for x0).

        Args:
            num_inference_steps (`int`): grid points (velocity: `num_inference_steps − 1` steps) or intervals (x0).
            device (`str` or `torch.device`, *optional*): where `timesteps` and `sigmas` go.
            grid_dtype (`torch.dtype`, defaults to `torch.float32`): the dtype the official x0 grid is built in (the
                sample's dtype there).

        `self.sigmas` is the grid (ending at 0); `self.timesteps` holds one entry per model call (Heun: the inner
        grid points twice).
        """
        velocity = self.config.prediction_type == "velocity"
        if not is_integer(num_inference_steps) or num_inference_steps < (2 if velocity else 1):
            raise ValueError(
                f"`num_inference_steps` must be an integer ≥ {2 if velocity else 1} for this sampler, "
                f"got {num_inference_steps}."
            )
        if velocity:
            sigmas = torch.linspace(1, 0, num_inference_steps, dtype=torch.float64)
            shift = self.config.shift
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        else:
            sigmas = 1 - torch.linspace(0, 1, num_inference_steps + 1, dtype=grid_dtype).double()
        self.sigmas = sigmas.to(device=device, dtype=torch.float32)
        calls = self.sigmas[:-1] * self.config.num_train_timesteps
        if self.config.solver == "heun":
            calls = torch.cat([calls[:1], calls[1:].repeat_interleave(2)])
        self.timesteps = calls
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._heun_state = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """
        One model call's update. Heun alternates predictor and corrector calls; the last call is an Euler step.

        Args:
            model_output (`torch.Tensor`): the (guided) prediction: velocity, or x0.
            timestep (`torch.Tensor`): the entry of `timesteps` the model was called at.
            sample (`torch.Tensor`): the current sample.
            return_dict (`bool`, defaults to True): return a `FlowMatchEulerDiscreteSchedulerOutput` or a tuple.
        """
        if self._step_index is None:
            self._step_index = int((self.timesteps == timestep).nonzero()[0])
        call, heun = self.step_index, self.config.solver == "heun"
        last_call = call == len(self.timesteps) - 1
        if heun and not last_call:
            interval, corrector = divmod(call, 2)
        else:
            interval, corrector = ((call + 1) // 2 if heun else call), False
        sigma, sigma_next = self.sigmas[interval], self.sigmas[interval + 1]
        dt = (sigma - sigma_next).to(sample.dtype)

        if corrector:
            start, first_velocity = self._heun_state
            velocity = self._velocity(model_output, sample, sigma_next)
            prev_sample = start + dt * (0.5 * (first_velocity + velocity))
            self._heun_state = None
        else:
            velocity = self._velocity(model_output, sample, sigma)
            prev_sample = sample + dt * velocity
            if heun and not last_call:
                self._heun_state = (sample, velocity)

        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)

    def _velocity(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """dx/dt in TUNA time. x0 → velocity divides by `max(0.05, 1 − t)` as a Python float, as the official code."""
        if self.config.prediction_type == "velocity":
            return model_output.to(sample.dtype)
        return (model_output.to(sample.dtype) - sample) / max(self.config.x0_min_denominator, float(sigma))


def check_scheduler(scheduler: SchedulerMixin, prediction_type: str) -> None:
    """
    Refuses a scheduler the model cannot sample with. `TunaFlowMatchScheduler` must have the model's
    `prediction_type`; a diffusers scheduler must integrate the flow ODE: a `FlowMatch*` scheduler, or a solver set to
    `use_flow_sigmas=True` with `prediction_type="flow_prediction"`.
    """
    if isinstance(scheduler, TunaFlowMatchScheduler):
        if scheduler.config.prediction_type != prediction_type:
            raise ValueError(
                f"The scheduler's `prediction_type` ({scheduler.config.prediction_type!r}) must be the model's "
                f"({prediction_type!r})."
            )
        return
    config = scheduler.config
    flow_solver = config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction"
    if not (type(scheduler).__name__.startswith("FlowMatch") or flow_solver):
        raise ValueError(
            f"`scheduler` must be a TunaFlowMatchScheduler, a diffusers FlowMatch* scheduler, or a solver with "
            f'`use_flow_sigmas=True` and `prediction_type="flow_prediction"`; got {type(scheduler).__name__} with '
            f"use_flow_sigmas={config.get('use_flow_sigmas')!r}, prediction_type={config.get('prediction_type')!r}."
        )
    noise = _noise_in_steps(scheduler)
    if noise:
        raise ValueError(
            f"`scheduler` draws noise in its steps ({noise}): the pipelines integrate the flow ODE, whose noise is "
            "the model's (`noise_scale`) and the call's generator's; use a deterministic setting."
        )


def _noise_in_steps(scheduler: SchedulerMixin) -> str | None:
    """The setting that makes a diffusers flow scheduler re-noise the sample in its steps, if any."""
    config = scheduler.config
    if config.get("stochastic_sampling"):
        return "stochastic_sampling=True"
    if str(config.get("algorithm_type", "")).startswith("sde"):
        return f"algorithm_type={config.algorithm_type!r}"
    if "LCM" in type(scheduler).__name__:
        return type(scheduler).__name__
    return None


def call_sigma(scheduler: SchedulerMixin, index: int, timestep: torch.Tensor) -> torch.Tensor:
    """
    The noise level `sigma = 1 − t` of the model call `index` (at `timestep`). Diffusers' schedulers keep one sigma
    per call (their multistep solvers round `timesteps` to integers); TUNA's `sigmas` are grid points.
    """
    if isinstance(scheduler, TunaFlowMatchScheduler):
        return timestep / scheduler.config.num_train_timesteps
    return scheduler.sigmas[index].to(timestep.device)


def scheduler_model_output(
    scheduler: SchedulerMixin, prediction: torch.Tensor, sample: torch.Tensor, sigma: float, prediction_type: str
) -> torch.Tensor:
    """
    The model's (guided) prediction as `scheduler.step` takes it: unchanged for `TunaFlowMatchScheduler`, the flow
    `noise − x_data = dx/dsigma` for diffusers' schedulers — minus TUNA's velocity, or `(x − x0) / sigma` from x0.
    Without the JiT clamp `max(0.05, sigma)`: the official grids never call the model below sigma 0.05, diffusers'
    end at sigma 1/1000, where the clamp would leave their last step (and a solver's x0 `x − sigma · flow`) short
    of the model's x0 (docs/architecture.md §6).
    """
    if isinstance(scheduler, TunaFlowMatchScheduler):
        return prediction
    if prediction_type == "velocity":
        return -prediction
    if sigma <= 0:
        raise ValueError(f"{type(scheduler).__name__} calls the model at sigma {sigma}, where x0 has no flow.")
    return (sample - prediction) / sigma


__all__ = ["OFFICIAL_SAMPLING_DEFAULTS", "TunaFlowMatchScheduler"]
