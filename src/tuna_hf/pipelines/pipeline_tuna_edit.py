"""Instruction-based image editing with TUNA."""

from collections.abc import Callable

import PIL.Image
import torch
from transformers.image_utils import ImageInput, make_flat_list_of_images

from .base import TunaBasePipeline
from .pipeline_output import TunaPipelineOutput
from .prompt_cache import TunaPromptCache


class TunaEditPipeline(TunaBasePipeline):
    r"""
    Image editing: each row is the official layout `<|im_start|> <|vision_start|> [1] [source tokens]
    <|vision_end|> instruction <|vision_start|> [t] [target tokens]`. The source enters clean, at t = 1, in both the
    conditional and the unconditional row (the guidance is on the text only); the target is sampled at the source's
    size.

    Example:
    ```py
    >>> from tuna_hf import TunaEditPipeline, TunaPipeline

    >>> pipe = TunaPipeline.from_pretrained("path/or/repo")
    >>> edit = TunaEditPipeline.from_pipe(pipe)
    >>> edited = edit(image, "make it blue").images[0]
    ```
    """

    def prepare_image_latents(self, image, image_latents, height, width, batch_size, generator) -> torch.Tensor:
        """The source images in the flow space, one per prompt: Tuna's VAE posterior sample (official), or pixels."""
        if image_latents is not None:
            config = self.transformer.config
            expected = (config.latent_channels, 1, height // self.vae_scale_factor, width // self.vae_scale_factor)
            if image_latents.dim() != 5 or tuple(image_latents.shape[1:]) != expected:
                raise ValueError(
                    f"`image_latents` must be [num_images, {', '.join(map(str, expected))}], "
                    f"got {tuple(image_latents.shape)}."
                )
            sources = image_latents.to(self._execution_device, self.transformer.dtype)
        else:
            pixels = self.processor.image_processor(image, height=height, width=width, return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(self._execution_device)
            sources = self.transformer.model.encode_images(pixel_values, generator=generator)
        if sources.shape[0] not in (1, batch_size):
            raise ValueError(f"Got {sources.shape[0]} source images for {batch_size} prompts.")
        return sources.expand(batch_size, *sources.shape[1:])

    def encode_prompt(
        self,
        prompt: list[str],
        negative_prompt: str | list[str] | None,
        source_latents: torch.Tensor,
        height: int,
        width: int,
        num_images_per_prompt: int = 1,
        use_prompt_cache: bool = True,
    ) -> TunaPromptCache:
        """Rows (`num_images_per_prompt` per instruction, then the unconditional rows) with their source image."""
        negative = self.config.edit_negative_prompt if negative_prompt is None else negative_prompt
        prompts, negatives = self._texts_per_image(prompt, negative, num_images_per_prompt)
        sources = source_latents.repeat_interleave(num_images_per_prompt, dim=0)
        if negatives is not None:
            sources = torch.cat([sources, sources])
        inputs = self.processor.build_edit_inputs(prompts, negatives, height=height, width=width, padding_side="left")
        span_length = self.processor.num_image_tokens(height, width)
        input_ids, attention_mask = self._rows(inputs, span_length)
        return TunaPromptCache(
            self.transformer, input_ids, attention_mask, span_length, prompt_images=sources, enabled=use_prompt_cache
        )

    def _source_size(self, image: ImageInput | None, image_latents: torch.Tensor | None) -> tuple[int, int]:
        """The source's size, rounded down to the model's multiple of 16 pixels."""
        if image_latents is not None:
            height, width = (side * self.vae_scale_factor for side in image_latents.shape[-2:])
        else:
            first = make_flat_list_of_images(image)[0]
            width, height = first.size if isinstance(first, PIL.Image.Image) else (first.shape[-1], first.shape[-2])
        step = self.transformer.config.pixels_per_token
        return height // step * step, width // step * step

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        use_prompt_cache: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> TunaPipelineOutput | tuple:
        r"""
        Args:
            image (PIL image, `np.ndarray`, `torch.Tensor`, or a list): the source image(s), one per prompt or one
                for all; converted by the processor's image processor.
            prompt (`str` or `list[str]`): the editing instruction(s).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional rows' text; default the
                repository's `edit_negative_prompt` (`OFFICIAL_EDIT_NEGATIVE_PROMPT` unless it says otherwise).
            image_latents (`torch.Tensor` `[B, C, 1, h, w]`, *optional*): the source already in the flow space
                (e.g. a cached VAE sample), instead of `image`.
            height, width (`int`, *optional*): the output (and source) size; default the source's size rounded down
                to a multiple of 16.
            The other arguments are those of [`TunaPipeline.__call__`]; `guidance_scale` defaults to the scheduler's
            `edit_guidance_scale`.
        """
        if (image is None) == (image_latents is None):
            raise ValueError("Pass exactly one of `image` and `image_latents`.")
        source_height, source_width = self._source_size(image, image_latents)
        height, width = height or source_height, width or source_width
        prompts = self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self._set_guidance_scale(guidance_scale, self.scheduler.config.edit_guidance_scale, negative_prompt)
        self._interrupt = False

        sources = self.prepare_image_latents(image, image_latents, height, width, len(prompts), generator)
        prompt_cache = self.encode_prompt(
            prompts, negative_prompt, sources, height, width, num_images_per_prompt, use_prompt_cache
        )
        shape = (len(prompts) * num_images_per_prompt, *sources.shape[1:])
        latents = self.prepare_latents(shape, generator, latents)
        latents = self._denoise(
            prompt_cache, latents, num_inference_steps, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        output = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return TunaPipelineOutput(images=output)
