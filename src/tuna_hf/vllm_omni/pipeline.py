"""TUNA as a native vLLM-Omni diffusion pipeline: text-to-image and editing, every variant, per-request sampling.

vLLM-Omni builds [`TunaOmniPipeline`] from its `OmniDiffusionConfig` (the model on the engine's device and dtype,
its weights left uninitialised), fills the weights through [`TunaOmniPipeline.load_weights`] from the repository's
`transformer/` safetensors, and calls [`TunaOmniPipeline.forward`] with the requests its scheduler batched together.
The sampling itself is tuna-hf's own [`TunaPipeline`] and [`TunaEditPipeline`], on the same modules.
"""

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import PIL.Image
import torch
from torch import nn
from transformers.initialization import no_init_weights
from vllm_omni.diffusion.data import DiffusionOutput, OmniDiffusionConfig
from vllm_omni.diffusion.model_loader.diffusers_loader import DiffusersPipelineLoader
from vllm_omni.diffusion.request import OmniDiffusionRequest
from vllm_omni.diffusion.worker.request_batch import DiffusionRequestBatch
from vllm_omni.inputs.data import OmniDiffusionSamplingParams, OmniPromptType

from ..configuration_tuna import TunaConfig
from ..modeling_tuna import TunaForUnifiedMultimodal
from ..pipelines import TunaEditPipeline, TunaPipeline

# `TunaPipeline.__call__`'s step count, for requests that give none.
DEFAULT_STEPS = inspect.signature(TunaPipeline.__call__).parameters["num_inference_steps"].default
# Sampling parameters TUNA's text-to-image and editing have no use for, at the values that leave them unused: a request
# that sets one is refused rather than sampled without it.
UNUSED_PARAMETERS = {
    "num_frames": 1,
    "sigmas": None,
    "timesteps": None,
    "strength": None,
    "true_cfg_scale": None,
    "guidance_scale_2_provided": False,
}
# vLLM-Omni's attention backends that TUNA runs, by the diffusers name `set_attention_backend` takes.
ATTENTION_BACKENDS = {None: "native", "TORCH_SDPA": "native"}


@dataclass
class TunaRequest:
    """One vLLM-Omni request in the terms of TUNA's pipelines; `image` is the edit's source (None: text-to-image)."""

    prompt: str
    negative_prompt: str | None
    image: Any
    height: int | None
    width: int | None
    num_inference_steps: int
    guidance_scale: float | None
    num_images: int
    generator: torch.Generator | list[torch.Generator]
    latents: torch.Tensor | None
    output_type: str

    @property
    def batch_key(self) -> tuple:
        """Text-to-image requests with equal keys are sampled in one pipeline call."""
        return self.height, self.width, self.num_inference_steps, self.guidance_scale, self.output_type


def has_source_image(prompt: OmniPromptType) -> bool:
    """Whether a vLLM-Omni prompt carries an image (`multi_modal_data["image"]`, not an empty list): an edit."""
    if isinstance(prompt, str):
        return False
    image = (prompt.get("multi_modal_data") or {}).get("image")
    return image is not None and not (isinstance(image, (list, tuple)) and not image)


def source_image(prompt: OmniPromptType):
    """The edit's source in a vLLM-Omni prompt: a PIL image (a path is opened), array or tensor; None if absent."""
    if not has_source_image(prompt):
        return None
    image = prompt["multi_modal_data"]["image"]
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"`multi_modal_data['image']` must be one source image, got {len(image)}.")
        image = image[0]
    return PIL.Image.open(image) if isinstance(image, (str, os.PathLike)) else image


def request_generator(sampling: OmniDiffusionSamplingParams) -> torch.Generator | list[torch.Generator]:
    """The request's own generator: the one it gives, else a new one seeded with its `seed` (random without)."""
    if sampling.generator is not None:
        return sampling.generator
    generator = torch.Generator(device=sampling.generator_device or "cpu")
    if sampling.seed is None:
        generator.seed()
    else:
        generator.manual_seed(sampling.seed)
    return generator


