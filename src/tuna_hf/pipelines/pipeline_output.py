"""Outputs of the TUNA pipelines."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class TunaPipelineOutput(BaseOutput):
    """
    images (`list[PIL.Image.Image]`, `np.ndarray` `[B, H, W, 3]` or `torch.Tensor` `[B, 3, H, W]`):
        The generated or edited images (arrays are float32 in [0, 1]); with `output_type="latent"`, the final
        flow-space sample `[B, C, 1, h, w]` (normalised Wan latents for Tuna, pixels in about [-1, 1] for
        Tuna-R/Tuna-2).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class TunaVideoPipelineOutput(BaseOutput):
    """
    frames (`list[list[PIL.Image.Image]]`, `np.ndarray` `[B, F, H, W, 3]` or `torch.Tensor` `[B, 3, F, H, W]`):
        The generated videos (arrays are float32 in [0, 1]), ready for
        `diffusers.utils.export_to_video(frames[0], path, fps=16)`; with `output_type="latent"`, the final latent
        sample `[B, 48, T, h, w]`.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
