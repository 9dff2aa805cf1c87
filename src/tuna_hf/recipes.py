"""Named training recipes: which parameters train, with which learning rate, full or LoRA.

* `stage1` (the TUNA paper's first stage; docs/architecture.md §8): the LLM is frozen; the visual encoder, connector,
  timestep embedder, mask token and flow head train.
* `stage2`: everything but the VAE (the official `frozen_params: ['vae']`), at the official 2e-5.
* `sft`: as stage 2 with a lower learning rate.
* `restore`: only the layers a foundation-checkpoint conversion filled (`config.filled_layers`).
* `lora-understanding` / `lora-generation` / `lora-all`: PEFT LoRA on the decoder's, the flow head's or both's
  attention and MLP projections (explicit targets: PEFT's `all-linear` would also adapt the connector and heads).
"""

from dataclasses import dataclass

LINEAR_PROJECTIONS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
DECODER_LORA_TARGETS = rf"model\.language_model\.layers\.\d+\.{LINEAR_PROJECTIONS}"
FLOW_HEAD_LORA_TARGETS = rf"flow_head\.layers\.\d+\.{LINEAR_PROJECTIONS}"
ALWAYS_FROZEN = ("model.vae.",)


@dataclass(frozen=True)
class TrainingRecipe:
    """`trainable`: parameter-name prefixes that train (`None`: the config's `filled_layers`); `lora_targets`: a
    PEFT `target_modules` regex, in which case only the LoRA weights train."""

    name: str
    learning_rate: float
    trainable: tuple[str, ...] | None = ()
    lora_targets: str | None = None


RECIPES = {
    recipe.name: recipe
    for recipe in (
        TrainingRecipe(
            "stage1",
            1e-4,
            (
                "model.vision_tower.",
                "model.connector.",
                "model.patch_embed.",
                "model.timestep_embedder.",
                "model.mask_token",
                "flow_head.",
            ),
        ),
        TrainingRecipe("stage2", 2e-5, ("",)),
        TrainingRecipe("sft", 1e-5, ("",)),
        TrainingRecipe("restore", 2e-5, None),
        TrainingRecipe("lora-understanding", 1e-4, lora_targets=DECODER_LORA_TARGETS),
        TrainingRecipe("lora-generation", 1e-4, lora_targets=FLOW_HEAD_LORA_TARGETS),
        TrainingRecipe("lora-all", 1e-4, lora_targets=f"({DECODER_LORA_TARGETS}|{FLOW_HEAD_LORA_TARGETS})"),
    )
}


def apply_recipe(model, name: str, lora_rank: int = 16, lora_alpha: int = 32) -> TrainingRecipe:
    """Set `requires_grad` on `model` (a `TunaForUnifiedMultimodal`) for recipe `name`, adding a LoRA adapter
    (`"default"`) for the LoRA recipes. Returns the recipe (its `learning_rate` is the suggested one)."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; expected one of {list(RECIPES)}.")
    recipe = RECIPES[name]
    prefixes = recipe.trainable
    if prefixes is None:
        filled = model.config.filled_layers
        if not filled:
            raise ValueError(
                "The `restore` recipe needs `config.filled_layers` (set by converting a foundation checkpoint)."
            )
        prefixes = tuple(f"{layer}." for layer in filled)
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad = parameter_name.startswith(prefixes) and not parameter_name.startswith(ALWAYS_FROZEN)
    if recipe.lora_targets is not None:
        from peft import LoraConfig

        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=recipe.lora_targets)
        model.add_adapter(config)
    return recipe


def count_trainable_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