def parse_request(prompt: OmniPromptType, sampling: OmniDiffusionSamplingParams, output_type: str) -> TunaRequest:
    """A request's prompt and sampling parameters as TUNA's pipelines take them; unset values keep the pipelines'
    defaults (size: the processor's, or the source's for an edit; guidance: the repository's)."""
    text = prompt if isinstance(prompt, str) else prompt.get("prompt")
    if not isinstance(text, str):
        raise ValueError(f"The request's `prompt` must be a string, got {type(text).__name__}.")
    if sampling.num_outputs_per_prompt < 1:
        raise ValueError(f"`num_outputs_per_prompt` must be ≥ 1, got {sampling.num_outputs_per_prompt}.")
    unused = sorted(name for name, value in UNUSED_PARAMETERS.items() if getattr(sampling, name) != value)
    if unused:
        raise ValueError(f"TUNA's text-to-image and editing take none of {unused}; leave them at their defaults.")
    return TunaRequest(
        prompt=text,
        negative_prompt=None if isinstance(prompt, str) else prompt.get("negative_prompt"),
        image=source_image(prompt),
        # The edit endpoint's `size="auto"` gives the source's exact size, flagged as not given: TUNA's default (the
        # source's size rounded down to its 16-pixel grid) applies then.
        height=None if sampling.height_not_provided else sampling.height,
        width=None if sampling.width_not_provided else sampling.width,
        num_inference_steps=DEFAULT_STEPS if sampling.num_inference_steps is None else sampling.num_inference_steps,
        # vLLM-Omni fills an omitted guidance scale with 1.0 (no guidance) and flags the given ones.
        guidance_scale=sampling.guidance_scale if sampling.guidance_scale_provided else None,
        num_images=sampling.num_outputs_per_prompt,
        generator=request_generator(sampling),
        latents=sampling.latents,
        output_type=sampling.output_type or output_type,
    )


def attention_backend(od_config: OmniDiffusionConfig) -> str:
    """The diffusers attention backend for the engine's configured one (`diffusion_attention_config.default`)."""
    spec = od_config.diffusion_attention_config.default
    name = spec.backend if spec is not None else None
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"`diffusion_attention_config.default.backend` must be TORCH_SDPA (or unset) for TUNA, whose attention "
            f"takes its omni mask, got {name!r}."
        )
    return ATTENTION_BACKENDS[name]


def build_transformer(repository: str, revision: str | None = None) -> TunaForUnifiedMultimodal:
    """The model of `repository/transformer` with uninitialised weights (`load_weights` fills them), in the current
    default dtype but for the modules `from_pretrained` would keep in float32 (`_keep_in_fp32_modules`)."""
    config = TunaConfig.from_pretrained(repository, subfolder="transformer", revision=revision)
    with no_init_weights():
        model = TunaForUnifiedMultimodal(config).eval()
    kept = model._get_dtype_plan(model.dtype)
    for name, module in model.named_modules():
        if any(f".{name}".endswith(f".{pattern}") for pattern in kept):
            module.float()
    return model


def answer(run, requests: list[TunaRequest]) -> list[DiffusionOutput]:
    """`run(requests)`'s images as one output per request; if a call of several fails, each request is run alone,
    so that only the failing ones get their error."""
    try:
        images = run(requests)
    except Exception as error:
        if len(requests) == 1:
            return [DiffusionOutput.from_exception(error)]
        return [output for request in requests for output in answer(run, [request])]
    return [DiffusionOutput(output=item) for item in images]


