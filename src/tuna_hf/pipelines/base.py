"""What the TUNA pipelines share: components and sampling settings, Hub download, `from_pipe`, input checks, latents,
the prompt rows and their cache, decoding."""

import json
import math
import numbers
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.configuration_utils import FrozenDict
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from diffusers.utils import logging
from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import create_repo, snapshot_download
from safetensors import safe_open
from transformers import DynamicCache

from ..modeling_tuna import TunaForUnifiedMultimodal
from ..processing_tuna import TunaProcessor, check_text
from ..scheduling_tuna import LEGACY_GUIDANCE_KEYS, TunaFlowMatchScheduler, check_scheduler
from ..wan_vae import decode_wan_latents
from .lora import TunaLoraLoaderMixin
from .prompt_cache import TunaPromptCache, TunaPromptRows

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
COMPONENT_NAMES = ("transformer", "processor", "scheduler")
# The official default negative prompt for editing (`tuna/models/misc.py`, also `configs/predict/edit.yaml`), which
# the official `prepare_gen_input_edit` uses when no negative prompt is given.
OFFICIAL_EDIT_NEGATIVE_PROMPT = (
    "identity changed, different person, face altered, different facial features, lost subject, missing subject, "
    "replaced subject, drastic pose change, broken anatomy, extra limbs, missing limbs, distorted body, "
    "deformed face, hallucinated details, removed subject details, inconsistent lighting, mismatched style, "
    "oversaturated edit, unintended color shift, blurry, watermark, jpeg artifacts, text artifacts, low quality, "
    "worst quality, bad composition"
)
# The guidance half of the official predict defaults (`scripts/launch/predict.sh`; the sampler half is
# `tuna_hf.scheduling_tuna.OFFICIAL_SAMPLING_DEFAULTS`): text-to-image, editing, text-to-video (the runner's 6.0,
# `t2v_2b.yaml` sets none) and the official `cfg_interval`, always on.
OFFICIAL_GUIDANCE_DEFAULTS = {
    variant: {
        "guidance_scale": t2i,
        "edit_guidance_scale": edit,
        "video_guidance_scale": 6.0,
        "guidance_interval": (0.0, 1.0),
    }
    for variant, t2i, edit in (("tuna", 7.5, 7.5), ("tuna_r", 4.0, 5.0), ("tuna_2", 3.0, 2.0))
}
# Sequence tokens that follow the target span in the official layout: `<|vision_end|> <|im_end|>`.
TOKENS_AFTER_TARGET_SPAN = 2
# What `save_pretrained` copies from `transformer/` to the repository's root (the weights are indexed, not copied),
# and transformers' names of a safetensors checkpoint (a variant between `model` and the suffix).
TRANSFORMER_ROOT_FILES = ("config.json", "generation_config.json")
SINGLE_WEIGHTS = re.compile(r"model(?:\.(?P<variant>[^.]+))?\.safetensors")
WEIGHTS_INDEX = re.compile(r"model\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json")


