"""Training objectives of TUNA (docs/architecture.md §8): flow time sampling, noising, masking, the flow losses, and
`prepare_flow_training`, which turns a collated batch into the model's inputs and flow targets.

Time convention as everywhere: t = 1 clean, t = 0 noise, `x_t = t · x + (1 − t) · noise`.

* Tuna (velocity): `t = sigmoid(N(0, 1))`, then the SD3 shift with `mu = 0.63` (the official `Transport` computes
  `mu` for a fixed sequence length of 1024 at every resolution); target `x − ε`; plain MSE (`transport/transport.py`).
* Tuna-R / Tuna-2 (x0, JiT): `t = sigmoid(N(−0.8, 0.8²))`, noise std 2; loss `(x0_pred − x)² / max(1 − t, 0.05)²`
  (x-prediction with the velocity-loss weighting, `jit_utils.py`).
"""

import math

import torch

# Official `Transport.sample`: the linear map 256 → 0.5, 4096 → 1.15 evaluated at the fixed sequence length 1024.
VELOCITY_TIME_SHIFT_MU = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)
# Official `JiTNoiseScheduler(P_mean=-0.8, P_std=0.8, t_eps=0.05)`.
X0_TIME_MEAN, X0_TIME_STD, X0_MIN_DENOMINATOR = -0.8, 0.8, 0.05
# What `prepare_flow_training` replaces in a collated batch.
CLEAN_IMAGE_KEYS = ("pixel_values", "image_latents")


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


def sample_token_masks(
    num_images: int, num_tokens: int, ratio_min: float, ratio_max: float, device=None, generator=None
) -> torch.BoolTensor:
    """Tuna-2's masked feature learning (official DeTok-style masking): per image a ratio is drawn from
    U(ratio_min, ratio_max) and that share of its tokens (none when ≤ 0, so ~70 % of images with the official range) is
    marked, `[num_images, num_tokens]`."""
    ratios = torch.empty(num_images, device=device).uniform_(ratio_min, ratio_max, generator=generator)
    num_masked = (num_tokens * ratios).long().clamp(min=0)  # int() truncation, as officially
    rank = torch.rand(num_images, num_tokens, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < num_masked[:, None]


def interpolate(clean: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """`x_t = t · x + (1 − t) · noise` per image (`noise` already scaled)."""
    t = times.view(-1, *([1] * (clean.dim() - 1))).to(clean.dtype)
    return t * clean + (1 - t) * noise


def flow_targets(clean: torch.Tensor, noise: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the flow head regresses (float32): the velocity `x − noise`, or the clean image x0."""
    if prediction_type == "velocity":
        return clean.float() - noise.float()
    return clean.float()


def flow_loss(prediction: torch.Tensor, targets: torch.Tensor, times: torch.Tensor, prediction_type: str):
    """Mean flow loss over the given images: velocity MSE, or the JiT x0 loss weighted by `1 / max(1 − t, 0.05)²`."""
    squared_error = (prediction.float() - targets.float()) ** 2
    if prediction_type == "velocity":
        return squared_error.mean()
    weights = 1.0 / (1 - times.float()).clamp(min=X0_MIN_DENOMINATOR) ** 2
    return (squared_error * weights.view(-1, *([1] * (targets.dim() - 1)))).mean()


def prepare_flow_training(
    model,
    batch: dict,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> dict:
    """A collated batch (`tuna_hf.data.TunaDataCollator`) → the keyword arguments of
    [`TunaForUnifiedMultimodal.forward`] with the flow targets, as the official trainer prepares them:

    * the clean images go to the flow space (Tuna: a VAE posterior sample of `pixel_values`, run here, outside the
      model's forward; precomputed `image_latents` are taken as they are);
    * the generation targets (`generation_targets`) are noised to sampled flow times with fresh noise of std
      `config.noise_scale`; their `flow_labels` are the velocity `x − noise` (Tuna) or the clean image (x0);
    * the other images are inputs at t = 1: understanding images, with probability `config.understanding_noise_prob`,
      at 1 − U(0, `understanding_noise_level`) instead (official `mmu_noise_prob`), edit sources always clean;
    * in training mode, with a mask token (Tuna-2), `bool_masked_pos` marks the visual tokens to mask.

    The draws use the global RNG in this order (VAE sample, understanding times, flow times, noise, masks), so a seeded
    run is reproducible. `timesteps` (`[num_images]`, or one for all) and `noise` (the clean images' shape) replace
    the draws. Call it where the model's forward runs, under the same autocast with mixed precision (the VAE encodes
    there); under FSDP give Tuna precomputed `image_latents` (its VAE is sharded with the model).

    Args:
        model ([`TunaForUnifiedMultimodal`]): the (unwrapped) model being trained.
        batch (`dict`): `input_ids`, `attention_mask`, `labels`, `pixel_values` or `image_latents` (every image of the
            batch in span order) and `generation_targets` (`[num_images]` bool); a batch without images is returned
            as it is.
        timesteps (`torch.Tensor`, *optional*): the flow time of every image instead of sampled ones.
        noise (`torch.Tensor`, *optional*): the (already scaled) noise instead of `noise_scale · N(0, 1)`.
    """
    if "generation_targets" not in batch:
        return batch
    config = model.config
    pixel_values, latents = batch.get("pixel_values"), batch.get("image_latents")
    if (pixel_values is None) == (latents is None):
        raise ValueError("A batch with `generation_targets` needs its images as `pixel_values` or `image_latents`.")
    clean = model.model.encode_images(pixel_values) if pixel_values is not None else latents
    targets = torch.as_tensor(batch["generation_targets"], dtype=torch.bool, device=clean.device).reshape(-1)
    if targets.numel() != clean.shape[0]:
        raise ValueError(f"`generation_targets` needs one flag per image ({clean.shape[0]}), got {targets.numel()}.")
    if timesteps is None:
        timesteps = sample_understanding_times(
            clean.shape[0], config.understanding_noise_prob, config.understanding_noise_level, clean.device
        )
        if config.understanding_noise_prob > 0:
            timesteps[_edit_sources(model, batch["input_ids"], targets)] = 1.0
        timesteps[targets] = sample_flow_times(int(targets.sum()), config.prediction_type, clean.device)
    timesteps = model.model._check_timesteps(timesteps, clean)
    if noise is None:
        noise = torch.randn_like(clean) * config.noise_scale
    if noise.shape != clean.shape:
        raise ValueError(f"`noise` must have the images' shape {tuple(clean.shape)}, got {tuple(noise.shape)}.")
    inputs = {key: value for key, value in batch.items() if key not in CLEAN_IMAGE_KEYS}
    inputs.update(
        image_latents=interpolate(clean, noise, timesteps),
        timesteps=timesteps,
        flow_labels=flow_targets(clean[targets], noise[targets], config.prediction_type),
        generation_targets=targets,
    )
    if model.training and config.use_mask_token:
        frames, height, width = model.model.token_grid(clean)
        inputs["bool_masked_pos"] = sample_token_masks(
            clean.shape[0], frames * height * width, config.mask_ratio_min, config.mask_ratio_max, clean.device
        )
    return inputs


def _edit_sources(model, input_ids: torch.LongTensor, targets: torch.BoolTensor) -> torch.BoolTensor:
    """The images that are not targets but share their sample with one: the sources of edits."""
    rows = model.model.image_spans(input_ids).image_rows()
    if rows.numel() != targets.numel():
        raise ValueError(f"`input_ids` hold {rows.numel()} image spans for {targets.numel()} images.")
    rows_with_targets = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=targets.device)
    rows_with_targets[rows[targets]] = True
    return ~targets & rows_with_targets[rows]
