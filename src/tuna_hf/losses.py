"""Training objectives of TUNA (anatomy §7): flow time sampling, noising, the flow losses.

Time convention as everywhere: t = 1 clean, t = 0 noise, `x_t = t · x + (1 − t) · noise`.

* Tuna (velocity): `t = sigmoid(N(0, 1))`, then the SD3 shift with `mu = 0.63` (the official `Transport` computes
  `mu` for a fixed sequence length of 1024 at every resolution); target `x − ε`; plain MSE (TUNA paper §3.2,
  `transport/transport.py`).
* Tuna-R / Tuna-2 (x0, JiT): `t = sigmoid(N(−0.8, 0.8²))`, noise std 2; loss `(x0_pred − x)² / max(1 − t, 0.05)²`
  (x-prediction with the velocity-loss weighting, `jit_utils.py`).
"""

import math

import torch

# Official `Transport.sample`: the linear map 256 → 0.5, 4096 → 1.15 evaluated at the fixed sequence length 1024.
VELOCITY_TIME_SHIFT_MU = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)
# Official `JiTNoiseScheduler(P_mean=-0.8, P_std=0.8, t_eps=0.05)`.
X0_TIME_MEAN, X0_TIME_STD, X0_MIN_DENOMINATOR = -0.8, 0.8, 0.05


def sample_flow_times(num: int, prediction_type: str, device=None, generator=None) -> torch.Tensor:
    """Training times of `num` images for the variant's objective."""
    normal = torch.randn(num, device=device, generator=generator)
    if prediction_type == "x0":
        return torch.sigmoid(normal * X0_TIME_STD + X0_TIME_MEAN)
    t = torch.sigmoid(normal)
    shift = math.exp(VELOCITY_TIME_SHIFT_MU)
    return 1 - shift * (1 - t) / (shift * (1 - t) + t)


def sample_understanding_times(num: int, prob: float, level: float, device=None, generator=None) -> torch.Tensor:
    """Times of the clean (understanding / edit-source) images: 1, or with probability `prob` 1 − U(0, level)."""
    noisy = torch.rand(num, device=device, generator=generator) < prob
    jitter = torch.rand(num, device=device, generator=generator) * level
    return torch.where(noisy, 1 - jitter, torch.ones_like(jitter))


def interpolate(clean: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """`x_t = t · x + (1 − t) · noise` per image (`noise` already scaled)."""
    t = times.view(-1, *([1] * (clean.dim() - 1))).to(clean.dtype)
    return t * clean + (1 - t) * noise


def flow_loss(prediction, clean, noise, times, prediction_type: str) -> torch.Tensor:
    """Mean flow loss over the given images: velocity MSE against `x − noise`, or the weighted JiT x0 loss."""
    prediction, clean, noise = prediction.float(), clean.float(), noise.float()
    if prediction_type == "velocity":
        return ((prediction - (clean - noise)) ** 2).mean()
    weights = 1.0 / (1 - times.float()).clamp(min=X0_MIN_DENOMINATOR) ** 2
    return (((prediction - clean) ** 2) * weights.view(-1, *([1] * (clean.dim() - 1)))).mean()
