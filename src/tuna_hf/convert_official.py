"""The official checkpoints (facebookresearch/tuna-2) in our terms: their model config and state-dict keys, and the
converter that turns one into a pipeline repository (`python conversion/convert_official.py --help`).

Official inner-model keys (`tuna.model.*`, `diffusion_head_a.*`, …; docs/architecture.md §10) are renamed to ours; the
Wan 2.2 VAE (`vae.model.*`, Tuna only) is converted to the diffusers `AutoencoderKLWan` layout.
"""

import argparse
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from transformers import AutoTokenizer, Qwen2Config, SiglipVisionConfig
from transformers import initialization as init

from .configuration_tuna import TunaConfig
from .hub import upload_repository, write_model_card
from .modeling_tuna import TunaForUnifiedMultimodal
from .official_presets import OFFICIAL_PRESETS
from .processing_tuna import add_tuna_tokens, tuna_token_ids
from .wan_vae import convert_wan22_vae_state_dict, wan22_vae_config

# Official wrapper class → our `visual_encoder`.
OFFICIAL_VISUAL_ENCODERS = {
    "TunaModel": "vae_siglip",
    "Tuna2RPixelModel": "siglip",
    "Tuna2PixelModel": "patch",
}

OFFICIAL_KEY_RULES = [
    (r"^tuna\.model\.", "model.language_model."),
    (r"^tuna\.lm_head\.", "lm_head."),
    (r"^vision_model\.", "model.vision_tower."),
    (r"^siglip_proj\.0\.", "model.connector.norm."),
    (r"^siglip_proj\.1\.", "model.connector.linear_1."),
    (r"^siglip_proj\.3\.", "model.connector.linear_2."),
    (r"^vision_encoder\.patch_embedding\.", "model.patch_embed.proj."),
    (r"^vision_encoder\.norm\.", "model.patch_embed.norm."),
    (r"^mask_token$", "model.mask_token"),
    (r"^time_embed\.mlp\.0\.", "model.timestep_embedder.linear_1."),
    (r"^time_embed\.mlp\.2\.", "model.timestep_embedder.linear_2."),
    (r"^diffusion_head_a\.(\d+)\.adaLN_modulation\.1\.", r"flow_head.layers.\1.modulation."),
    (r"^diffusion_head_a\.", "flow_head.layers."),
    (r"^diffusion_head_b\.norm_final\.", "flow_head.final_layer.norm."),
    (r"^diffusion_head_b\.linear\.", "flow_head.final_layer.proj."),
    (r"^diffusion_head_b\.adaLN_modulation\.1\.", "flow_head.final_layer.modulation."),
]
OFFICIAL_VAE_PREFIX = "vae.model."


