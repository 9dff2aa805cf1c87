"""Text-to-image (all variants) and text-to-video (Tuna) with TUNA."""

from collections.abc import Callable

import torch

from .base import TunaBasePipeline
from .pipeline_output import TunaPipelineOutput, TunaVideoPipelineOutput
from .prompt_cache import TunaPromptCache

# The negative prompt of the official text-to-image predict config (`configs/predict/t2i.yaml`). Pass it as
# `negative_prompt` to reproduce the official runs; the official pipeline itself uses empty text when none is given.
OFFICIAL_T2I_NEGATIVE_PROMPT = (
    "ugly, oversaturated, distorted, deformed, disfigured, low quality, worst quality, blurry, noisy, unrealistic, "
    "pixelated, overexposed, harsh shadows, washed out, dull colors, unnatural contrast, bad lighting, uneven lighting, "
    "unnatural reflections, color banding, unrealistic textures, poor shading, fake details, plastic skin, waxy skin, "
    "unrealistic skin tone, color bleeding, jpeg artifacts, watermark, frame border, compression artifacts, low-res, "
    "low resolution, poor composition, off-centered, messy background, cluttered, cropped head, cut-off body, "
    "wrong perspective, out of frame, bad framing, tilted horizon, unnatural pose, broken limbs, bad anatomy, "
    "bad proportions, extra limbs, missing limbs, fused fingers, extra fingers, twisted arms, stiff pose, "
    "awkward expression, asymmetrical eyes, mismatched eyes, lopsided face, disfigured mouth, bad hands, "
    "poorly drawn hands, poorly drawn face, uncanny face, creepy smile, unnatural gaze, doll-like face, distorted face, "
    "mutated body, duplicated parts, multiple heads, extra body parts, text artifacts, signature, logo, cartoonish, "
    "3d render, cgi, unreal engine, low depth, flat lighting, wrong focus, out of focus, motion blur, vignette, "
    "HDR effect, oversharpened, bad exposure, grainy, bad color balance, unrealistic highlights, poor white balance, "
    "low dynamic range"
)


class TunaPipeline(TunaBasePipeline):
    r"""
    Text-to-image with any TUNA variant, text-to-video with Tuna (Wan 2.2 VAE).

    Each row is the official generation layout `<|im_start|> prompt <|vision_start|> [t] [image tokens]` (no chat
    template), the unconditional rows use `negative_prompt`. With `use_prompt_cache=True` (default) the prompt is run
    once and only the image span at every step ([`TunaPromptCache`]).

    Example:
    ```py
    >>> import tuna_hf  # registers the classes with diffusers
    >>> from tuna_hf import TunaPipeline

    >>> pipe = TunaPipeline.from_pretrained("path/or/repo", dtype=torch.bfloat16)
    >>> image = pipe("a red circle at the top left", num_inference_steps=50).images[0]
    ```
    """

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        num_images_per_prompt,
        latents,
        output_type,
        callback_inputs,
        num_frames: int = 1,
    ) -> list[str]:
        prompts = super().check_inputs(
            prompt, negative_prompt, height, width, num_images_per_prompt, latents, output_type, callback_inputs
        )
        step = self.transformer.config.frames_per_latent_frame
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % step:
            raise ValueError(f"`num_frames` must be 1 + {step}·k for this model, got {num_frames}.")
        if num_frames > 1 and self.transformer.config.variant != "tuna":
            raise ValueError(
                f"Text-to-video needs the Tuna variant (Wan 2.2 VAE); this is {self.transformer.config.variant}."
            )
        return prompts

    def encode_prompt(
        self,
        prompt: list[str],
        negative_prompt: str | list[str] | None,
        height: int,
        width: int,
        num_frames: int = 1,
        num_images_per_prompt: int = 1,
        use_prompt_cache: bool = True,
    ) -> TunaPromptCache:
        """
        Build the rows (`num_images_per_prompt` per prompt; with CFG the unconditional rows follow, empty text for a
        missing negative prompt as in the official `prepare_gen_input`) and run their prompts through the model.
        """
        prompts, negatives = self._texts_per_image(prompt, negative_prompt or "", num_images_per_prompt)
        inputs = self.processor.build_generation_inputs(
            prompts, negatives, height=height, width=width, num_frames=num_frames, padding_side="left"
        )
        span_length = self.processor.num_image_tokens(height, width, num_frames=num_frames)
        input_ids, attention_mask = self._rows(inputs, span_length)
        return TunaPromptCache(self.transformer, input_ids, attention_mask, span_length, enabled=use_prompt_cache)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 1,
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
    ) -> TunaPipelineOutput | TunaVideoPipelineOutput | tuple:
        r"""
        Args:
            prompt (`str` or `list[str]`): what to generate.
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional rows' text (empty if not given).
                `OFFICIAL_T2I_NEGATIVE_PROMPT` is the official predict config's.
            height, width (`int`, *optional*): output size, multiples of 16; default the processor's `size`.
            num_frames (`int`, defaults to 1): video frames (1 + 4k, Tuna only); > 1 returns a video.
            num_inference_steps (`int`, defaults to 50): the official step count (Tuna: grid points, 49 model calls
                for 50; Tuna-R/Tuna-2: intervals, 50 calls with Euler, 99 with Heun).
            guidance_scale (`float`, *optional*): classifier-free guidance; default the scheduler's
                `guidance_scale` (`video_guidance_scale` for videos), the variant's official default. As in the
                official samplers, any positive scale guides (`uncond + g · (cond − uncond)`, so 0 < g < 1 leans
                towards the negative prompt); 0 and 1 give the conditional prediction alone.
            num_images_per_prompt (`int`, defaults to 1): samples per prompt.
            generator (`torch.Generator` or list, *optional*): for the initial noise.
            latents (`torch.Tensor` `[B, C, T, h, w]`, *optional*): the initial sample exactly as the first model
                call sees it (noise scale included).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (float in [0, 1]), or
                `"latent"` (flow space).
            return_dict (`bool`, defaults to True): return a [`TunaPipelineOutput`] (images) or
                [`TunaVideoPipelineOutput`] (videos) rather than a tuple.
            use_prompt_cache (`bool`, defaults to True): compute the prompt once per call (False recomputes it at
                every step as the official code; same result within float tolerance).
            callback_on_step_end (`Callable`, *optional*): called after every model call as
                `callback_on_step_end(pipe, i, t, {name: tensor})`; may return a new `"latents"`.
            callback_on_step_end_tensor_inputs (`list[str]`): the tensors passed to the callback.
        """
        height, width = self._default_size(height, width)
        prompts = self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
            num_frames=num_frames,
        )
        video = num_frames > 1
        defaults = self.scheduler.config
        default_guidance = defaults.video_guidance_scale if video else defaults.guidance_scale
        self._set_guidance_scale(guidance_scale, default_guidance, negative_prompt)
        self._interrupt = False

        prompt_cache = self.encode_prompt(
            prompts, negative_prompt, height, width, num_frames, num_images_per_prompt, use_prompt_cache
        )
        config = self.transformer.config
        latent_frames = 1 + (num_frames - 1) // config.frames_per_latent_frame
        shape = (
            len(prompts) * num_images_per_prompt,
            config.latent_channels,
            latent_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        latents = self.prepare_latents(shape, generator, latents)
        latents = self._denoise(
            prompt_cache, latents, num_inference_steps, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        output = self.decode(latents, output_type, video=video)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return TunaVideoPipelineOutput(frames=output) if video else TunaPipelineOutput(images=output)