def write_transformers_entry(folder: str | os.PathLike) -> None:
    """Let a pipeline repository's root serve transformers too (docs/architecture.md §9): the model's config files,
    the processor's files, and for each safetensors checkpoint of `transformer/` (one per variant:
    `model.safetensors`, `model.fp16.safetensors`, or a sharded index) an index at the root whose shards are the files
    in `transformer/`: no weight is stored twice. `AutoModelForImageTextToText.from_pretrained(repo)`,
    `AutoProcessor.from_pretrained(repo)` and `pipeline("image-text-to-text", model=repo)` then load the repository
    itself. Run it again after changing `transformer/` or `processor/` by hand."""
    folder = Path(folder)
    transformer = folder / "transformer"
    for stale in folder.glob("model.safetensors.index*.json"):
        stale.unlink()
    for variant, weight_map, metadata in _transformer_weights(transformer):
        name = "model.safetensors.index.json" if variant is None else f"model.safetensors.index.{variant}.json"
        index = {"metadata": metadata, "weight_map": {key: f"transformer/{file}" for key, file in weight_map.items()}}
        (folder / name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name in TRANSFORMER_ROOT_FILES:
        if (transformer / name).exists():
            shutil.copyfile(transformer / name, folder / name)
    for path in (folder / "processor").iterdir():
        if path.is_file():
            shutil.copyfile(path, folder / path.name)


def _transformer_weights(transformer: Path):
    """`(variant, weight map, metadata)` of each safetensors checkpoint in `transformer/`, as transformers would load
    it: a single file first, else an index whose shards all exist (a later unsharded save leaves the old index)."""
    variants = {}
    for path in transformer.glob("model*.safetensors*"):
        if match := SINGLE_WEIGHTS.fullmatch(path.name):
            with safe_open(path, "pt") as weights:
                variants[match["variant"]] = (dict.fromkeys(weights.keys(), path.name), {})
    for path in transformer.glob("model.safetensors.index*.json"):
        match = WEIGHTS_INDEX.fullmatch(path.name)
        if match is None or match["variant"] in variants:
            continue
        index = json.loads(path.read_text())
        if all((transformer / shard).exists() for shard in set(index["weight_map"].values())):
            variants[match["variant"]] = (index["weight_map"], index.get("metadata", {}))
    if not variants:
        raise FileNotFoundError(f"No safetensors weights in {transformer}.")
    return [(variant, weight_map, metadata) for variant, (weight_map, metadata) in variants.items()]


# A container's memory limit and use: cgroup v2, then v1 (the host's /proc/meminfo ignores them).
CGROUP_MEMORY_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (an accelerator's free memory; on CPU the host's available memory, or what is left of
    the container's limit if less), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = []
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    for limit_file, usage_file in CGROUP_MEMORY_FILES:
        limit, usage = (_read_number(Path(name)) for name in (limit_file, usage_file))
        if limit is not None and usage is not None:
            free.append(max(limit - usage, 0))
            break
    return min(free, default=None)


def _read_number(path: Path) -> int | None:
    """The integer in a one-line kernel file (None if absent or "max")."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class TunaBasePipeline(DiffusionPipeline, TunaLoraLoaderMixin):
    r"""
    The components and sampling settings of the TUNA pipelines.

    Args:
        transformer ([`TunaForUnifiedMultimodal`]): the model (Tuna holds its Wan 2.2 VAE as `transformer.model.vae`).
        processor ([`TunaProcessor`]): builds the official sequence layouts.
        scheduler ([`TunaFlowMatchScheduler`] or a diffusers flow-matching scheduler): the time grid and steps.
            `TunaFlowMatchScheduler` (the default, the official samplers) must have the model's `prediction_type`;
            diffusers' `FlowMatch*` schedulers and solvers set to flow sigmas (`use_flow_sigmas=True`,
            `prediction_type="flow_prediction"`) get the model's prediction as the flow they integrate.
        edit_negative_prompt (`str`, defaults to `OFFICIAL_EDIT_NEGATIVE_PROMPT`): the text of the unconditional rows
            when [`TunaEditPipeline`] gets no `negative_prompt`. A model trained with empty instructions as its
            unconditional case (caption dropout, as `examples/train.py`) sets `""`.
        guidance_scale, edit_guidance_scale, video_guidance_scale (`float`, *optional*): the default classifier-free
            guidance of text-to-image, editing and text-to-video; default: the variant's official predict defaults
            (`OFFICIAL_GUIDANCE_DEFAULTS`).
        guidance_interval (`tuple[float, float]`, *optional*): guidance applies at flow times `low < t < high`
            (`low = 0` includes t = 0), elsewhere the conditional prediction is used (official `cfg_interval`); default
            (0, 1), always.

    The settings are stored in `model_index.json` and shared by both pipelines of a repository (`from_pipe`). A
    scheduler whose config still holds guidance settings (a repository saved when they lived there) gives them to the
    pipeline, which keeps a copy of the scheduler without them.
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: TunaForUnifiedMultimodal,
        processor: TunaProcessor,
        scheduler: TunaFlowMatchScheduler | SchedulerMixin,
        edit_negative_prompt: str = OFFICIAL_EDIT_NEGATIVE_PROMPT,
        guidance_scale: float | None = None,
        edit_guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | list[float] | None = None,
    ):
        super().__init__()
        if transformer is None:
            raise ValueError("A TUNA pipeline needs its `transformer`: it is the whole model.")
        if not isinstance(edit_negative_prompt, str):
            raise TypeError(f"`edit_negative_prompt` must be a string, got {edit_negative_prompt!r}.")
        check_scheduler(scheduler, transformer.config.prediction_type)
        given = {
            "guidance_scale": guidance_scale,
            "edit_guidance_scale": edit_guidance_scale,
            "video_guidance_scale": video_guidance_scale,
            "guidance_interval": guidance_interval,
        }
        scheduler, legacy = self._split_legacy_guidance(scheduler)
        official = OFFICIAL_GUIDANCE_DEFAULTS[transformer.config.tuna_variant]
        settings = {
            name: value if value is not None else legacy.get(name, official[name]) for name, value in given.items()
        }
        for name in ("guidance_scale", "edit_guidance_scale", "video_guidance_scale"):
            settings[name] = self._check_guidance_scale(name, settings[name])
        settings["guidance_interval"] = self._check_guidance_interval(settings["guidance_interval"])
        self.register_modules(transformer=transformer, processor=processor, scheduler=scheduler)
        self.register_to_config(edit_negative_prompt=edit_negative_prompt, **settings)

    @staticmethod
    def _split_legacy_guidance(scheduler) -> tuple[TunaFlowMatchScheduler, dict]:
        """The guidance settings an older scheduler config holds (`LEGACY_GUIDANCE_KEYS`), and a copy of the
        scheduler without them (the given one is left as it is); this pipeline's config holds them now, and
        `save_pretrained` writes them there."""
        config = dict(scheduler.config)
        legacy = {key: config.pop(key) for key in LEGACY_GUIDANCE_KEYS if key in config}
        if not legacy:
            return scheduler, legacy
        logger.info(f"Guidance settings {sorted(legacy)} read from the scheduler config (their place before 0.2).")
        return scheduler.from_config(FrozenDict(config)), legacy

    @staticmethod
    def _check_guidance_scale(name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number ≥ 0 (0 or 1: no guidance), got {value!r}.")
        return float(value)

    @staticmethod
    def _check_guidance_interval(interval) -> tuple[float, float]:
        values = tuple(interval) if isinstance(interval, (list, tuple)) else ()
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"`guidance_interval` must be two flow times (low, high), got {interval!r}.")
        low, high = (float(v) for v in values)
        if not 0 <= low < high <= 1:
            raise ValueError(f"`guidance_interval` must satisfy 0 ≤ low < high ≤ 1, got {interval!r}.")
        return low, high

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """Diffusers' `save_pretrained` (the same arguments), and the root entry for transformers
        (`write_transformers_entry`) before anything is pushed."""
        hub = {
            name: kwargs.pop(name) for name in ("commit_message", "private", "create_pr", "token") if name in kwargs
        }
        repo_id = kwargs.pop("repo_id", Path(save_directory).name)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_transformers_entry(save_directory)
        if push_to_hub:
            repo_id = create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")).repo_id
            card = Path(save_directory) / "README.md"
            if (
                not card.exists()
            ):  # diffusers' card, unless the repository has its own (`tuna_hf.hub.write_model_card`)
                populate_model_card(load_or_create_model_card(repo_id, token=hub.get("token"), is_pipeline=True)).save(
                    card
                )
            self._upload_folder(
                save_directory,
                repo_id,
                token=hub.get("token"),
                commit_message=hub.get("commit_message"),
                create_pr=hub.get("create_pr", False),
            )

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str | os.PathLike:
        """
        Fetch a pipeline repository from the Hub. Diffusers' own `download` rejects components from libraries it does
        not know (`tuna_hf`), so the repository is fetched as a whole (docs/architecture.md §9).
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
        A pipeline of this class sharing `pipeline`'s components and sampling settings (`kwargs` replace some).
        Unlike diffusers' `from_pipe`, which casts the shared modules to `dtype` (float32 by default) in place,
        nothing is cast.
        """
        setting_names = ("edit_negative_prompt", *LEGACY_GUIDANCE_KEYS)
        unknown = set(kwargs) - set(COMPONENT_NAMES) - set(setting_names)
        if unknown:
            raise TypeError(
                f"`from_pipe` takes only components {COMPONENT_NAMES} and the settings {setting_names}, "
                f"got {sorted(unknown)}."
            )
        components = {name: kwargs.get(name, getattr(pipeline, name)) for name in COMPONENT_NAMES}
        # A new scheduler's guidance settings (given to it as before they moved) replace the inherited ones.
        from_scheduler = set(LEGACY_GUIDANCE_KEYS) & set(components["scheduler"].config)
        settings = {name: pipeline.config.get(name) for name in setting_names if name not in from_scheduler}
        settings.update({name: kwargs[name] for name in setting_names if name in kwargs})
        return cls(**components, **{name: value for name, value in settings.items() if value is not None})

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per flow-space pixel: 16 for Tuna's Wan 2.2 latents, 1 in pixel space."""
        config = self.transformer.config
        return config.pixels_per_token // config.patch_size

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.processor.image_processor.size
        return (size["height"] if height is None else height, size["width"] if width is None else width)

    def _check_memory(self, num_rows: int, row_length: int, num_images: int, latent_shape: tuple[int, ...]) -> None:
        """Refuse a call whose key/value caches and samples alone (a lower bound of what it allocates) exceed the
        device's free memory: a clear error instead of an aborted process."""
        free = free_memory(self._execution_device)
        if free is None:
            return
        text, head = self.transformer.config.text_config, self.transformer.config.flow_head_config
        text_head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        per_token = 2 * (
            text.num_hidden_layers * text.num_key_value_heads * text_head_dim
            + head.num_hidden_layers * head.num_key_value_heads * head.head_dim
        )
        caches = num_rows * row_length * per_token * self.transformer.dtype.itemsize
        samples = 2 * num_images * math.prod(latent_shape) * 4  # the sample and the prediction, float32
        if caches + samples > free:
            raise ValueError(
                f"This call needs at least {(caches + samples) / 2**30:.1f} GiB ({num_rows} rows of {row_length} "
                f"tokens, {num_images} samples: `num_images_per_prompt`, the prompts and the size set them), but "
                f"{free / 2**30:.1f} GiB are free on {self._execution_device}."
            )

    @staticmethod
    def _check_prompts(name: str, prompts, batch_size: int | None = None) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`{name}` must be a non-empty string or list of strings, got {prompts!r}.")
        for text in prompts:
            check_text(name, text)
        if batch_size is not None and len(prompts) not in (1, batch_size):
            raise ValueError(f"`{name}` has {len(prompts)} entries for a batch of {batch_size}.")
        return list(prompts) * (batch_size // len(prompts) if batch_size else 1)

    def _texts_per_image(
        self, prompts: list[str], negative_prompt, num_images_per_prompt: int, do_classifier_free_guidance: bool
    ) -> tuple[list[str], list[str] | None]:
        """Each prompt repeated for its images; with CFG also the negative prompts (one, or one per prompt), likewise.
        Returns `(prompts, negatives or None)`."""

        def per_image(texts: list[str]) -> list[str]:
            return [text for text in texts for _ in range(num_images_per_prompt)]

        if not do_classifier_free_guidance:
            return per_image(prompts), None
        return per_image(prompts), per_image(self._check_prompts("negative_prompt", negative_prompt, len(prompts)))

    def _prompt_rows(
        self, inputs, span_length: int, guided: bool, prompt_images: torch.Tensor | None = None
    ) -> TunaPromptRows:
        """Left-padded processor rows cut right after the target span, checked against the decoder's context."""
        input_ids = inputs["input_ids"][:, :-TOKENS_AFTER_TARGET_SPAN].to(self._execution_device)
        attention_mask = inputs["attention_mask"][:, :-TOKENS_AFTER_TARGET_SPAN].to(self._execution_device)
        context = self.transformer.config.context_length
        longest = int(attention_mask.sum(-1).max())
        spans = int((input_ids == self.transformer.config.boi_token_id).sum(-1).max()) * (span_length + 2)
        if spans > context:
            raise ValueError(
                f"The image size (`height`, `width`; for editing also the source's) needs {spans} tokens of image "
                f"spans, more than the model's context of {context} tokens: choose a smaller size."
            )
        if longest > context:
            raise ValueError(
                f"`prompt` is too long: the sequence needs {longest} tokens ({spans} for the image spans), the "
                f"model's context is {context} tokens."
            )
        return TunaPromptRows(input_ids, attention_mask, span_length, guided, prompt_images)

    def prefill_prompt_cache(self, rows: TunaPromptRows) -> TunaPromptCache:
        """Run the rows' prompts (everything before the target span) once through the decoder and the flow head,
        filling both caches (docs/architecture.md §7)."""
        prompt, span = slice(None, rows.prompt_length), slice(rows.prompt_length, None)
        decoder_cache = DynamicCache(config=self.transformer.config.text_config)
        flow_head_cache = DynamicCache()
        self.transformer(
            input_ids=rows.input_ids[:, prompt],
            attention_mask=rows.attention_mask[:, prompt],
            position_ids=rows.position_ids[:, prompt],
            image_latents=rows.prompt_images,
            past_key_values=decoder_cache,
            flow_head_past_key_values=flow_head_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return TunaPromptCache(
            decoder_cache=decoder_cache,
            flow_head_cache=flow_head_cache,
            input_ids=rows.input_ids[:, span],
            attention_mask=rows.attention_mask,
            position_ids=rows.position_ids[:, span],
        )

    def prepare_latents(self, shape: tuple[int, ...], generator, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial sample `[B, C, T, h, w]`: `latents` as given, else `noise_scale · N(0, 1)` (float32)."""
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"`latents` must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
            return latents.to(device=self._execution_device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for {shape[0]} images.")
        noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)
        return noise * self.initial_noise_sigma

    @property
    def initial_noise_sigma(self) -> float:
        """The standard deviation of the initial noise: `TunaFlowMatchScheduler` holds the official one; diffusers'
        flow schedulers start at sigma 1, pure noise, which is the model's training noise (`noise_scale`)."""
        if isinstance(self.scheduler, TunaFlowMatchScheduler):
            return self.scheduler.init_noise_sigma
        return self.transformer.config.noise_scale

    @staticmethod
    def prepare_timesteps(
        scheduler: SchedulerMixin, num_inference_steps: int, image_seq_len: int, device, dtype: torch.dtype
    ) -> torch.Tensor:
        """
        Sets `scheduler`'s timesteps for this call and returns them.

        Args:
            scheduler (`SchedulerMixin`): this call's scheduler.
            num_inference_steps (`int`): the call's step count.
            image_seq_len (`int`): image tokens of one frame, for a diffusers scheduler with dynamic shifting
                (QwenImage's `mu`; per frame, so that a video's length does not push the shift out of its range).
            device (`torch.device`): where the timesteps go.
            dtype (`torch.dtype`): the model's dtype, the one `TunaFlowMatchScheduler` builds the official grid in.

        A diffusers scheduler starts at its first timestep (`set_begin_index(0)`: the multistep solvers round
        timesteps to integers, so the first two can coincide) and must give flow sigmas in [0, 1].
        """
        if isinstance(scheduler, TunaFlowMatchScheduler):
            scheduler.set_timesteps(num_inference_steps, device=device, grid_dtype=dtype)
            return scheduler.timesteps
        extra = {}
        if scheduler.config.get("use_dynamic_shifting"):
            extra["mu"] = calculate_shift(
                image_seq_len,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.15),
            )
        scheduler.set_timesteps(num_inference_steps, device=device, **extra)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        low, high = float(scheduler.sigmas.min()), float(scheduler.sigmas.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"{type(scheduler).__name__}'s sigmas span [{low:.3g}, {high:.3g}], not flow sigmas in [0, 1]: its "
                "Karras, exponential or beta sigma options do not apply to flow matching."
            )
        return scheduler.timesteps

    def decode(self, latents: torch.Tensor, output_type: str, video: bool = False):
        """
        The final sample `[B, C, T, h, w]` → images (or videos): PIL, or float32 in [0, 1] (`"np"`:
        `[B, (F,) H, W, 3]`, `"pt"`: `[B, 3, (F,) H, W]`); `"latent"` returns the sample as is.
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
