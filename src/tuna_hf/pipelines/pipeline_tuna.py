"""Text-to-image (all variants) and text-to-video (Tuna) with TUNA."""

import threading
import weakref
from collections.abc import Callable

import torch
from diffusers.utils import logging

from ..scheduling_tuna import LEGACY_GUIDANCE_KEYS, call_sigma, is_integer, scheduler_model_output
from .base import OUTPUT_TYPES, TunaBasePipeline
from .pipeline_output import TunaPipelineOutput, TunaVideoPipelineOutput
from .prompt_cache import TunaPromptCache, TunaPromptRows

logger = logging.get_logger(__name__)


# What the call running on this thread shows through a pipeline's diffusers properties (`guidance_scale`,
# `num_timesteps`, `interrupt`, which callbacks read and set): per pipeline and per thread, so that one pipeline serves
# many threads. The loop itself works on locals.
_CALLS = threading.local()


def _call_state(pipeline: "TunaPipeline") -> dict:
    if not hasattr(_CALLS, "states"):
        _CALLS.states = weakref.WeakKeyDictionary()
    return _CALLS.states.setdefault(pipeline, {})


# The negative prompt of the official text-to-image predict config (`configs/predict/t2i.yaml`). Pass it as
# `negative_prompt` to reproduce the official runs; the official pipeline itself uses empty text when none is given.
OFFICIAL_T2I_NEGATIVE_PROMPT = (
    "ugly, oversaturated, distorted, deformed, disfigured, low quality, worst quality, blurry, noisy, unrealistic, "
    "pixelated, overexposed, harsh shadows, washed out, dull colors, unnatural contrast, bad lighting, "
    "uneven lighting, unnatural reflections, color banding, unrealistic textures, poor shading, fake details, "
    "plastic skin, waxy skin, unrealistic skin tone, color bleeding, jpeg artifacts, watermark, frame border, "
    "compression artifacts, low-res, low resolution, poor composition, off-centered, messy background, cluttered, "
    "cropped head, cut-off body, wrong perspective, out of frame, bad framing, tilted horizon, unnatural pose, "
    "broken limbs, bad anatomy, bad proportions, extra limbs, missing limbs, fused fingers, extra fingers, "
    "twisted arms, stiff pose, awkward expression, asymmetrical eyes, mismatched eyes, lopsided face, "
    "disfigured mouth, bad hands, poorly drawn hands, poorly drawn face, uncanny face, creepy smile, unnatural gaze, "
    "doll-like face, distorted face, mutated body, duplicated parts, multiple heads, extra body parts, "
    "text artifacts, signature, logo, cartoonish, 3d render, cgi, unreal engine, low depth, flat lighting, "
    "wrong focus, out of focus, motion blur, vignette, HDR effect, oversharpened, bad exposure, grainy, "
    "bad color balance, unrealistic highlights, poor white balance, low dynamic range"
)