def rename_official_key(key: str) -> str | None:
    """Our name for an official (non-VAE) key, or None when no rule maps it."""
    for pattern, replacement in OFFICIAL_KEY_RULES:
        new_key, hits = re.subn(pattern, replacement, key)
        if hits:
            return new_key
    return None


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official inner-model state dict; returns `(converted, unmapped_keys)` (tensors are shared)."""
    converted, unmapped, vae = {}, [], {}
    for key, tensor in state_dict.items():
        if key.startswith(OFFICIAL_VAE_PREFIX):
            vae[key.removeprefix(OFFICIAL_VAE_PREFIX)] = tensor
        elif (new_key := rename_official_key(key)) is not None:
            converted[new_key] = tensor
        else:
            unmapped.append(key)
    if vae:
        converted.update({f"model.vae.{key}": tensor for key, tensor in convert_wan22_vae_state_dict(vae).items()})
    return converted, unmapped


def load_official_state_dict(
    model,
    state_dict: Mapping[str, torch.Tensor],
    extra: Mapping[str, torch.Tensor] | None = None,
    allow_missing: set[str] = frozenset(),
    allow_unexpected: bool = False,
) -> list[str]:
    """
    Load an official state dict into a `TunaForUnifiedMultimodal`, strictly: missing keys, unexpected keys and shape
    mismatches are reported together as one error. `extra` adds tensors already in our names (a VAE, filled
    layers); `allow_missing` names keys the caller initialises itself; with `allow_unexpected` unmapped keys are
    skipped and returned instead of raising.
    """
    converted, unmapped = convert_official_state_dict(state_dict)
    converted.update(extra or {})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted) - set(allow_missing))
    unexpected = sorted(unmapped + [key for key in converted if key not in expected])
    mismatched = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(converted) & set(expected)
        if converted[key].shape != expected[key].shape
    )
    problems = {"missing keys": missing, "unexpected keys": [] if allow_unexpected else unexpected}
    problems["shape mismatches"] = mismatched
    if any(problems.values()):
        raise ValueError(
            "The official checkpoint does not match the model:\n"
            + "\n".join(f"  {name} ({len(items)}): {items}" for name, items in problems.items() if items)
        )
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=not allow_missing)
    return unexpected


# The official model YAML keys our config represents (`tuna_config_from_official`); `hidden_size` must be the LLM's.
# Every other key is a training or runtime setting of the official code: the converter lists them (`unused_yaml_keys`).
OFFICIAL_CONFIG_KEYS = {
    "flow_head_num": "flow_head_config.num_hidden_layers",
    "num_attention_heads": "flow_head_config.num_attention_heads",
    "num_key_value_heads": "flow_head_config.num_key_value_heads",
    "image_latent_dim": "latent_channels",
    "patch_size": "patch_size",
    "enable_mask_token": "use_mask_token",
    "masked_image_ratio_min": "mask_ratio_min",
    "masked_image_ratio": "mask_ratio_max",
    "mmu_noise_prob": "understanding_noise_prob",
    "mmu_noise_level": "understanding_noise_level",
    "ntp_coeff": "ntp_coeff",
    "flow_coeff": "flow_coeff",
    "noise_scale": "noise_scale",
    "siglip_image_size": "vision_config.image_size",
    "siglip_patch_size": "vision_config.patch_size",
    "siglip_num_channels": "vision_config.num_channels",
    "siglip_feature_layer": "vision_config.num_hidden_layers",
    "hidden_size": "text_config.hidden_size",
    "llm_model_path": "the model card's base model",
}


def unused_yaml_keys(model_kwargs: Mapping) -> list[str]:
    """The official model YAML keys the conversion does not carry (`OFFICIAL_CONFIG_KEYS` are carried)."""
    return sorted(set(model_kwargs) - set(OFFICIAL_CONFIG_KEYS))


def tuna_config_from_official(
    official_class: str,
    model_kwargs: Mapping,
    llm_config: Mapping,
    token_ids: Mapping[str, int],
    siglip_config: Mapping | None = None,
    vae_kwargs: Mapping | None = None,
) -> TunaConfig:
    """Our config from the official model YAML values (`model_kwargs`), the base LLM and SigLIP configs.

    `official_class` is the wrapper class name (e.g. `Tuna2PixelModel`); `token_ids` are the tokenizer's ids for
    `image_pad`, `boi`, `eoi` (keys as in the official `tuna_token_ids`: `img_pad_id`, `boi_id`, `eoi_id`).
    """
    visual_encoder = OFFICIAL_VISUAL_ENCODERS.get(official_class.rsplit(".", 1)[-1])
    if visual_encoder is None:
        raise ValueError(
            f"Unknown official model class {official_class!r}; expected one of {list(OFFICIAL_VISUAL_ENCODERS)}."
        )
    text_config = Qwen2Config(**{k: v for k, v in llm_config.items() if not k.startswith("_")})
    if model_kwargs.get("hidden_size", text_config.hidden_size) != text_config.hidden_size:
        raise ValueError(
            f"The official config's `hidden_size` ({model_kwargs['hidden_size']}) is not the LLM's "
            f"({text_config.hidden_size}): pass the LLM config the checkpoint was trained with."
        )
    training = {
        name: model_kwargs[key]
        for key, name in (("ntp_coeff", "ntp_coeff"), ("flow_coeff", "flow_coeff"), ("noise_scale", "noise_scale"))
        if key in model_kwargs
    }
    flow_head_config = {
        "hidden_size": text_config.hidden_size,
        "intermediate_size": text_config.intermediate_size,
        "num_hidden_layers": model_kwargs["flow_head_num"],
        "num_attention_heads": model_kwargs["num_attention_heads"],
        "num_key_value_heads": model_kwargs["num_key_value_heads"],
        "max_position_embeddings": text_config.max_position_embeddings,
    }
    return TunaConfig(
        text_config=text_config,
        vision_config=_official_siglip_config(visual_encoder, model_kwargs, siglip_config),
        flow_head_config=flow_head_config,
        visual_encoder=visual_encoder,
        latent_channels=model_kwargs["image_latent_dim"],
        patch_size=model_kwargs["patch_size"],
        vae_config=wan22_vae_config(**(vae_kwargs or {})) if visual_encoder == "vae_siglip" else None,
        use_mask_token=bool(model_kwargs.get("enable_mask_token", False)),
        mask_ratio_min=model_kwargs.get("masked_image_ratio_min", -0.7),
        mask_ratio_max=model_kwargs.get("masked_image_ratio", 0.3),
        understanding_noise_prob=model_kwargs.get("mmu_noise_prob", 0.0),
        understanding_noise_level=model_kwargs.get("mmu_noise_level", 0.1),
        image_token_id=token_ids["img_pad_id"],
        boi_token_id=token_ids["boi_id"],
        eoi_token_id=token_ids["eoi_id"],
        **training,
    )


def _official_siglip_config(visual_encoder, model_kwargs, siglip_config) -> SiglipVisionConfig | None:
    """The SigLIP tower as the official code builds it: resized grid/patch/channels, layers up to the feature layer."""
    if visual_encoder == "patch":
        return None
    if siglip_config is None:
        raise ValueError(f"`siglip_config` is required for the {visual_encoder!r} variant.")
    config = SiglipVisionConfig(**{k: v for k, v in siglip_config.items() if not k.startswith("_")})
    config.image_size = model_kwargs.get("siglip_image_size", config.image_size)
    config.patch_size = model_kwargs.get("siglip_patch_size", config.patch_size)
    config.num_channels = model_kwargs.get("siglip_num_channels", config.num_channels)
    feature_layer = model_kwargs.get("siglip_feature_layer", -2)
    config.num_hidden_layers = (
        feature_layer + 1 if feature_layer >= 0 else config.num_hidden_layers + feature_layer + 1
    )
    config.vision_use_head = False
    return config


# ---------------------------------------------------------------------------------------------------------------
# The converter: official checkpoint → pipeline repository.

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CHECKPOINT_WRAPPERS = ("model", "state_dict")
LLM_LAYER = re.compile(r"^tuna\.model\.layers\.(\d+)\.")
FLOW_HEAD_BLOCK = re.compile(r"^diffusion_head_a\.(\d+)\.")


def load_official_checkpoint(path) -> dict[str, torch.Tensor]:
    """An official `.pt` state dict (or one wrapped in `"model"`/`"state_dict"`), memory-mapped, tensors only."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for wrapper in CHECKPOINT_WRAPPERS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(
            f"`--checkpoint` {path} is not a state dict of tensors (optionally under {CHECKPOINT_WRAPPERS})."
        )
    return checkpoint