class TunaOmniPipeline(nn.Module):
    r"""
    vLLM-Omni's pipeline for TUNA repositories (`model_index.json`'s `_class_name` `TunaPipeline` or
    `TunaEditPipeline`): a request with an image (`multi_modal_data["image"]`) is an edit of it, one without is
    text-to-image; both for Tuna, Tuna-R and Tuna-2.

    Each request keeps its own sampling parameters: `seed` (or `generator`), `num_inference_steps` (default 50),
    `guidance_scale` (default the repository's), `height` / `width`, `num_outputs_per_prompt`, `latents`,
    `output_type`, and the prompt's `negative_prompt`. Text-to-image requests that share size, steps and guidance run
    in one pipeline call, each from its own initial noise and each decoded alone (Tuna-R's decoding rescales its
    batch); edits run one call each. The pipeline objects keep no state between calls.

    Args:
        od_config (`OmniDiffusionConfig`): the engine's; `model` is the repository (a folder or a Hub id).
        prefix (`str`): unused; vLLM-Omni's pipeline signature.
    """

    supports_request_batch: ClassVar[bool] = True
    support_image_input: ClassVar[bool] = True
    color_format: ClassVar[str] = "RGB"
    # Tuna's VAE lives inside the transformer; there is no separate encoder.
    _dit_modules: ClassVar[list[str]] = ["transformer"]
    _encoder_modules: ClassVar[list[str]] = []
    _vae_modules: ClassVar[list[str]] = []

    def __init__(self, *, od_config: OmniDiffusionConfig, prefix: str = ""):
        super().__init__()
        self.od_config = od_config
        self.transformer = build_transformer(od_config.model, od_config.revision)
        self.transformer.set_attention_backend(attention_backend(od_config))
        # The repository's processor, scheduler and sampling settings, around this model.
        self.text_to_image = TunaPipeline.from_pretrained(
            od_config.model, revision=od_config.revision, transformer=self.transformer
        )
        self.edit = TunaEditPipeline.from_pipe(self.text_to_image)
        self.weights_sources = [
            DiffusersPipelineLoader.ComponentSource(
                model_or_path=od_config.model,
                subfolder="transformer",
                revision=od_config.revision,
                prefix="transformer.",
            )
        ]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """
        Copies the checkpoint's tensors (names prefixed `transformer.`) into the model, each cast to its parameter's
        dtype; returns the names loaded. A name the model does not have raises.
        """
        targets = dict(self.named_parameters(remove_duplicate=False)) | dict(self.named_buffers())
        loaded = set()
        for name, tensor in weights:
            if name not in targets:
                raise ValueError(f"The checkpoint's `{name}` is no parameter or buffer of TunaForUnifiedMultimodal.")
            with torch.no_grad():
                targets[name].copy_(tensor.to(targets[name].dtype))
            loaded.add(name)
        return loaded

    @torch.no_grad()
    def forward(self, req: DiffusionRequestBatch) -> list[DiffusionOutput]:
        """One output per request of `req`, in its order; a request that fails gets its error, the others their
        images."""
        outputs: list[DiffusionOutput | None] = [None] * req.num_reqs
        groups: dict[tuple, list[tuple[int, TunaRequest]]] = {}
        for index, (prompt, sampling) in enumerate(zip(req.prompts, req.sampling_params_list, strict=True)):
            try:
                request = parse_request(prompt, sampling, self.od_config.output_type)
            except Exception as error:
                outputs[index] = DiffusionOutput.from_exception(error)
                continue
            if request.image is None:
                groups.setdefault(request.batch_key, []).append((index, request))
            else:
                outputs[index] = answer(self.run_edits, [request])[0]
        for group in groups.values():
            indices, requests = zip(*group, strict=True)
            for index, output in zip(indices, answer(self.run_text_to_image, list(requests)), strict=True):
                outputs[index] = output
        return outputs

    def initial_latents(self, request: TunaRequest) -> torch.Tensor:
        """The request's initial sample: its `latents` (checked against its shape), else drawn from its own generator,
        exactly as a call of `TunaPipeline` with that generator alone draws it."""
        pipe = self.text_to_image
        height, width = pipe._default_size(request.height, request.width)
        factor = pipe.vae_scale_factor
        shape = (request.num_images, self.transformer.config.latent_channels, 1, height // factor, width // factor)
        return pipe.prepare_latents(shape, request.generator, request.latents)

    def run_text_to_image(self, requests: list[TunaRequest]) -> list:
        """Text-to-image for requests of one `batch_key` in one sampling call; each request's images decoded alone."""
        pipe, first = self.text_to_image, requests[0]
        prompts = [request.prompt for request in requests for _ in range(request.num_images)]
        negatives = [request.negative_prompt or "" for request in requests for _ in range(request.num_images)]
        samples = pipe(
            prompts,
            negative_prompt=negatives if any(negatives) else None,
            height=first.height,
            width=first.width,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            latents=torch.cat([self.initial_latents(request) for request in requests]),
            output_type="latent",
        ).images
        chunks = samples.split([request.num_images for request in requests])
        return [pipe.decode(chunk, request.output_type) for request, chunk in zip(requests, chunks, strict=True)]

    def run_edits(self, requests: list[TunaRequest]) -> list:
        """Edit requests, one call each: their images."""
        return [
            self.edit(
                request.image,
                request.prompt,
                negative_prompt=request.negative_prompt,
                height=request.height,
                width=request.width,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                num_images_per_prompt=request.num_images,
                generator=request.generator,
                latents=request.latents,
                output_type=request.output_type,
            ).images
            for request in requests
        ]


def get_tuna_pre_process_func(od_config: OmniDiffusionConfig):
    """vLLM-Omni's pre-process hook, run on each request before scheduling: edits and text-to-image requests get
    different batch keys, so that its scheduler batches each with its own kind."""

    def pre_process(request: OmniDiffusionRequest) -> OmniDiffusionRequest:
        request.batch_compatibility_key = ("edit",) if has_source_image(request.prompt) else ("text-to-image",)
        return request

    return pre_process
