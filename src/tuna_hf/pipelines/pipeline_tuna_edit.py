"""Instruction-based image editing with TUNA."""

from collections.abc import Callable

import torch
from transformers.image_utils import ImageInput, make_flat_list_of_images

from .pipeline_output import TunaPipelineOutput
from .pipeline_tuna import TunaPipeline
from .prompt_cache import TunaPromptCache, TunaPromptRows


class TunaEditPipeline(TunaPipeline):
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
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        source_latents: torch.Tensor,
        height: int,
        width: int,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        use_prompt_cache: bool = True,
    ) -> tuple[TunaPromptRows, TunaPromptCache | None]:
        """
        The rows of the instructions with their source images and, with `use_prompt_cache`, their prompts run once.

        Args:
            prompt (`str` or `list[str]`): the editing instruction(s).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional rows' text; default the pipeline's
                `edit_negative_prompt`.
            source_latents (`torch.Tensor` `[len(prompt), C, 1, h, w]`): each instruction's source in the flow space.
            height, width (`int`): the image size.
            num_images_per_prompt (`int`, defaults to 1): rows per instruction.
            do_classifier_free_guidance (`bool`, defaults to True): add the unconditional rows (same sources).
            use_prompt_cache (`bool`, defaults to True): also fill the [`TunaPromptCache`].
        """
        prompts = self._check_prompts("prompt", prompt)
        negative = self.config.edit_negative_prompt if negative_prompt is None else negative_prompt
        prompts, negatives = self._texts_per_image(
            prompts, negative, num_images_per_prompt, do_classifier_free_guidance
        )
        sources = source_latents.repeat_interleave(num_images_per_prompt, dim=0)
        if negatives is not None:
            sources = torch.cat([sources, sources])
        inputs = self.processor.build_edit_inputs(prompts, negatives, height=height, width=width, padding_side="left")
        span_length = self.processor.num_image_tokens(height, width)
        rows = self._prompt_rows(inputs, span_length, guided=negatives is not None, prompt_images=sources)
        return rows, self.prefill_prompt_cache(rows) if use_prompt_cache else None

    def _source_size(self, image: ImageInput | None, image_latents: torch.Tensor | None) -> tuple[int, int]:
        """The source's size, rounded down to the model's multiple of 16 pixels."""
        if image_latents is not None:
            height, width = (side * self.vae_scale_factor for side in image_latents.shape[-2:])
        else:
            height, width = self.processor.image_processor.image_size(make_flat_list_of_images(image)[0])
        step = self.transformer.config.pixels_per_token
        if height < step or width < step:
            raise ValueError(
                f"`image` is {height}×{width} pixels: the output size follows the source's, which must be at least "
                f"{step}×{step} pixels; pass `height` and `width` for a smaller source."
            )
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
        attention_kwargs: dict | None = None,
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
            The other arguments are those of [`TunaPipeline.__call__`]; `guidance_scale` defaults to the pipeline's
            `edit_guidance_scale`.
        """
        # 1. Check inputs; this call's guidance
        if (image is None) == (image_latents is None):
            raise ValueError("Pass exactly one of `image` and `image_latents`.")
        if isinstance(image, (list, tuple)) and not image:
            raise ValueError("`image` is an empty list: pass one source image, or one per prompt.")
        if image_latents is not None and not torch.isfinite(image_latents).all():
            raise ValueError("`image_latents` holds NaN or infinite values.")
        if height is None or width is None:
            source_height, source_width = self._source_size(image, image_latents)
            height = source_height if height is None else height
            width = source_width if width is None else width
        guidance_scale = self._start_call(guidance_scale, self.config.edit_guidance_scale, negative_prompt)
        prompts = self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
            generator=generator,
            num_inference_steps=num_inference_steps,
        )
        height, width = int(height), int(width)  # numpy integers too
        num_images_per_prompt, num_inference_steps = int(num_images_per_prompt), int(num_inference_steps)
        span_length = self.processor.num_image_tokens(height, width)
        samples = len(prompts) * num_images_per_prompt
        rows = samples * (2 if self.guides(guidance_scale) else 1)
        latent_shape = (
            self.transformer.config.latent_channels,
            1,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        self._check_memory(rows, 2 * span_length + 4, 2 * samples, latent_shape)  # rows hold the source and the target

        # 2.–7. under this call's LoRA scale (`attention_kwargs`), if the transformer has adapters
        with self.lora_scale(attention_kwargs):
            # 2. Encode the source images in the flow space
            sources = self.prepare_image_latents(image, image_latents, height, width, len(prompts), generator)

            # 3. Encode the instructions with their sources: the rows and, with prompt caching, their prefix run once
            prompt_rows, prompt_cache = self.encode_prompt(
                prompts,
                negative_prompt,
                sources,
                height,
                width,
                num_images_per_prompt,
                self.guides(guidance_scale),
                use_prompt_cache,
            )

            # 4.–7. Prepare latents and timesteps, denoise, decode and offload: text-to-image's steps on these rows
            return super().__call__(
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                latents=latents,
                output_type=output_type,
                return_dict=return_dict,
                use_prompt_cache=use_prompt_cache,
                prompt_rows=prompt_rows,
                prompt_cache=prompt_cache,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