def read_official_model_config(path) -> tuple[str, dict]:
    """`(official class, model kwargs)` from an official model YAML (`configs/model/*.yaml`) or a JSON of its keys."""
    import yaml

    values = yaml.safe_load(Path(path).read_text())  # JSON is YAML
    if not isinstance(values, dict) or "_target_" not in values:
        raise ValueError(f"`--official-config` {path} must be a mapping with the model class under `_target_`.")
    return values.pop("_target_"), values


def read_config_json(path) -> dict:
    """A config from a JSON file or from a model directory's `config.json`."""
    path = Path(path)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text())


def load_vae_weights(path) -> dict[str, torch.Tensor]:
    """Wan 2.2 VAE weights in our layout (`model.vae.*`): upstream `Wan2.2_VAE.pth`, or a diffusers model directory."""
    path = Path(path)
    if path.is_dir():
        state_dict = AutoencoderKLWan.from_pretrained(path, torch_dtype=torch.float32).state_dict()
    else:
        upstream = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state_dict = convert_wan22_vae_state_dict(upstream)
    return {f"model.vae.{key}": tensor for key, tensor in state_dict.items()}


def find_missing_layers(state_dict: Mapping[str, torch.Tensor], config: TunaConfig) -> tuple[list[int], list[int]]:
    """Decoder layers and flow-head blocks with no key at all in an official checkpoint (a foundation checkpoint)."""

    def present(pattern):
        return {int(match[1]) for key in state_dict if (match := pattern.match(key))}

    llm, flow = present(LLM_LAYER), present(FLOW_HEAD_BLOCK)
    llm_missing = [i for i in range(config.text_config.num_hidden_layers) if i not in llm]
    flow_missing = [i for i in range(config.flow_head_config.num_hidden_layers) if i not in flow]
    return llm_missing, flow_missing


