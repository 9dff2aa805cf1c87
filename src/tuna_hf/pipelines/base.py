"""What the TUNA pipelines share: components, Hub download, the denoising loop, decoding."""

import os

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download

from ..modeling_tuna import TunaForUnifiedMultimodal
from ..processing_tuna import TunaProcessor
from ..scheduling_tuna import TunaFlowMatchScheduler
from ..wan_vae import decode_wan_latents
from .lora import TunaLoraLoaderMixin
from .prompt_cache import TunaPromptCache

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
COMPONENT_NAMES = ("transformer", "processor", "scheduler")
# The official default negative prompt for editing (`tuna/models/misc.py`, also `configs/predict/edit.yaml`), which
# the official `prepare_gen_input_edit` uses when no negative prompt is given.
OFFICIAL_EDIT_NEGATIVE_PROMPT = (
    "identity changed, different person, face altered, different facial features, lost subject, missing subject, "
    "replaced subject, drastic pose change, broken anatomy, extra limbs, missing limbs, distorted body, deformed face, "
    "hallucinated details, removed subject details, inconsistent lighting, mismatched style, oversaturated edit, "
    "unintended color shift, blurry, watermark, jpeg artifacts, text artifacts, low quality, worst quality, "
    "bad composition"
)
# Sequence tokens that follow the target span in the official layout: `<|vision_end|> <|im_end|>`.
TOKENS_AFTER_TARGET_SPAN = 2


