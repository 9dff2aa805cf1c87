"""Configuration of the TUNA family (Tuna, Tuna-R, Tuna-2): one config, three visual front-ends."""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

from ._compat import SubConfigSpec, build_sub_config

VISUAL_ENCODERS = ("vae_siglip", "siglip", "patch")
PREDICTION_TYPES = ("velocity", "x0")

# Tuna predicts the flow velocity in Wan 2.2 latent space; Tuna-R / Tuna-2 predict clean pixels (JiT x0).
DEFAULT_PREDICTION_TYPE = {"vae_siglip": "velocity", "siglip": "x0", "patch": "x0"}
VARIANT_NAMES = {"vae_siglip": "tuna", "siglip": "tuna_r", "patch": "tuna_2"}
# Official training coefficients and noise (model YAMLs; docs/architecture.md §8): Tuna weighs the text loss by 0.2,
# and the pixel variants draw their noise with std 2 (JiT `noise_scale`).
DEFAULT_NTP_COEFF = {"vae_siglip": 0.2, "siglip": 1.0, "patch": 1.0}
DEFAULT_NOISE_SCALE = {"vae_siglip": 1.0, "siglip": 2.0, "patch": 2.0}

# The official flow head always uses a llama3-scaled 1-D RoPE for text positions (`DiffusionHeadConfig`).
FLOW_HEAD_TEXT_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def check_positive(config, *names: str, prefix: str = "") -> None:
    """Each named field of `config` must be a positive number (their types `@strict` checks)."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"`{prefix}{name}` must be positive, got {value!r}.")


@strict
class TunaFlowHeadConfig(PreTrainedConfig):
    r"""
    The flow head ("diffusion head"): `num_hidden_layers` AdaLN-modulated transformer blocks reading the decoder's
    final hidden states, then an AdaLN final layer projecting each token to `patch_size**2 * latent_channels` values.

    Text positions get a 1-D rotate-half RoPE (`rope_parameters`, llama3-scaled), image positions a 3-D RoPE on the
    (frame, row, column) token grid with base `image_rope_theta` (head_dim split 1/4 : 3/8 : 3/8), and the timestep
    slot none (docs/architecture.md §4; official `apply_rope_image3d_text1d`).

    Args:
        hidden_size (`int`, *optional*, defaults to 3584): the width; it must be the decoder's.
        intermediate_size (`int`, *optional*, defaults to 18944): the MLP width.
        num_hidden_layers (`int`, *optional*, defaults to 16): blocks (the official `flow_head_num`).
        num_attention_heads (`int`, *optional*, defaults to 56): attention heads.
        num_key_value_heads (`int`, *optional*, defaults to 14): key/value heads (grouped-query attention).
        head_dim (`int`, *optional*): defaults to `hidden_size // num_attention_heads` (64 in every release); a
            multiple of 8 for the 3-D RoPE.
        hidden_act (`str`, *optional*, defaults to `"silu"`): the MLP activation.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5): epsilon of the blocks' RMSNorms.
        qk_norm_eps (`float`, *optional*, defaults to 1e-6): epsilon of the query/key RMSNorms.
        final_norm_eps (`float`, *optional*, defaults to 1e-6): epsilon of the final layer's RMSNorm.
        max_position_embeddings (`int`, *optional*, defaults to 32768): the text RoPE's table length.
        rope_parameters (`dict`, *optional*): the text RoPE; defaults to the official llama3 scaling (theta 5e5,
            factor 32, original 8192).
        image_rope_theta (`float`, *optional*, defaults to 10000.0): the base of the 3-D image RoPE.
        timestep_embedding_dim (`int`, *optional*, defaults to 256): the sinusoid width of the timestep embedding.
        attention_dropout (`float`, *optional*, defaults to 0.0): dropout on the attention weights in training.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the default weight init.
    """

    model_type = "tuna_flow_head"
    base_config_key = "flow_head_config"

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 16
    num_attention_heads: int = 56
    num_key_value_heads: int = 14
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float | int = 1e-5
    qk_norm_eps: float | int = 1e-6
    final_norm_eps: float | int = 1e-6
    max_position_embeddings: int = 32768
    rope_parameters: dict | None = None
    image_rope_theta: float | int = 10000.0
    timestep_embedding_dim: int = 256
    attention_dropout: float | int = 0.0
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_parameters is None:
            self.rope_parameters = dict(FLOW_HEAD_TEXT_ROPE)
        super().__post_init__(**kwargs)

    def validate_rope(self):
        # The official head keeps llama3's original length (8192) whatever its own: a head no longer than that (the
        # tiny and shapes models) is what the official code builds, though transformers' llama3 check would warn.
        if self.max_position_embeddings > self.rope_parameters.get("original_max_position_embeddings", 0):
            super().validate_rope()

    def validate_architecture(self):
        sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        positive = (*sizes, "head_dim", "max_position_embeddings", "timestep_embedding_dim")
        check_positive(self, *positive, prefix=f"{self.base_config_key}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of "
                f"`num_key_value_heads` ({self.num_key_value_heads})."
            )


@strict
class TunaConfig(PreTrainedConfig):
    r"""
    Configuration of [`TunaForUnifiedMultimodal`] and [`TunaModel`]: one config for the three variants
    (docs/architecture.md §1).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): the Qwen2.5 decoder (vocabulary already resized to the
            tokenizer with TUNA's four added tokens).
        vision_config (`dict` or `PreTrainedConfig`, *optional*): the SigLIP vision tower (`"vae_siglip"`,
            `"siglip"`); `num_hidden_layers` is the number of layers *kept* (the official code drops the last one,
            `siglip_feature_layer=-2`). Unused for `"patch"`.
        flow_head_config (`dict` or [`TunaFlowHeadConfig`], *optional*): the flow head; defaults to the decoder's
            width with 64-dimensional heads.
        visual_encoder (`str`, *optional*, defaults to `"patch"`): `"vae_siglip"` (Tuna: Wan 2.2 VAE encoder →
            SigLIP with a 1×1 patch embed → connector), `"siglip"` (Tuna-R: SigLIP on pixels → connector) or
            `"patch"` (Tuna-2: Conv2d patchify + RMSNorm).
        prediction_type (`str`, *optional*): `"velocity"` (Tuna) or `"x0"` (Tuna-R, Tuna-2; JiT); defaults by
            `visual_encoder`.
        latent_channels (`int`, *optional*, defaults to 3): channels of the flow space (48 Wan 2.2 latent channels,
            or 3 for RGB pixels).
        patch_size (`int`, *optional*, defaults to 16): pixels (or latent pixels) per token side in the flow head
            output, and the Conv2d patch of `"patch"`.
        vae_config (`dict`, *optional*): keyword arguments of `diffusers.AutoencoderKLWan` (Tuna only, see
            `tuna_hf.wan_vae`).
        sample_vae_posterior (`bool`, *optional*, defaults to True): encode images with a posterior sample (official
            behaviour) rather than the mean.
        use_mask_token (`bool`, *optional*, defaults to False): Tuna-2's learned mask token for masked feature
            learning during training.
        mask_ratio_min, mask_ratio_max (`float`, *optional*, defaults to -0.7 and 0.3): per-image masking ratio range
            (≤ 0 means no masking).
        image_token_id, boi_token_id, eoi_token_id (`int`, *optional*): `<|image_pad|>` (every slot of an image
            span), `<|vision_start|>` and `<|vision_end|>`; default Qwen2.5's ids.
        ntp_coeff, flow_coeff (`float`, *optional*): weights of the next-token and flow losses (defaults: the official
            0.2 / 1 for Tuna, 1 / 1 for Tuna-R and Tuna-2).
        noise_scale (`float`, *optional*): standard deviation of the training noise (1 for Tuna, 2 for the JiT pixel
            variants).
        understanding_noise_prob, understanding_noise_level (`float`, *optional*, defaults to 0.0 and 0.1): during
            training, with this probability an understanding image (not an edit source) is seen at
            t = 1 − U(0, level) instead of clean (official `mmu_noise_prob` / `mmu_noise_level` of Tuna-R and Tuna-2,
            0.1 / 0.1 in their model configs; 0 = off).
        filled_layers (`list[str]`, *optional*): layers a converted *foundation* checkpoint lacked and the conversion
            filled (decoder layers from the base LLM, flow-head blocks with the official fresh init), e.g.
            `["model.language_model.layers.5", "flow_head.layers.3"]`; the `restore` training recipe trains these.
        tie_word_embeddings (`bool`, *optional*): follows `text_config.tie_word_embeddings`.
    """

    model_type = "tuna"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
            "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", optional=True),
            "flow_head_config": TunaFlowHeadConfig,
        }
    else:
        sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "flow_head_config": TunaFlowHeadConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    flow_head_config: dict | PreTrainedConfig | None = None
    visual_encoder: str = "patch"
    prediction_type: str | None = None
    latent_channels: int = 3
    patch_size: int = 16
    vae_config: dict | None = None
    sample_vae_posterior: bool = True
    use_mask_token: bool = False
    mask_ratio_min: float | int = -0.7
    mask_ratio_max: float | int = 0.3
    image_token_id: int = 151655
    boi_token_id: int = 151652
    eoi_token_id: int = 151653
    ntp_coeff: float | int | None = None
    flow_coeff: float | int = 1.0
    noise_scale: float | int | None = None
    understanding_noise_prob: float | int = 0.0
    understanding_noise_level: float | int = 0.1
    filled_layers: list[str] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.visual_encoder not in VISUAL_ENCODERS:
            raise ValueError(f"`visual_encoder` must be one of {VISUAL_ENCODERS}, got {self.visual_encoder!r}.")
        if self.visual_encoder == "patch":
            self.vision_config = None
        elif self.vision_config is None:
            self.vision_config = {"model_type": "siglip_vision_model"}
        if self.prediction_type is None:
            self.prediction_type = DEFAULT_PREDICTION_TYPE[self.visual_encoder]
        if self.ntp_coeff is None:
            self.ntp_coeff = DEFAULT_NTP_COEFF[self.visual_encoder]
        if self.noise_scale is None:
            self.noise_scale = DEFAULT_NOISE_SCALE[self.visual_encoder]
        # Built here rather than by the base class, so that the flow head's defaults can follow the decoder (and on
        # transformers < 5.20, whose base class builds none).
        self.text_config = build_sub_config("text_config", self.text_config, AutoConfig, "qwen2")
        self.vision_config = build_sub_config(
            "vision_config", self.vision_config, AutoConfig, "siglip_vision_model", optional=True
        )
        text = self.text_config
        if self.flow_head_config is None or isinstance(self.flow_head_config, dict):
            # What a (partial) flow head config leaves out follows the decoder it reads.
            heads = text.hidden_size // 64
            self.flow_head_config = {
                "hidden_size": text.hidden_size,
                "intermediate_size": text.intermediate_size,
                "num_attention_heads": heads,
                "num_key_value_heads": max(1, heads // 4),
                "max_position_embeddings": text.max_position_embeddings,
                **(self.flow_head_config or {}),
            }
        self.flow_head_config = build_sub_config("flow_head_config", self.flow_head_config, TunaFlowHeadConfig)
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = self.text_config.tie_word_embeddings

    def validate_architecture(self):
        check_positive(self, "patch_size", "latent_channels")
        if self.context_length <= 0:
            raise ValueError(f"`text_config.max_position_embeddings` must be positive, got {self.context_length}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        if self.flow_head_config.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"`flow_head_config.hidden_size` ({self.flow_head_config.hidden_size}) must equal the decoder's "
                f"`text_config.hidden_size` ({self.text_config.hidden_size}): the flow head reads its hidden states."
            )
        if self.visual_encoder == "vae_siglip" and self.vae_config is None:
            raise ValueError("`vae_config` is required for `visual_encoder='vae_siglip'` (the Wan 2.2 VAE).")
        if self.visual_encoder == "siglip" and self.vision_config.patch_size != self.patch_size:
            raise ValueError(
                f"`vision_config.patch_size` ({self.vision_config.patch_size}) must equal `patch_size` "
                f"({self.patch_size}) for `visual_encoder='siglip'`: one image token per flow-head patch."
            )

    def validate_tuna_token_ids(self):
        """The image span's tokens are distinct tokens of the decoder's vocabulary."""
        vocab_size = self.text_config.vocab_size
        names = ("image_token_id", "boi_token_id", "eoi_token_id")
        for name in names:
            value = getattr(self, name)
            if not 0 <= value < vocab_size:
                raise ValueError(
                    f"`{name}` must be a token of the decoder's vocabulary (0 ≤ id < `text_config.vocab_size` = "
                    f"{vocab_size}), got {value}."
                )
        if len({getattr(self, name) for name in names}) < len(names):
            raise ValueError(f"`{'`, `'.join(names)}` must be distinct, got {[getattr(self, n) for n in names]}.")

    def validate_training(self):
        """Loss weights, training noise and masking ranges (finite numbers)."""
        check_positive(self, "noise_scale")
        for name in ("ntp_coeff", "flow_coeff", "noise_scale", "mask_ratio_min", "mask_ratio_max"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be a finite number, got {getattr(self, name)}.")
        for name in ("ntp_coeff", "flow_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be ≥ 0, got {getattr(self, name)}.")
        for name in ("understanding_noise_prob", "understanding_noise_level"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError(
                f"`mask_ratio_min` ({self.mask_ratio_min}) must not exceed `mask_ratio_max` ({self.mask_ratio_max})."
            )

    @property
    def tuna_variant(self) -> str:
        """`"tuna"`, `"tuna_r"` or `"tuna_2"`: the paper's name of this visual front-end. (Not `variant`: transformers
        sets config attributes named like `from_pretrained`'s arguments, and `variant=` names a weights variant.)"""
        return VARIANT_NAMES[self.visual_encoder]

    @property
    def context_length(self) -> int:
        """The decoder's context: `max_position_embeddings`, extended by the factor of a scaled RoPE (linear,
        dynamic, yarn, longrope, llama3) over its original length, as transformers' Qwen2 allows."""
        text = self.text_config
        rope = text.rope_parameters or {}
        if rope.get("rope_type", "default") == "default" or not rope.get("factor"):
            return text.max_position_embeddings
        original = rope.get("original_max_position_embeddings") or text.max_position_embeddings
        return max(text.max_position_embeddings, int(original * rope["factor"]))

    @property
    def pixels_per_token(self) -> int:
        """Image pixels per token side (16 in every released TUNA)."""
        if self.visual_encoder == "vae_siglip":
            return self.patch_size * self.vae_config["scale_factor_spatial"]
        return self.patch_size

    @property
    def frames_per_latent_frame(self) -> int:
        """Video frames folded into one token frame (Wan 2.2 VAE: 4, after a first frame on its own)."""
        if self.visual_encoder == "vae_siglip":
            return self.vae_config["scale_factor_temporal"]
        return 1