def base_llm_layers(base_llm, layers: list[int]) -> dict[str, torch.Tensor]:
    """Decoder layers `layers` of a Qwen2.5 checkpoint directory (safetensors), under our names."""
    from safetensors import safe_open

    wanted = tuple(f"model.layers.{i}." for i in layers)
    tensors = {}
    for shard in sorted(Path(base_llm).glob("*.safetensors")):
        with safe_open(shard, framework="pt") as reader:
            for key in reader.keys():  # noqa: SIM118 (a safetensors reader is not iterable)
                if key.startswith(wanted):
                    tensors[key.replace("model.", "model.language_model.", 1)] = reader.get_tensor(key)
    found = {int(key.split(".")[3]) for key in tensors}
    if missing := sorted(set(layers) - found):
        raise ValueError(f"`--base-llm` {base_llm} has no weights for decoder layers {missing}.")
    return tensors


@torch.no_grad()
def initialize_flow_head_block(layer) -> None:
    """The official fresh init of a flow-head block (docs/architecture.md §10): PyTorch-default Linears, zero AdaLN,
    unit norms."""
    for module in layer.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
        elif hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
            module.weight.fill_(1.0)
    layer.modulation.weight.zero_()
    layer.modulation.bias.zero_()


def convert_official_checkpoint(
    checkpoint,
    output,
    tokenizer,
    official_config=None,
    preset: str | None = None,
    llm_config=None,
    siglip_config=None,
    vae=None,
    vae_config=None,
    base_llm=None,
    dtype: str = "bf16",
    max_shard_size: str = "5GB",
    allow_unexpected: bool = False,
    push_to_hub: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """
    Convert an official checkpoint into a pipeline repository at `output` (see `conversion/README.md`): loadable by
    `TunaPipeline.from_pretrained(output)` and `AutoModelForImageTextToText.from_pretrained(output,
    subfolder="transformer")`. Written to a temporary folder beside `output` and renamed at the end.
    """
    from .image_processing_tuna import TunaImageProcessor
    from .pipelines import TunaPipeline
    from .processing_tuna import TunaProcessor
    from .scheduling_tuna import TunaFlowMatchScheduler

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"`--output` {output} already exists; choose a new folder.")
    if dtype not in DTYPES:
        raise ValueError(f"`--dtype` must be one of {list(DTYPES)}, got {dtype!r}.")
    spec = _official_spec(official_config, preset, llm_config, siglip_config)
    text_tokenizer = add_tuna_tokens(AutoTokenizer.from_pretrained(tokenizer))
    state_dict = load_official_checkpoint(checkpoint)

    embeddings = state_dict.get("tuna.model.embed_tokens.weight")
    if embeddings is None:
        raise ValueError("`--checkpoint` has no `tuna.model.embed_tokens.weight`: not an official TUNA state dict.")
    if embeddings.shape[0] != len(text_tokenizer):
        raise ValueError(
            f"The checkpoint's vocabulary has {embeddings.shape[0]} rows but `--tokenizer` with TUNA's four tokens "
            f"has {len(text_tokenizer)}: pass the tokenizer the checkpoint was trained with."
        )
    llm_values = {**spec["llm_config"], "vocab_size": embeddings.shape[0]}
    head = state_dict.get("tuna.lm_head.weight")
    if llm_values.get("tie_word_embeddings") and head is not None and not torch.equal(head, embeddings):
        # A tied base LLM whose fine-tuned head moved away from the embeddings: keep both (tying would drop the head).
        log("The checkpoint's `lm_head` differs from its `embed_tokens`: converted with untied weights.")
        llm_values["tie_word_embeddings"] = False
    visual_encoder = OFFICIAL_VISUAL_ENCODERS.get(spec["official_class"].rsplit(".", 1)[-1])
    if visual_encoder == "vae_siglip":
        vae_kwargs = json.loads(Path(vae_config).read_text()) if vae_config else {}
    elif vae is not None or vae_config is not None:
        raise ValueError("`--vae`/`--vae-config` apply to the Tuna variant only.")
    else:
        vae_kwargs = None
    config = tuna_config_from_official(
        spec["official_class"],
        spec["model_kwargs"],
        llm_values,
        official_token_ids(text_tokenizer),
        spec["siglip_config"],
        vae_kwargs,
    )

    extra = {}
    if vae is not None:
        vae_keys = [key for key in state_dict if key.startswith(OFFICIAL_VAE_PREFIX)]
        if vae_keys:
            log(f"Using the VAE from --vae {vae}; ignoring the checkpoint's {len(vae_keys)} `vae.model.*` tensors.")
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(OFFICIAL_VAE_PREFIX)}
        extra.update(load_vae_weights(vae))
    llm_missing, flow_missing = find_missing_layers(state_dict, config)
    if llm_missing:
        if base_llm is None:
            raise ValueError(
                f"The checkpoint lacks decoder layers {llm_missing} (a foundation checkpoint): pass `--base-llm` "
                "with the Qwen2.5 checkpoint to fill them from."
            )
        extra.update(base_llm_layers(base_llm, llm_missing))
    config.filled_layers = [f"model.language_model.layers.{i}" for i in llm_missing] + [
        f"flow_head.layers.{i}" for i in flow_missing
    ] or None

    with init.no_init_weights():
        model = TunaForUnifiedMultimodal._from_config(config, dtype=DTYPES[dtype])
    if model.model.vae is not None:
        model.model.vae.float()  # the VAE always runs in float32 (official), as `_keep_in_fp32_modules_strict` says
    filled_flow_keys = {
        key for key in model.state_dict() if key.startswith(tuple(f"flow_head.layers.{i}." for i in flow_missing))
    }
    ignored = load_official_state_dict(
        model, state_dict, extra=extra, allow_missing=filled_flow_keys, allow_unexpected=allow_unexpected
    )
    for i in flow_missing:
        initialize_flow_head_block(model.flow_head.layers[i])
    model.tie_weights()
    _log_conversion(log, config, llm_missing, flow_missing, ignored)
    if unused := unused_yaml_keys(spec["model_kwargs"]):
        log(f"Not carried into the config (training or runtime settings of the official code): {', '.join(unused)}")

    processor = TunaProcessor(TunaImageProcessor(), text_tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(config.tuna_variant)
    pipeline = TunaPipeline(transformer=model.eval(), processor=processor, scheduler=scheduler)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output, log)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(output), dir=output.parent))
    try:
        pipeline.save_pretrained(staging, max_shard_size=max_shard_size)
        _write_model_card(staging, output, push_to_hub, spec, pipeline)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"Wrote {output}")
    if push_to_hub:
        upload_repository(output, push_to_hub)
        log(f"Pushed to https://huggingface.co/{push_to_hub}")
    return output


