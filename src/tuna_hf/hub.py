"""Hub helpers: the model card of a pipeline repository (`model_card.md`, filled from the pipeline) and its upload."""

from importlib import resources
from pathlib import Path

from .pipelines import OFFICIAL_EDIT_NEGATIVE_PROMPT, OFFICIAL_GUIDANCE_DEFAULTS
from .scheduling_tuna import TunaFlowMatchScheduler

VARIANT_DESCRIPTIONS = {
    "tuna": "Tuna model (Wan 2.2 VAE encoder → SigLIP2 → Qwen2.5; velocity flow matching in the VAE latent space)",
    "tuna_r": "Tuna-R model (SigLIP2 on pixels → Qwen2.5; x0 flow matching in pixel space)",
    "tuna_2": "Tuna-2 model (Conv2d patch embedding on pixels → Qwen2.5; x0 flow matching in pixel space)",
}
# What the card's snippets ask, generate and edit, unless the caller has better examples.
GENERIC_EXAMPLES = {
    "example_question": "Describe this image.",
    "example_prompt": "a red fox in the snow",
    "example_instruction": "make it night",
}
# The scheduler and pipeline settings a card compares with the official predict defaults.
SCHEDULER_SETTINGS = ("solver", "prediction_type", "shift", "noise_scale")
GUIDANCE_SETTINGS = ("guidance_scale", "edit_guidance_scale", "video_guidance_scale")
GENERIC_LIMITATIONS = (
    "The official release's limitations apply (see its repository): English prompts, the biases of its training "
    "data, and resolutions near the ones it was trained at."
)


def render_model_card(**fields) -> str:
    """The repository README from the `model_card.md` template (its `{placeholders}` filled from `fields`)."""
    template = (resources.files("tuna_hf") / "model_card.md").read_text()
    return template.format(**fields)


def write_model_card(
    folder,
    pipeline,
    *,
    model_name: str,
    repo_id: str,
    provenance: str,
    license: str = "apache-2.0",
    base_model: str | None = None,
    limitations: str = GENERIC_LIMITATIONS,
    examples: dict | None = None,
) -> Path:
    """Writes `folder/README.md` for `pipeline` (a `TunaPipeline`): variant, sizes and sampling defaults are read from
    it; `repo_id` is what the snippets load."""
    model = pipeline.transformer
    card = render_model_card(
        model_name=model_name,
        repo_id=repo_id,
        license=license,
        base_model_metadata=f"base_model: {base_model}\n" if base_model else "",
        variant=model.config.tuna_variant,
        variant_description=VARIANT_DESCRIPTIONS[model.config.tuna_variant],
        sizes=describe_size(model),
        sampling_defaults=describe_sampling(pipeline),
        provenance=provenance,
        limitations=limitations,
        **(examples or GENERIC_EXAMPLES),
    )
    path = Path(folder) / "README.md"
    path.write_text(card)
    return path


def describe_size(model) -> str:
    """The model card's size line: parameters, decoder and flow-head shapes, pixels per image token."""
    config = model.config
    text, head = config.text_config, config.flow_head_config
    parameters = sum(parameter.numel() for parameter in model.parameters())
    side = config.pixels_per_token
    return (
        f"{parameters / 1e6:,.1f}M parameters; decoder {text.num_hidden_layers} layers of width {text.hidden_size}, "
        f"flow head {head.num_hidden_layers} layers; one image token per {side}×{side} pixels"
    )


def describe_sampling(pipeline) -> str:
    """The model card's sampling-defaults paragraph, read from the scheduler's and the pipeline's config, and how it
    differs from the variant's official predict defaults."""
    scheduler, settings, variant = pipeline.scheduler.config, pipeline.config, pipeline.transformer.config.tuna_variant
    low, high = settings.guidance_interval
    guided_always = (low, high) == (0.0, 1.0)
    guidance = f"guidance {settings.guidance_scale} (text-to-image) / {settings.edit_guidance_scale} (editing)"
    if not guided_always:
        guidance += f" at flow times {f'{low} < ' if low else ''}t < {high}"
    negative = settings.edit_negative_prompt
    official_negative = negative == OFFICIAL_EDIT_NEGATIVE_PROMPT
    negative_text = {OFFICIAL_EDIT_NEGATIVE_PROMPT: "the official one", "": "empty"}.get(negative, f"`{negative}`")
    summary = (
        f"{scheduler.solver} sampler, {scheduler.prediction_type} prediction, {guidance}, initial noise scale "
        f"{scheduler.noise_scale}; editing's default negative prompt: {negative_text}"
    )
    official_scheduler = TunaFlowMatchScheduler.from_official_defaults(variant).config
    official_guidance = OFFICIAL_GUIDANCE_DEFAULTS[variant]
    differences = [
        f"`{name}` {config[name]!r} (official {official[name]!r})"
        for config, official, names in (
            (scheduler, official_scheduler, SCHEDULER_SETTINGS),
            (settings, official_guidance, GUIDANCE_SETTINGS),
        )
        for name in names
        if config[name] != official[name]
    ]
    if not guided_always:
        differences.append(f"`guidance_interval` {(low, high)} (official: always)")
    if not official_negative:
        differences.append("`edit_negative_prompt` (official: `tuna_hf.pipelines.OFFICIAL_EDIT_NEGATIVE_PROMPT`)")
    if not differences:
        return f"{summary}. These are the official {variant} predict defaults."
    return f"{summary}. They differ from the official {variant} predict defaults in " + ", ".join(differences) + "."


def upload_repository(folder, repo_id: str, private: bool = False) -> str:
    """Create (if needed) the Hub model repository `repo_id`, upload `folder` into it, return its URL. `folder` is a
    pipeline repository (`model_index.json`) or a PEFT adapter (`adapter_config.json`)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "model_index.json").exists() and not (folder / "adapter_config.json").exists():
        raise ValueError(f"{folder} is neither a pipeline repository (model_index.json) nor a PEFT adapter.")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"