class TunaBasePipeline(DiffusionPipeline, TunaLoraLoaderMixin):
    r"""
    Components: `transformer` ([`TunaForUnifiedMultimodal`], which holds Tuna's Wan 2.2 VAE as `transformer.model.vae`),
    `processor` ([`TunaProcessor`]) and `scheduler` ([`TunaFlowMatchScheduler`]).

    `edit_negative_prompt` (stored in `model_index.json`, shared by both pipelines of a repository): the text of the
    unconditional rows when [`TunaEditPipeline`] gets no `negative_prompt`. The official one by default; a model
    trained with empty instructions as its unconditional case (caption dropout, as `examples/train.py`) sets `""`.
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: TunaForUnifiedMultimodal,
        processor: TunaProcessor,
        scheduler: TunaFlowMatchScheduler,
        edit_negative_prompt: str = OFFICIAL_EDIT_NEGATIVE_PROMPT,
    ):
        super().__init__()
        if not isinstance(edit_negative_prompt, str):
            raise TypeError(f"`edit_negative_prompt` must be a string, got {edit_negative_prompt!r}.")
        self.register_modules(transformer=transformer, processor=processor, scheduler=scheduler)
        self.register_to_config(edit_negative_prompt=edit_negative_prompt)

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str | os.PathLike:
        """
        Fetch a pipeline repository from the Hub. Diffusers' own `download` rejects components from libraries it does
        not know (`tuna_hf`), so the repository is fetched as a whole (hf-ecosystem §3.1, pitfall 3).
        """
        return snapshot_download(
            pretrained_model_name,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            local_files_only=kwargs.get("local_files_only") or False,
            force_download=kwargs.get("force_download", False),
        )

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> "TunaBasePipeline":
        """
        A pipeline of this class sharing `pipeline`'s components and `edit_negative_prompt` (`kwargs` replace
        some). Unlike diffusers' `from_pipe`, which casts the shared modules to `dtype` (float32 by default) in place,
        nothing is cast.
        """
        unknown = set(kwargs) - set(COMPONENT_NAMES) - {"edit_negative_prompt"}
        if unknown:
            raise TypeError(
                f"`from_pipe` takes only components {COMPONENT_NAMES} and `edit_negative_prompt`, got {sorted(unknown)}."
            )
        components = {name: kwargs.get(name, getattr(pipeline, name)) for name in COMPONENT_NAMES}
        default_negative = pipeline.config.get("edit_negative_prompt", OFFICIAL_EDIT_NEGATIVE_PROMPT)
        return cls(**components, edit_negative_prompt=kwargs.get("edit_negative_prompt", default_negative))

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        # The official samplers guide whenever the scale is positive (`if guidance_scale > 0.0`), so 0 < g < 1
        # extrapolates towards the unconditional prediction; g = 1 is the conditional prediction, skipped here.
        return self._guidance_scale > 0 and self._guidance_scale != 1

    def _set_guidance_scale(self, guidance_scale: float | None, default: float, negative_prompt) -> None:
        value = default if guidance_scale is None else guidance_scale
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`guidance_scale` must be a number ≥ 0 (0 or 1: no guidance), got {value!r}.")
        self._guidance_scale = float(value)
        if negative_prompt and not self.do_classifier_free_guidance:
            logger.warning(f"`negative_prompt` is not used: guidance_scale={value} does not guide.")

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per flow-space pixel: 16 for Tuna's Wan 2.2 latents, 1 in pixel space."""
        config = self.transformer.config
        return config.pixels_per_token // config.patch_size

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.processor.image_processor.size
        return (height or size["height"], width or size["width"])

    def check_inputs(
        self, prompt, negative_prompt, height, width, num_images_per_prompt, latents, output_type, callback_inputs
    ) -> list[str]:
        """Checks the arguments every TUNA pipeline shares; returns the prompts as a list."""
        prompts = self._check_prompts("prompt", prompt)
        if negative_prompt is not None:
            self._check_prompts("negative_prompt", negative_prompt, len(prompts))
        step = self.transformer.config.pixels_per_token
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % step:
                raise ValueError(f"`{name}` must be a positive multiple of {step}, got {value}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if latents is not None and not torch.is_floating_point(latents):
            raise TypeError(f"`latents` must be a floating point tensor, got {latents.dtype}.")
        unknown = set(callback_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}, got {sorted(unknown)}."
            )
        return prompts

    @staticmethod
    def _check_prompts(name: str, prompts, batch_size: int | None = None) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`{name}` must be a non-empty string or list of strings, got {prompts!r}.")
        if batch_size is not None and len(prompts) not in (1, batch_size):
            raise ValueError(f"`{name}` has {len(prompts)} entries for a batch of {batch_size}.")
        return list(prompts) * (batch_size // len(prompts) if batch_size else 1)

    def _texts_per_image(self, prompts: list[str], negative_prompt, num_images_per_prompt: int):
        """Each prompt repeated for its images; with CFG also the negative prompts (one, or one per prompt), likewise.
        Returns `(prompts, negatives or None)`."""

        def per_image(texts: list[str]) -> list[str]:
            return [text for text in texts for _ in range(num_images_per_prompt)]

        if not self.do_classifier_free_guidance:
            return per_image(prompts), None
        return per_image(prompts), per_image(self._check_prompts("negative_prompt", negative_prompt, len(prompts)))

    def _rows(self, inputs, span_length: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Left-padded rows cut right after the target span, checked against the decoder's context."""
        input_ids = inputs["input_ids"][:, :-TOKENS_AFTER_TARGET_SPAN].to(self._execution_device)
        attention_mask = inputs["attention_mask"][:, :-TOKENS_AFTER_TARGET_SPAN].to(self._execution_device)
        context = self.transformer.config.text_config.max_position_embeddings
        longest = int(attention_mask.sum(-1).max())
        if longest > context:
            raise ValueError(
                f"`prompt` is too long: the sequence needs {longest} tokens ({span_length} for the image span), "
                f"the model's context is {context} tokens."
            )
        return input_ids, attention_mask

    def prepare_latents(self, shape, generator, latents=None) -> torch.Tensor:
        """Initial sample `[B, C, T, h, w]`: `latents` as given, else `noise_scale · N(0, 1)` (float32)."""
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"`latents` must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
            return latents.to(device=self._execution_device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for {shape[0]} images.")
        noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)
        return noise * self.scheduler.init_noise_sigma

    def _denoise(
        self,
        prompt_cache: TunaPromptCache,
        latents: torch.Tensor,
        num_inference_steps: int,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
    ) -> torch.Tensor:
        """The sampling loop. The sample stays in float32 (the official Tuna sampler does so too); CFG rows are
        `[conditional; unconditional]`, guided as `uncond + g · (cond − uncond)` on the model's prediction."""
        dtype = self.transformer.dtype
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device, grid_dtype=dtype)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                rows = torch.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                prediction = prompt_cache.predict(rows.to(dtype), self.scheduler.flow_time(t).to(dtype)).float()
                if self.do_classifier_free_guidance:
                    cond, uncond = prediction.chunk(2)
                    prediction = uncond + self.scheduler.guidance_scale_at(t, self.guidance_scale) * (cond - uncond)
                latents = self.scheduler.step(prediction, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    def decode(self, latents: torch.Tensor, output_type: str, video: bool = False):
        """
        The final sample `[B, C, T, h, w]` → images (or videos): PIL, or float32 in [0, 1] (`"np"`: `[B, (F,) H, W, 3]`,
        `"pt"`: `[B, 3, (F,) H, W]`); `"latent"` returns the sample as is.
        """
        if output_type == "latent":
            return latents
        config = self.transformer.config
        if config.visual_encoder == "vae_siglip":
            pixels = decode_wan_latents(self.transformer.model.vae, latents)
        elif config.visual_encoder == "siglip":
            # Official Tuna-R `_decode_latents`: min–max rescale of the whole batch to [-1, 1] before `denorm`.
            pixels = (latents - latents.min()) / (latents.max() - latents.min() + 1e-5) * 2.0 - 1.0
        else:
            pixels = latents
        pixels = pixels.float() if video else pixels[:, :, 0].float()
        if output_type == "pil":
            return self.processor.image_processor.postprocess(pixels, output_type="pil")
        # The official uint8 (truncated `denorm`), as diffusers' float [0, 1]: `x · 255` gives it back exactly.
        images = self.processor.image_processor.postprocess(pixels, output_type="np").astype(np.float32) / 255
        return images if output_type == "np" else torch.from_numpy(images).movedim(-1, 1)
