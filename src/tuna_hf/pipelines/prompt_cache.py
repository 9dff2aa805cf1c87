"""The prompt of a denoising call, and its cache across the denoising steps (docs/architecture.md §7).

Everything before the image being generated (the text prompt and, when editing, the clean source image at t = 1)
attends only to earlier tokens, in the decoder and in the flow head, where its AdaLN is the identity (text) or uses
t = 1 (the source). Its keys and values therefore do not depend on the sample or on t: the pipelines run it once per
call ([`TunaPromptCache`]), and each denoising step runs only the image span (timestep slot + image tokens) of every
row on top. The tokens the official layout puts after that span (`<|vision_end|>`, `<|im_end|>`, padding) are never
attended by it, so they are dropped ([`TunaPromptRows`]). Conditional and unconditional rows share one forward.
"""

import contextlib
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from ..locks import lock_for


@dataclass
class TunaPromptRows:
    """
    One call's rows in the official layout, left-padded and cut right after the span of the image being denoised.

    Args:
        input_ids (`torch.LongTensor` `[R, L]`): the rows; the last `span_length` tokens are the target span.
        attention_mask (`torch.LongTensor` `[R, L]`): 0 on the left padding. Positions count real tokens only, so
            each row sees the positions of the official right-padded layout.
        span_length (`int`): 1 timestep slot + the image tokens of the target.
        guided (`bool`): the second half of the rows are the unconditional ones (classifier-free guidance).
        prompt_images (`torch.Tensor` `[R, C, T, h, w]`, *optional*): a clean image inside each row's prompt (the
            edit source), in the flow space, at t = 1.
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    span_length: int
    guided: bool
    prompt_images: torch.Tensor | None = None

    def __post_init__(self):
        self.position_ids = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.span_length

    @property
    def batch_size(self) -> int:
        """Samples drawn from these rows: the conditional rows."""
        return self.input_ids.shape[0] // (2 if self.guided else 1)

    def images_with(self, latents: torch.Tensor) -> torch.Tensor:
        """Every image of the rows in span order: each row's prompt image (if any), then its sample from `latents`."""
        if self.prompt_images is None:
            return latents
        return torch.stack([self.prompt_images.to(latents.dtype), latents], dim=1).flatten(0, 1)

    def timesteps_with(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The flow times of `images_with`'s images: 1 for the clean prompt images."""
        if self.prompt_images is None:
            return timesteps
        return torch.stack([torch.ones_like(timesteps), timesteps], dim=1).flatten()

    def target_prediction(self, flow_prediction: torch.Tensor) -> torch.Tensor:
        """The prediction for each row's last image, the one being denoised."""
        return flow_prediction.unflatten(0, (self.input_ids.shape[0], -1))[:, -1]


@dataclass(eq=False)  # compared (and locked, `step`) by identity
class TunaPromptCache:
    """
    The rows' prompts run once: the decoder's and the flow head's key/value caches of everything before the target
    span, and what each denoising step passes with its span on top.

    Args:
        decoder_cache (`Cache`): the decoder's keys and values of the prompts.
        flow_head_cache (`Cache`): the flow head's, aligned with `decoder_cache`.
        input_ids (`torch.LongTensor` `[R, span_length]`): the target span of every row.
        attention_mask (`torch.LongTensor` `[R, L]`): the padding mask of the whole rows.
        position_ids (`torch.LongTensor` `[R, span_length]`): the positions of the target span.
    """

    decoder_cache: Cache
    flow_head_cache: Cache
    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    position_ids: torch.LongTensor

    def __post_init__(self):
        self._lay_out_as_steps_leave_it()

    def _lay_out_as_steps_leave_it(self) -> None:
        """Hold every layer's keys and values as a view of prompt + span, the way a step's crop leaves them: the first
        step then gets inputs of the same strides as every later one, so code compiled for it serves them all
        (`compile_repeated_blocks`). A step concatenates into new tensors, so the values it computes are unchanged."""
        span_length = self.input_ids.shape[1]
        for layer in (*self.decoder_cache.layers, *self.flow_head_cache.layers):
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                if tensor is None:
                    raise ValueError("`decoder_cache` and `flow_head_cache` must hold the prompts in every layer.")
                *batch, length, width = tensor.shape
                room = tensor.new_empty(*batch, length + span_length, width)
                room[..., :length, :] = tensor
                setattr(layer, name, room[..., :length, :])

    @contextlib.contextmanager
    def step(self):
        """A denoising step on this cache: the block's forward appends the span to the caches, which are cropped back
        to the prompts afterwards, even if it fails; steps of calls sharing this cache (threads) take turns."""
        with lock_for(self):
            try:
                yield self
            finally:
                self.crop()

    def crop(self) -> None:
        """Drop the span a denoising step appended: the caches hold the prompts again."""
        span_length = self.input_ids.shape[1]
        self.decoder_cache.crop(-span_length)
        self.flow_head_cache.crop(-span_length)