class TunaPipeline(TunaBasePipeline):
    r"""
    Text-to-image with any TUNA variant, text-to-video with Tuna (Wan 2.2 VAE).

    Each row is the official generation layout `<|im_start|> prompt <|vision_start|> [t] [image tokens]` (no chat
    template), the unconditional rows use `negative_prompt`. With `use_prompt_cache=True` (default) the prompt is run
    once and only the image span at every step ([`TunaPromptCache`]). The components and sampling settings are those
    of [`TunaBasePipeline`].

    Example:
    ```py
    >>> import tuna_hf  # registers the classes with diffusers
    >>> from tuna_hf import TunaPipeline

    >>> pipe = TunaPipeline.from_pretrained("path/or/repo", dtype=torch.bfloat16)
    >>> image = pipe("a red circle at the top left", num_inference_steps=50).images[0]
    ```
    """

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the call running on this thread."""
        return _call_state(self)["guidance_scale"]

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guides(self.guidance_scale)

    @staticmethod
    def guides(guidance_scale: float) -> bool:
        """Whether `guidance_scale` needs the unconditional rows. The official samplers guide whenever the scale is
        positive (`if guidance_scale > 0.0`), so 0 < g < 1 extrapolates towards the unconditional prediction; g = 1
        is the conditional prediction alone, as g = 0."""
        return guidance_scale > 0 and guidance_scale != 1

    def _start_call(self, guidance_scale: float | None, default: float, negative_prompt) -> float:
        """This call's guidance scale (default `default`), checked and shown by `guidance_scale`."""
        guidance_scale = self._check_guidance_scale(
            "guidance_scale", default if guidance_scale is None else guidance_scale
        )
        if negative_prompt and not self.guides(guidance_scale):
            logger.warning(f"`negative_prompt` is not used: guidance_scale={guidance_scale} does not guide.")
        _call_state(self).update(guidance_scale=guidance_scale, interrupt=False, num_timesteps=None)
        return guidance_scale

    def guidance_scale_at(self, flow_time: float, guidance_scale: float) -> float:
        """`guidance_scale` inside `guidance_interval`, 1 (the conditional prediction) outside it."""
        low, high = self.config.guidance_interval
        return guidance_scale if flow_time < high and (low == 0 or flow_time > low) else 1.0

    @property
    def num_timesteps(self) -> int:
        """The model calls of the call running on this thread."""
        return _call_state(self)["num_timesteps"]

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a callback to skip the rest of this thread's call's steps."""
        return _call_state(self).get("interrupt", False)

    @property
    def _interrupt(self) -> bool:
        return self.interrupt

    @_interrupt.setter
    def _interrupt(self, value: bool):
        _call_state(self)["interrupt"] = bool(value)

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        height: int,
        width: int,
        num_images_per_prompt: int,
        latents: torch.Tensor | None,
        output_type: str,
        callback_inputs: list[str] | None,
        num_frames: int = 1,
        prompt_rows: TunaPromptRows | None = None,
        prompt_cache: TunaPromptCache | None = None,
        use_prompt_cache: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1,
    ) -> list[str] | None:
        """Checks the call's arguments (an encoded prompt's consistency with this call too); returns the prompts as a
        list (None for an encoded prompt)."""
        stale = sorted(set(LEGACY_GUIDANCE_KEYS) & set(self.scheduler.config))
        if stale:
            raise ValueError(
                f"The scheduler's config holds {stale}: guidance settings are the pipeline's, pass them as "
                f"`TunaPipeline.from_pipe(pipe, scheduler=..., {stale[0]}=...)`."
            )
        if prompt_rows is None:
            if prompt_cache is not None:
                raise ValueError("`prompt_cache` belongs to the `prompt_rows` it was filled from: pass both.")
            prompts = self._check_prompts("prompt", prompt)
            if negative_prompt is not None:
                self._check_prompts("negative_prompt", negative_prompt, len(prompts))
        else:
            if prompt is not None or negative_prompt is not None:
                raise ValueError("Pass either `prompt` (and `negative_prompt`) or an encoded `prompt_rows`, not both.")
            if prompt_rows.guided != self.do_classifier_free_guidance:
                raise ValueError(
                    f"`prompt_rows` were encoded {'with' if prompt_rows.guided else 'without'} unconditional rows, "
                    f"but guidance_scale={self.guidance_scale} {'does not guide' if prompt_rows.guided else 'guides'}."
                )
            if prompt_cache is not None and not use_prompt_cache:
                raise ValueError("A `prompt_cache` was given with `use_prompt_cache=False`.")
            prompts = None
        pixels = self.transformer.config.pixels_per_token
        for name, value in (("height", height), ("width", width)):
            if not is_integer(value) or value <= 0 or value % pixels:
                raise ValueError(f"`{name}` must be a positive multiple of {pixels}, got {value!r}.")
        if not is_integer(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")
        if not is_integer(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer ≥ 1, got {num_inference_steps!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if latents is not None and not torch.is_floating_point(latents):
            raise TypeError(f"`latents` must be a floating point tensor, got {latents.dtype}.")
        if latents is not None and not torch.isfinite(latents).all():
            raise ValueError("`latents` holds NaN or infinite values.")
        generators = generator if isinstance(generator, (list, tuple)) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise TypeError(f"`generator` must be a `torch.Generator` or a list of them, got {generator!r}.")
        unknown = set(callback_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}, "
                f"got {sorted(unknown)}."
            )
        frames = self.transformer.config.frames_per_latent_frame
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % frames:
            raise ValueError(f"`num_frames` must be 1 + {frames}·k for this model, got {num_frames}.")
        if num_frames > 1 and self.transformer.config.tuna_variant != "tuna":
            raise ValueError(
                f"Text-to-video needs the Tuna variant (Wan 2.2 VAE); this is {self.transformer.config.tuna_variant}."
            )
        return prompts

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 1,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        use_prompt_cache: bool = True,
    ) -> tuple[TunaPromptRows, TunaPromptCache | None]:
        """
        The rows of `prompt` in the official layout and, with `use_prompt_cache`, their prompts run once.

        Args:
            prompt (`str` or `list[str]`): what to generate.
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional rows' text; empty text when not
                given, as in the official `prepare_gen_input`.
            height, width (`int`, *optional*): the image size; default the processor's `size`.
            num_frames (`int`, defaults to 1): video frames (1 + 4k, Tuna only).
            num_images_per_prompt (`int`, defaults to 1): rows per prompt.
            do_classifier_free_guidance (`bool`, defaults to True): add the unconditional rows.
            use_prompt_cache (`bool`, defaults to True): also fill the [`TunaPromptCache`].

        Returns `(prompt_rows, prompt_cache or None)`, which `__call__` takes as `prompt_rows=` / `prompt_cache=`.
        """
        height, width = self._default_size(height, width)
        prompts = self._check_prompts("prompt", prompt)
        prompts, negatives = self._texts_per_image(
            prompts, negative_prompt or "", num_images_per_prompt, do_classifier_free_guidance
        )
        inputs = self.processor.build_generation_inputs(
            prompts, negatives, height=height, width=width, num_frames=num_frames, padding_side="left"
        )
        span_length = self.processor.num_image_tokens(height, width, num_frames=num_frames)
        rows = self._prompt_rows(inputs, span_length, guided=negatives is not None)
        return rows, self.prefill_prompt_cache(rows) if use_prompt_cache else None

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
        prompt_rows: TunaPromptRows | None = None,
        prompt_cache: TunaPromptCache | None = None,
        attention_kwargs: dict | None = None,
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
            guidance_scale (`float`, *optional*): classifier-free guidance; default the pipeline's `guidance_scale`
                (`video_guidance_scale` for videos), the variant's official default unless the repository says
                otherwise. As in the official samplers, any positive scale guides (`uncond + g · (cond − uncond)`, so
                0 < g < 1 leans towards the negative prompt); 0 and 1 give the conditional prediction alone.
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
            prompt_rows ([`TunaPromptRows`], *optional*): an encoded prompt ([`~TunaPipeline.encode_prompt`]) instead
                of `prompt`; `num_images_per_prompt` is then the rows'.
            prompt_cache ([`TunaPromptCache`], *optional*): the cache filled for `prompt_rows`; each step crops it
                back, so it serves the next call too.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales the transformer's LoRA adapters for this
                call, as in diffusers' pipelines (0: the model without them).
            callback_on_step_end (`Callable`, *optional*): called after every model call as
                `callback_on_step_end(pipe, i, t, {name: tensor})`; may return a new `"latents"`.
            callback_on_step_end_tensor_inputs (`list[str]`): the tensors passed to the callback.
        """
        # 1. Check inputs; this call's guidance
        height, width = self._default_size(height, width)
        video = num_frames > 1
        default_guidance = self.config.video_guidance_scale if video else self.config.guidance_scale
        guidance_scale = self._start_call(guidance_scale, default_guidance, negative_prompt)
        do_classifier_free_guidance = self.guides(guidance_scale)
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
            prompt_rows=prompt_rows,
            prompt_cache=prompt_cache,
            use_prompt_cache=use_prompt_cache,
            generator=generator,
            num_inference_steps=num_inference_steps,
        )
        height, width = int(height), int(width)  # numpy integers too
        num_images_per_prompt, num_inference_steps = int(num_images_per_prompt), int(num_inference_steps)
        device, dtype = self._execution_device, self.transformer.dtype
        config = self.transformer.config
        prediction_type = config.prediction_type
        shape = (
            len(prompts) * num_images_per_prompt if prompt_rows is None else prompt_rows.batch_size,
            config.latent_channels,
            1 + (num_frames - 1) // config.frames_per_latent_frame,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if prompt_rows is None:
            span_length = self.processor.num_image_tokens(height, width, num_frames=num_frames)
            rows = shape[0] * (2 if do_classifier_free_guidance else 1)
            self._check_memory(rows, span_length + 2, shape[0], shape[1:])

        # 2.–5. under this call's LoRA scale (`attention_kwargs`), if the transformer has adapters
        with self.lora_scale(attention_kwargs):
            # 2. Encode the prompt: the rows of the official layout and, with prompt caching, their prefix run once
            if prompt_rows is None:
                prompt_rows, prompt_cache = self.encode_prompt(
                    prompts,
                    negative_prompt,
                    height,
                    width,
                    num_frames,
                    num_images_per_prompt,
                    do_classifier_free_guidance,
                    use_prompt_cache,
                )
            elif use_prompt_cache and prompt_cache is None:
                prompt_cache = self.prefill_prompt_cache(prompt_rows)

            # 3. Prepare latents
            latents = self.prepare_latents(shape, generator, latents)

            # 4. Prepare timesteps, on a scheduler of this call's own (the loop's state stays out of the shared one)
            scheduler = self.scheduler.from_config(self.scheduler.config)
            image_seq_len = self.processor.num_image_tokens(height, width) - 1
            timesteps = self.prepare_timesteps(scheduler, num_inference_steps, image_seq_len, device, dtype)
            _call_state(self)["num_timesteps"] = len(timesteps)

            # 5. Denoising loop. The sample stays in float32 (the official Tuna sampler does so too); CFG rows are
            # `[conditional; unconditional]`, guided on the model's prediction.
            with self.progress_bar(total=-(-len(timesteps) // scheduler.order)) as progress_bar:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    sigma = call_sigma(scheduler, i, t)
                    flow_time = 1 - sigma  # TUNA's time: t = 1 is clean
                    latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
                    latent_model_input = latent_model_input.to(dtype)
                    timestep = flow_time.to(dtype).expand(latent_model_input.shape[0])
                    if prompt_cache is not None:  # only the image spans, on top of the cached prompts
                        with prompt_cache.step():
                            noise_pred = self.transformer(
                                input_ids=prompt_cache.input_ids,
                                attention_mask=prompt_cache.attention_mask,
                                position_ids=prompt_cache.position_ids,
                                image_latents=latent_model_input,
                                timesteps=timestep,
                                past_key_values=prompt_cache.decoder_cache,
                                flow_head_past_key_values=prompt_cache.flow_head_cache,
                                use_cache=True,
                                logits_to_keep=1,
                            ).flow_prediction
                    else:  # the whole rows, as the official sampler
                        noise_pred = self.transformer(
                            input_ids=prompt_rows.input_ids,
                            attention_mask=prompt_rows.attention_mask,
                            position_ids=prompt_rows.position_ids,
                            image_latents=prompt_rows.images_with(latent_model_input),
                            timesteps=prompt_rows.timesteps_with(timestep),
                            logits_to_keep=1,
                        ).flow_prediction
                        noise_pred = prompt_rows.target_prediction(noise_pred)
                    noise_pred = noise_pred.float()
                    if do_classifier_free_guidance:
                        noise_pred_cond, noise_pred_uncond = noise_pred.chunk(2)
                        scale = self.guidance_scale_at(float(flow_time), guidance_scale)
                        noise_pred = noise_pred_uncond + scale * (noise_pred_cond - noise_pred_uncond)

                    prediction = scheduler_model_output(scheduler, noise_pred, latents, float(sigma), prediction_type)
                    latents = scheduler.step(prediction, t, latents, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        callback_kwargs = {}
                        for name in callback_on_step_end_tensor_inputs:
                            callback_kwargs[name] = locals()[name]
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        latents = callback_outputs.pop("latents", latents)
                    if i == len(timesteps) - 1 or (i + 1) % scheduler.order == 0:
                        progress_bar.update()

        # 6. Decode
        output = self.decode(latents, output_type, video=video)

        # 7. Offload all models
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return TunaVideoPipelineOutput(frames=output) if video else TunaPipelineOutput(images=output)