def staging_prefix(output: Path) -> str:
    """`.NAME.HOST-PID.`: the staging folders of a conversion to `output` name their host and process."""
    return f".{output.name}.{_host()}-{os.getpid()}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def remove_stale_staging(output: Path, log: Callable[[str], None]) -> None:
    """Delete the staging folders that killed conversions to `output` on this host left behind (their process no
    longer runs); staging folders of other hosts, or without an owner in their name, are only reported."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.([A-Za-z0-9-]+)-(\d+)\.[^.]+")
    host = _host()
    for folder in output.parent.glob(f".{output.name}.*"):
        match = pattern.fullmatch(folder.name)
        if not folder.is_dir():
            continue
        if match and match[1] == host and not _process_exists(int(match[2])):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"Removed {folder}, left by an interrupted conversion.")
        elif not match or match[1] != host:
            log(f"Found {folder}, maybe left by an interrupted conversion elsewhere: delete it if none runs.")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _official_spec(official_config, preset, llm_config, siglip_config) -> dict:
    if (official_config is None) == (preset is None):
        raise ValueError("Pass exactly one of `--official-config` and `--preset`.")
    if preset is not None:
        if preset not in OFFICIAL_PRESETS:
            raise ValueError(f"`--preset` must be one of {list(OFFICIAL_PRESETS)}, got {preset!r}.")
        spec = dict(OFFICIAL_PRESETS[preset])
    else:
        official_class, model_kwargs = read_official_model_config(official_config)
        spec = {"official_class": official_class, "model_kwargs": model_kwargs, "llm_config": None}
        spec["siglip_config"], spec["base_model"] = None, model_kwargs.get("llm_model_path")
    if llm_config is not None:
        spec["llm_config"] = read_config_json(llm_config)
    if siglip_config is not None:
        spec["siglip_config"] = read_config_json(siglip_config)
    if spec["llm_config"] is None:
        raise ValueError("`--llm-config` is required without `--preset` (the base Qwen2.5 config).")
    return spec


def official_token_ids(tokenizer) -> dict[str, int]:
    """The official names of the span token ids of `tokenizer` (`img_pad_id`, `boi_id`, `eoi_id`)."""
    ids = tuna_token_ids(tokenizer)
    return {"img_pad_id": ids["image_token_id"], "boi_id": ids["boi_token_id"], "eoi_id": ids["eoi_token_id"]}


def _log_conversion(log, config, llm_missing, flow_missing, ignored) -> None:
    log(
        f"{config.tuna_variant}: decoder {config.text_config.num_hidden_layers} layers, flow head "
        f"{config.flow_head_config.num_hidden_layers} blocks, vocabulary {config.text_config.vocab_size}"
    )
    if llm_missing or flow_missing:
        log("Filled (foundation checkpoint):")
        log("  part        | layers | filled from")
        log(f"  decoder     | {llm_missing or '-'} | --base-llm")
        log(f"  flow head   | {flow_missing or '-'} | official fresh init (PyTorch-default Linears, zero AdaLN)")
    if ignored:
        log(f"Ignored {len(ignored)} unexpected keys (--allow-unexpected): {ignored}")


def _write_model_card(folder, output, repo_id, spec, pipeline) -> None:
    filled = pipeline.transformer.config.filled_layers
    provenance = (
        "This is a foundation checkpoint: the conversion filled "
        + ", ".join(f"`{name}`" for name in filled)
        + " (listed in `transformer/config.json` as `filled_layers`); restore them with a short fine-tune."
        if filled
        else "Converted from the official checkpoint; all layers come from it."
    )
    write_model_card(
        folder,
        pipeline,
        model_name=Path(output).name,
        repo_id=repo_id or str(output),
        provenance=provenance,
        license="other",
        base_model=spec.get("base_model") or "Qwen/Qwen2.5-7B-Instruct",
    )


def existing_path(value: str) -> str:
    """A command-line input file or folder, which must exist (else argparse names the flag and the path)."""
    path = Path(value).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value} not found")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official TUNA checkpoint into a pipeline repository.")
    parser.add_argument(
        "--checkpoint", required=True, type=existing_path, help="official inner-model state dict (.pt)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--official-config",
        type=existing_path,
        help="official model YAML (configs/model/*.yaml) or a JSON of its keys",
    )
    source.add_argument("--preset", choices=sorted(OFFICIAL_PRESETS), help="a released official configuration")
    parser.add_argument(
        "--llm-config", type=existing_path, help="base Qwen2.5 config (directory or JSON); the preset's by default"
    )
    parser.add_argument(
        "--siglip-config", type=existing_path, help="SigLIP vision config (directory or JSON) for Tuna and Tuna-R"
    )
    parser.add_argument(
        "--vae", type=existing_path, help="Tuna: Wan2.2_VAE.pth (upstream layout) or a diffusers AutoencoderKLWan dir"
    )
    parser.add_argument(
        "--vae-config", type=existing_path, help="Tuna: JSON of the official Wan VAE constructor arguments"
    )
    parser.add_argument("--tokenizer", required=True, type=existing_path, help="the Qwen2.5 tokenizer directory")
    parser.add_argument(
        "--base-llm", type=existing_path, help="Qwen2.5 checkpoint directory to fill a foundation checkpoint's layers"
    )
    parser.add_argument("--output", required=True, help="new folder for the pipeline repository")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--allow-unexpected", action="store_true", help="skip unmapped checkpoint keys (listed)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the repository to the Hub afterwards")
    args = parser.parse_args(argv)
    convert_official_checkpoint(
        checkpoint=args.checkpoint,
        output=args.output,
        tokenizer=args.tokenizer,
        official_config=args.official_config,
        preset=args.preset,
        llm_config=args.llm_config,
        siglip_config=args.siglip_config,
        vae=args.vae,
        vae_config=args.vae_config,
        base_llm=args.base_llm,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        allow_unexpected=args.allow_unexpected,
        push_to_hub=args.push_to_hub,
    )
