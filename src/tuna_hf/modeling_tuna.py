"""TUNA: a Qwen2.5 decoder with omni attention, three visual front-ends, an LM head and a flow head.

One sequence holds text and image spans. A span is `[timestep slot, image token 1 … image token N]` (all
`<|image_pad|>` in `input_ids`, between `<|vision_start|>` and `<|vision_end|>`): the slot carries the embedding of
the flow time t (t = 1 clean, 0 noise), the tokens the visual features. Attention is causal, plus bidirectional inside
each span (TUNA paper §3.2, official `omni_attn_mask_naive`). The LM head answers in text; the flow head reads the
decoder's final hidden states and predicts, per image token, the velocity (Tuna) or the clean pixels (Tuna-R/Tuna-2).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel, SiglipVisionModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, eager_attention_forward
from transformers.models.siglip.modeling_siglip import SiglipEncoder, SiglipVisionEmbeddings
from transformers.utils import ModelOutput

from .configuration_tuna import TunaConfig, TunaFlowHeadConfig
from .losses import flow_loss, interpolate, sample_flow_times, sample_understanding_times
from .processing_tuna import add_tuna_tokens, tuna_token_ids
from .wan_vae import sample_wan_posterior


@dataclass
class TunaImageSpans:
    """Where the images sit: for every position, the image owning it (-1 for text) and its slot in the span."""

    image_index: torch.LongTensor
    slot: torch.LongTensor

    @classmethod
    def from_input_ids(cls, input_ids: torch.LongTensor, image_token_id: int) -> "TunaImageSpans":
        """Each maximal run of `image_token_id` is one span; spans are numbered in row-major order."""
        in_span = input_ids == image_token_id
        starts = in_span & ~F.pad(in_span[:, :-1], (1, 0), value=False)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        span_start = torch.where(starts, positions, -1).cummax(dim=1).values
        numbering = starts.flatten().cumsum(0).view_as(input_ids) - 1
        return cls(torch.where(in_span, numbering, -1), torch.where(in_span, positions - span_start, -1))

    @property
    def in_span(self) -> torch.BoolTensor:
        return self.image_index >= 0

    @property
    def is_image_token(self) -> torch.BoolTensor:
        return self.slot > 0

    @property
    def is_text(self) -> torch.BoolTensor:
        return self.image_index < 0

    @property
    def num_images(self) -> int:
        return int(self.image_index.max()) + 1 if self.in_span.any() else 0

    def image_rows(self) -> torch.LongTensor:
        """The row (sample) each image sits in, `[num_images]`."""
        return (self.slot == 0).nonzero()[:, 0]

    def lengths(self) -> torch.LongTensor:
        return torch.bincount(self.image_index[self.in_span], minlength=self.num_images)

    def spread(self, per_image: torch.Tensor, fill: float) -> torch.Tensor:
        """`per_image[k]` on every position of span k, `fill` elsewhere: `[num_images, D]` → `[B, L, D]`."""
        values = per_image[self.image_index.clamp(min=0)]
        return torch.where(self.in_span[..., None], values, torch.full_like(values, fill))

    def token_grid_coordinates(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(frame, row, column) of every image token on its `grid = (T, h, w)`, frame-major then raster order."""
        _, height, width = grid
        token = (self.slot - 1).clamp(min=0)
        return torch.stack([token // (height * width), token // width % height, token % width], dim=-1)


@dataclass
class TunaModelOutputWithPast(ModelOutput):
    """Decoder outputs, plus what the flow head needs: the image spans, the timestep embeddings and the token grid."""

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.LongTensor | None = None
    image_spans: TunaImageSpans | None = None
    timestep_embeds: torch.FloatTensor | None = None
    image_grid: tuple[int, int, int] | None = None


@dataclass
class TunaCausalLMOutputWithPast(ModelOutput):
    """`flow_prediction`: `[num_images, C, T, H, W]` velocity (Tuna) or x0 (Tuna-R/Tuna-2), when `timesteps` is given.
    `loss` = `ntp_coeff · ntp_loss + flow_coeff · flow_loss` in training."""

    loss: torch.FloatTensor | None = None
    ntp_loss: torch.FloatTensor | None = None
    flow_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    flow_prediction: torch.FloatTensor | None = None
    flow_head_past_key_values: Cache | None = None


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation, computed in float32 as the official `modulate`."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs `(x[2i], x[2i+1])` by −θ: the official 3-D RoPE convention (row vector × [[c, −s], [s, c]])."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([even * cos + odd * sin, odd * cos - even * sin], dim=-1).flatten(-2)


def span_modulation(modulation: nn.Linear, timestep_embeds, spans, hidden_states, fills: tuple[float, ...]):
    """AdaLN parameters per position: image k's on span k (timestep slot included), the identity `fills` elsewhere."""
    if spans is None:
        return tuple(torch.full_like(hidden_states[..., :1], fill) for fill in fills)
    chunks = modulation(F.silu(timestep_embeds)).chunk(len(fills), dim=1)
    return tuple(spans.spread(chunk, fill) for chunk, fill in zip(chunks, fills))


class TunaTimestepEmbedder(nn.Module):
    """Sinusoid of the raw flow time t ∈ [0, 1] (cos first, as the official `TimestepEmbedder`) → MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = nn.Linear(frequency_dim, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.frequency_dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        angles = timesteps[:, None].float() * torch.exp(-math.log(10000) * exponent)[None]
        frequencies = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(dtype)
        return self.linear_2(self.act(self.linear_1(frequencies)))


class TunaVisionTower(nn.Module):
    """SigLIP without post-LayerNorm or head (features of the last kept layer); frames are folded into the batch."""

    def __init__(self, config):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = images.shape
        frames_in_batch = images.transpose(1, 2).reshape(batch * frames, channels, height, width)
        embeddings = self.embeddings(frames_in_batch, interpolate_pos_encoding=True)
        features = self.encoder(inputs_embeds=embeddings).last_hidden_state
        return features.reshape(batch, frames * features.shape[1], -1)


class TunaVisionConnector(nn.Module):
    """The MLP connector from SigLIP features to the decoder width: RMSNorm → Linear → GELU → Linear."""

    def __init__(self, vision_hidden_size: int, hidden_size: int):
        super().__init__()
        self.norm = Qwen2RMSNorm(vision_hidden_size, eps=1e-6)
        self.linear_1 = nn.Linear(vision_hidden_size, hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.norm(features))))


class TunaPatchEmbedding(nn.Module):
    """Tuna-2's encoder-free front-end: Conv2d patchify per frame, then RMSNorm (eps=None, as the official)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.RMSNorm(hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        frames = [self.proj(images[:, :, i]).flatten(2).transpose(1, 2) for i in range(images.shape[2])]
        return self.norm(torch.cat(frames, dim=1))


class TunaFlowHeadAttention(nn.Module):
    """GQA with q/k RMSNorm and TUNA's three RoPE schemes: 1-D on text, none on the timestep slot, 3-D on images."""

    def __init__(self, config: TunaFlowHeadConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = Qwen2RMSNorm(self.head_dim, eps=config.qk_norm_eps)
        self.k_norm = Qwen2RMSNorm(self.head_dim, eps=config.qk_norm_eps)

    def forward(
        self,
        hidden_states,
        attention_mask,
        text_rope,
        image_rope,
        spans,
        attn_implementation,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = self._apply_rope(query, key, text_rope, image_rope, spans)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention_forward)
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous())

    @staticmethod
    def _apply_rope(query, key, text_rope, image_rope, spans):
        text_query, text_key = apply_rotary_pos_emb(query, key, *text_rope)
        if spans is None:
            return text_query, text_key
        cos, sin = (t.unsqueeze(1) for t in image_rope)
        is_text = spans.is_text[:, None, :, None]
        is_image = spans.is_image_token[:, None, :, None]
        query = torch.where(is_text, text_query, torch.where(is_image, rotate_interleaved(query, cos, sin), query))
        key = torch.where(is_text, text_key, torch.where(is_image, rotate_interleaved(key, cos, sin), key))
        return query, key


class TunaFlowHeadLayer(GradientCheckpointingLayer):
    """Transformer block with AdaLN-Zero; only span positions are modulated, text positions pass through unmodulated."""

    def __init__(self, config: TunaFlowHeadConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TunaFlowHeadAttention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.modulation = nn.Linear(config.hidden_size, 6 * config.hidden_size)

    def forward(self, hidden_states, timestep_embeds, spans, attention_mask, text_rope, image_rope, **kwargs):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = span_modulation(
            self.modulation, timestep_embeds, spans, hidden_states, fills=(0, 0, 1, 0, 0, 1)
        )
        attn_input = modulate(self.input_layernorm(hidden_states), shift_msa, scale_msa)
        attn_output = self.self_attn(attn_input, attention_mask, text_rope, image_rope, spans, **kwargs)
        hidden_states = hidden_states + gate_msa * attn_output
        mlp_input = modulate(self.post_attention_layernorm(hidden_states), shift_mlp, scale_mlp)
        return hidden_states + gate_mlp * self.mlp(mlp_input)


class TunaFlowHeadFinalLayer(nn.Module):
    """RMSNorm, AdaLN (shift, scale; span positions only) and the projection to `patch_size² · channels` per token."""

    def __init__(self, config: TunaFlowHeadConfig, out_features: int):
        super().__init__()
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.final_norm_eps)
        self.modulation = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, out_features)

    def forward(self, hidden_states, timestep_embeds, spans):
        shift, scale = span_modulation(self.modulation, timestep_embeds, spans, hidden_states, fills=(0, 0))
        return self.proj(modulate(self.norm(hidden_states), shift, scale))


class TunaFlowHead(nn.Module):
    """The flow head over the decoder's final (normed) hidden states of the whole sequence."""

    def __init__(self, config: TunaFlowHeadConfig, out_features: int):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([TunaFlowHeadLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layer = TunaFlowHeadFinalLayer(config, out_features)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, hidden_states, timestep_embeds, spans, grid, attention_mask, position_ids, **kwargs):
        """`attention_mask` is the decoder's omni mask; pass the decoder's `attn_implementation` it was built for."""
        text_rope = self.rotary_emb(hidden_states, position_ids)
        image_rope = self.image_rotary_embedding(spans, grid, hidden_states.dtype) if spans is not None else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, timestep_embeds, spans, attention_mask, text_rope, image_rope, **kwargs
            )
        return self.final_layer(hidden_states, timestep_embeds, spans)

    def image_rotary_embedding(self, spans, grid, dtype):
        """cos/sin `[B, L, head_dim/2]` of the 3-D RoPE: pairs split t : h : w = 1/4 : 3/8 : 3/8 of the head dim."""
        head_dim, theta = self.config.head_dim, self.config.image_rope_theta
        axis_dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
        coordinates = spans.token_grid_coordinates(grid).float()
        angles = torch.cat(
            [
                coordinates[..., axis, None]
                * (1.0 / theta ** (torch.arange(0, dim, 2, device=coordinates.device) / dim))
                for axis, dim in enumerate(axis_dims)
            ],
            dim=-1,
        )
        return angles.cos().to(dtype), angles.sin().to(dtype)


class TunaPreTrainedModel(PreTrainedModel):
    config: TunaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "TunaFlowHeadLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _keep_in_fp32_modules_strict = ["vae"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """The official fresh init: zero AdaLN and output projections, N(0, 0.02) timestep MLP, xavier patch conv."""
        super()._init_weights(module)
        if isinstance(module, TunaFlowHeadLayer):
            init.zeros_(module.modulation.weight)
            init.zeros_(module.modulation.bias)
        elif isinstance(module, TunaFlowHeadFinalLayer):
            for linear in (module.modulation, module.proj):
                init.zeros_(linear.weight)
                init.zeros_(linear.bias)
        elif isinstance(module, TunaTimestepEmbedder):
            init.normal_(module.linear_1.weight, std=0.02)
            init.normal_(module.linear_2.weight, std=0.02)
        elif isinstance(module, SiglipVisionEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, TunaPatchEmbedding):
            init.xavier_uniform_(module.proj.weight.view(module.proj.weight.shape[0], -1))
            init.zeros_(module.proj.bias)
        elif isinstance(module, TunaModel) and module.mask_token is not None:
            init.normal_(module.mask_token, std=module.mask_token.shape[-1] ** -0.5)


class TunaModel(TunaPreTrainedModel):
    """Decoder + visual front-end + timestep embedder, without heads."""

    def __init__(self, config: TunaConfig):
        super().__init__(config)
        hidden_size = config.text_config.hidden_size
        self.language_model = AutoModel.from_config(config.text_config)
        self.timestep_embedder = TunaTimestepEmbedder(hidden_size, config.flow_head_config.timestep_embedding_dim)
        self.vae = AutoencoderKLWan(**config.vae_config) if config.visual_encoder == "vae_siglip" else None
        if config.visual_encoder == "patch":
            self.patch_embed = TunaPatchEmbedding(config.latent_channels, hidden_size, config.patch_size)
        else:
            self.vision_tower = TunaVisionTower(config.vision_config)
            self.connector = TunaVisionConnector(config.vision_config.hidden_size, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if config.use_mask_token else None
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] `[B, 3, (T,) H, W]` → the flow space: normalised Wan latents (Tuna) or the pixels."""
        pixel_values = self._check_pixels(pixel_values)
        if self.vae is None:
            return pixel_values.to(self.dtype)
        latents = sample_wan_posterior(
            self.vae, pixel_values.to(self.vae.dtype), generator=generator, sample=self.config.sample_vae_posterior
        )
        return latents.to(self.dtype)

    def get_image_features(self, image_latents: torch.Tensor) -> torch.Tensor:
        """Flow-space images `[n, C, T, H, W]` → visual tokens `[n, T·h·w, hidden]` (frame-major, raster order)."""
        image_latents = image_latents.to(self.dtype)
        if self.config.visual_encoder == "patch":
            features = self.patch_embed(image_latents)
        else:
            features = self.connector(self.vision_tower(image_latents))
        if self.training and self.mask_token is not None:
            features = self.mask_features(features)
        return features

    def mask_features(self, features: torch.Tensor) -> torch.Tensor:
        """Masked feature learning (Tuna-2 paper; official DeTok-style masking in training): per image, a ratio is
        drawn from U(mask_ratio_min, mask_ratio_max) and that share of its tokens (none when ≤ 0, so ~70 % of images
        with the official range) is replaced by the learned mask token."""
        num_images, num_tokens = features.shape[:2]
        ratios = torch.empty(num_images, device=features.device).uniform_(
            self.config.mask_ratio_min, self.config.mask_ratio_max
        )
        num_masked = (num_tokens * ratios).long().clamp(min=0)  # int() truncation, as officially
        rank = torch.rand(num_images, num_tokens, device=features.device).argsort(dim=1).argsort(dim=1)
        masked = rank < num_masked[:, None]
        return torch.where(masked[..., None], self.mask_token.to(features.dtype), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_latents: torch.FloatTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> TunaModelOutputWithPast:
        r"""
        pixel_values (`[num_images, 3, H, W]` or `[num_images, 3, T, H, W]`, in [-1, 1]):
            Images (or video frames) in the order of the spans in `input_ids`; Tuna encodes them with its VAE.
        image_latents (`[num_images, C, T, H, W]`):
            The images already in the flow space (normalised Wan 2.2 latents for Tuna, pixels otherwise), e.g. cached
            VAE latents or the noisy sample x_t being denoised. Exclusive with `pixel_values`.
        timesteps (`[num_images]`):
            Flow time of each image, 1 = clean (default), 0 = pure noise.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if pixel_values is not None and image_latents is not None:
            raise ValueError("Pass either `pixel_values` or `image_latents`, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config.text_config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        self._check_context_length(inputs_embeds.shape[1] + past_length)
        if position_ids is None:
            position_ids = torch.arange(
                past_length, past_length + inputs_embeds.shape[1], device=inputs_embeds.device
            )[None]

        if pixel_values is not None:
            image_latents = self.encode_images(pixel_values)
        spans = timestep_embeds = grid = None
        if image_latents is not None:
            if input_ids is None:
                raise ValueError("Images need `input_ids`: their `<|image_pad|>` spans say where the images go.")
            image_latents = self._check_image_latents(image_latents)
            spans = TunaImageSpans.from_input_ids(input_ids, self.config.image_token_id)
            timesteps = self._check_timesteps(timesteps, image_latents)
            timestep_embeds = self.timestep_embedder(timesteps, inputs_embeds.dtype)
            image_embeds = self.get_image_features(image_latents)
            self._check_spans(spans, image_embeds)
            grid = self.token_grid(image_latents)
            inputs_embeds = self._insert_images(inputs_embeds, spans, timestep_embeds, image_embeds)
        elif input_ids is not None and past_length == 0 and (input_ids == self.config.image_token_id).any():
            raise ValueError(
                "`input_ids` contain image spans but neither `pixel_values` nor `image_latents` was given."
            )

        mask = create_causal_mask(
            config=self.config.text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
            block_sequence_ids=self._block_ids(spans, past_length),
        )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask={"full_attention": mask},
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        return TunaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=mask,
            position_ids=position_ids,
            image_spans=spans,
            timestep_embeds=timestep_embeds,
            image_grid=grid,
        )

    @staticmethod
    def _block_ids(spans: TunaImageSpans | None, past_length: int) -> torch.LongTensor | None:
        """Span numbers over the key positions (cached prefix + new tokens); the cached prefix counts as text here."""
        if spans is None:
            return None
        return F.pad(spans.image_index, (past_length, 0), value=-1)

    def token_grid(self, image_latents: torch.Tensor) -> tuple[int, int, int]:
        """(T, h, w) token grid of flow-space images."""
        _, _, frames, height, width = image_latents.shape
        return frames, height // self.config.patch_size, width // self.config.patch_size

    def _insert_images(self, inputs_embeds, spans, timestep_embeds, image_embeds):
        """Slot 0 of span k gets the timestep embedding of image k, slot j > 0 its (j-1)-th visual token."""
        span_values = torch.cat([timestep_embeds[:, None], image_embeds], dim=1)
        values = span_values[spans.image_index.clamp(min=0), spans.slot.clamp(min=0)]
        return torch.where(spans.in_span[..., None], values.to(inputs_embeds.dtype), inputs_embeds)

    def _check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(pixel_values):
            raise TypeError(f"`pixel_values` must be floating point in [-1, 1], got {pixel_values.dtype}.")
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(2)
        if pixel_values.dim() != 5 or pixel_values.shape[1] != 3:
            raise ValueError(f"`pixel_values` must be [num_images, 3, (T,) H, W], got {tuple(pixel_values.shape)}.")
        self._check_device("pixel_values", pixel_values)
        step = self.config.pixels_per_token
        frames, height, width = pixel_values.shape[2:]
        if height % step or width % step or height == 0 or width == 0:
            raise ValueError(
                f"`pixel_values` height and width must be positive multiples of {step}, got {height}×{width}."
            )
        if (frames - 1) % self.config.frames_per_latent_frame:
            raise ValueError(
                f"`pixel_values` must have 1 + {self.config.frames_per_latent_frame}·k frames for this VAE, got {frames}."
            )
        return pixel_values

    def _check_image_latents(self, image_latents: torch.Tensor) -> torch.Tensor:
        expected = self.config.latent_channels
        if image_latents.dim() != 5 or image_latents.shape[1] != expected:
            raise ValueError(
                f"`image_latents` must be [num_images, {expected}, T, H, W], got {tuple(image_latents.shape)}."
            )
        self._check_device("image_latents", image_latents)
        height, width = image_latents.shape[3:]
        if height % self.config.patch_size or width % self.config.patch_size:
            raise ValueError(
                f"`image_latents` height and width must be multiples of patch_size={self.config.patch_size}, "
                f"got {height}×{width}."
            )
        return image_latents

    def _check_timesteps(self, timesteps, image_latents):
        num_images = image_latents.shape[0]
        if timesteps is None:
            return torch.ones(num_images, device=image_latents.device)
        timesteps = torch.as_tensor(timesteps, device=image_latents.device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(num_images)
        if timesteps.numel() != num_images:
            raise ValueError(f"`timesteps` needs one value per image ({num_images}), got {timesteps.numel()}.")
        return timesteps

    def _check_spans(self, spans: TunaImageSpans, image_embeds: torch.Tensor):
        num_images, tokens_per_image = image_embeds.shape[:2]
        if spans.num_images != num_images:
            raise ValueError(
                f"`input_ids` hold {spans.num_images} image span(s) but {num_images} image(s) were given."
            )
        lengths = spans.lengths()
        if (lengths != tokens_per_image + 1).any():
            raise ValueError(
                f"Each image span must have 1 timestep slot + {tokens_per_image} image tokens = "
                f"{tokens_per_image + 1} `<|image_pad|>` tokens for these images; spans have {lengths.tolist()}."
            )

    def _check_context_length(self, length: int):
        limit = self.config.text_config.max_position_embeddings
        if length > limit:
            raise ValueError(
                f"The sequence ({length} tokens) exceeds the context of {limit} tokens (max_position_embeddings)."
            )

    def _check_device(self, name: str, tensor: torch.Tensor):
        if tensor.device != self.device:
            raise ValueError(f"`{name}` is on {tensor.device} but the model is on {self.device}.")


class TunaForUnifiedMultimodal(TunaPreTrainedModel, GenerationMixin):
    """TUNA with its two heads: the LM head (understanding, `generate()`) and the flow head (generation, editing)."""

    output_modalities = ("image", "text")
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: TunaConfig):
        super().__init__(config)
        self.loss_type = "ForCausalLM"  # the text loss; transformers would guess it from the class name
        self.model = TunaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        out_features = config.patch_size**2 * config.latent_channels
        self.flow_head = TunaFlowHead(config.flow_head_config, out_features)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    @classmethod
    def from_pretrained_parts(
        cls,
        llm: str,
        tokenizer,
        visual_encoder: str = "patch",
        vision_tower: str | None = None,
        vae: str | None = None,
        **config_kwargs,
    ) -> "TunaForUnifiedMultimodal":
        """A fresh TUNA from pretrained parts, as the official code builds one before stage-1 training.

        `llm` is a Qwen2.5 checkpoint; `tokenizer` its tokenizer, which gets TUNA's four tokens and to whose length
        the vocabulary is resized (the official `resize_token_embeddings(len(tokenizer))` shrinks Qwen's padded
        vocabulary). `vision_tower` is a SigLIP checkpoint (Tuna, Tuna-R): only tensors whose shapes still match the
        TUNA tower are warm-started, as the official code does. `vae` is a diffusers `AutoencoderKLWan` directory
        (Tuna). `config_kwargs` go to [`TunaConfig`] (e.g. `vision_config`, `flow_head_config`, `vae_config`).
        """
        add_tuna_tokens(tokenizer)
        language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32)
        language_model.resize_token_embeddings(len(tokenizer))
        pretrained_vision = SiglipVisionModel.from_pretrained(vision_tower) if vision_tower else None
        pretrained_vae = AutoencoderKLWan.from_pretrained(vae) if vae else None
        if visual_encoder != "patch" and "vision_config" not in config_kwargs and pretrained_vision is not None:
            config_kwargs["vision_config"] = pretrained_vision.config
        if visual_encoder == "vae_siglip" and "vae_config" not in config_kwargs and pretrained_vae is not None:
            config_kwargs["vae_config"] = dict(pretrained_vae.config)
        config = TunaConfig(
            text_config=language_model.config,
            visual_encoder=visual_encoder,
            **tuna_token_ids(tokenizer),
            **config_kwargs,
        )
        model = cls(config)
        model.model.language_model.load_state_dict(language_model.model.state_dict())
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
        if pretrained_vision is not None:
            own = model.model.vision_tower.state_dict()
            matching = {
                key: value
                for key, value in pretrained_vision.state_dict().items()
                if key in own and own[key].shape == value.shape
            }
            model.model.vision_tower.load_state_dict(matching, strict=False)
        if pretrained_vae is not None:
            model.model.vae.load_state_dict(pretrained_vae.state_dict())
        return model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_latents: torch.FloatTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        flow_head_past_key_values: Cache | None = None,
        generation_targets: torch.BoolTensor | None = None,
        flow_noise: torch.FloatTensor | None = None,
        **kwargs,
    ) -> TunaCausalLMOutputWithPast:
        r"""
        See [`TunaModel.forward`] for the image arguments. When `timesteps` is given, the images are being denoised:
        the flow head runs and `flow_prediction` holds its prediction for every image.

        flow_head_past_key_values (`Cache`, *optional*):
            The flow head's own key/value cache, aligned with `past_key_values`. Passing one runs the flow head (also
            without images, to cache a text prompt) and appends the new tokens' keys and values to it. A prompt's
            flow-head states do not depend on the image being denoised (anatomy §9), so the pipelines fill both caches
            once and then run only the image span at each denoising step.
        labels (`[B, L]`, *optional*):
            Next-token targets (-100 where no loss), for the text loss.
        generation_targets (`[num_images]` bool, *optional*):
            Training on clean images: the marked ones are generation targets, noised to a sampled flow time (or
            `timesteps`) with `flow_noise` (default: fresh noise of std `config.noise_scale`); the others are
            understanding inputs or edit sources, seen at t = 1 (see `config.understanding_noise_prob`). The flow
            loss (velocity MSE for Tuna, the JiT x0 loss otherwise) joins the text loss:
            `loss = ntp_coeff · ntp_loss + flow_coeff · flow_loss`.
        """
        flow_training = None
        if generation_targets is not None:
            image_latents, timesteps, flow_training = self._noise_for_training(
                input_ids, pixel_values, image_latents, timesteps, generation_targets, flow_noise
            )
            pixel_values = None
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_latents=image_latents,
            timesteps=timesteps,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        ntp_loss = None
        if labels is not None:
            ntp_loss = self.loss_function(logits, labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
            ntp_loss = torch.nan_to_num(ntp_loss)  # no answer token in the batch: 0, as the official `ntp_loss`

        flow_prediction = None
        denoising = timesteps is not None and outputs.image_spans is not None
        if denoising or flow_head_past_key_values is not None:
            flow_prediction = self.predict_flow(outputs, past_key_values=flow_head_past_key_values, **kwargs)
        flow_loss_value = None
        if flow_training is not None and flow_training["targets"].any():
            targets = flow_training["targets"]
            flow_loss_value = flow_loss(
                flow_prediction[targets],
                flow_training["clean"][targets],
                flow_training["noise"][targets],
                timesteps[targets],
                self.config.prediction_type,
            )
        loss = None
        if ntp_loss is not None or flow_loss_value is not None:
            loss = sum(
                coeff * value
                for coeff, value in ((self.config.ntp_coeff, ntp_loss), (self.config.flow_coeff, flow_loss_value))
                if value is not None
            )
        return TunaCausalLMOutputWithPast(
            loss=loss,
            ntp_loss=ntp_loss,
            flow_loss=flow_loss_value,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            flow_prediction=flow_prediction if denoising else None,
            flow_head_past_key_values=flow_head_past_key_values,
        )

    def _noise_for_training(self, input_ids, pixel_values, image_latents, timesteps, generation_targets, flow_noise):
        """Clean images → the model's inputs: generation targets at sampled (or given) times, edit sources at t = 1,
        understanding images at t = 1 or, with `config.understanding_noise_prob`, slightly noised."""
        clean = self.model.encode_images(pixel_values) if pixel_values is not None else image_latents
        if clean is None:
            raise ValueError("`generation_targets` needs the clean images as `pixel_values` or `image_latents`.")
        targets = torch.as_tensor(generation_targets, dtype=torch.bool, device=clean.device).reshape(-1)
        if targets.numel() != clean.shape[0]:
            raise ValueError(
                f"`generation_targets` needs one flag per image ({clean.shape[0]}), got {targets.numel()}."
            )
        if timesteps is None:
            config = self.config
            timesteps = sample_understanding_times(
                clean.shape[0], config.understanding_noise_prob, config.understanding_noise_level, clean.device
            )
            if config.understanding_noise_prob > 0:
                # The official `mmu_noise_prob` noises understanding images only; edit sources stay clean.
                timesteps[self._edit_sources(input_ids, targets)] = 1.0
            timesteps[targets] = sample_flow_times(int(targets.sum()), config.prediction_type, clean.device)
        timesteps = self.model._check_timesteps(timesteps, clean)
        noise = flow_noise if flow_noise is not None else torch.randn_like(clean) * self.config.noise_scale
        if noise.shape != clean.shape:
            raise ValueError(
                f"`flow_noise` must have the images' shape {tuple(clean.shape)}, got {tuple(noise.shape)}."
            )
        noisy = interpolate(clean, noise, timesteps)
        return noisy, timesteps, {"clean": clean, "noise": noise, "targets": targets}

    def _edit_sources(self, input_ids, targets: torch.BoolTensor) -> torch.BoolTensor:
        """The images that are not targets but share their sample with one: the sources of edits."""
        if input_ids is None:
            raise ValueError("`config.understanding_noise_prob` > 0 needs `input_ids` to tell edit sources apart.")
        rows = TunaImageSpans.from_input_ids(input_ids, self.config.image_token_id).image_rows()
        if rows.numel() != targets.numel():
            raise ValueError(f"`input_ids` hold {rows.numel()} image spans for {targets.numel()} images.")
        rows_with_targets = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=targets.device)
        rows_with_targets[rows[targets]] = True
        return ~targets & rows_with_targets[rows]

    def predict_flow(self, outputs: TunaModelOutputWithPast, **kwargs) -> torch.Tensor | None:
        """Flow head over the decoder output → `[num_images, C, T, H, W]` in the flow space (None without images)."""
        hidden_states, spans = outputs.last_hidden_state, outputs.image_spans
        per_token = self.flow_head(
            hidden_states,
            outputs.timestep_embeds,
            spans,
            outputs.image_grid,
            outputs.attention_mask,
            outputs.position_ids,
            attn_implementation=self.config.text_config._attn_implementation,
            **kwargs,
        )
        if spans is None:
            return None
        image_tokens = per_token[spans.is_image_token].view(spans.num_images, -1, per_token.shape[-1])
        return self.unpatchify(image_tokens, outputs.image_grid)

    def unpatchify(self, image_tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Token outputs `[n, T·h·w, p·p·C]` → `[n, C, T, h·p, w·p]` by a raw reshape, as the official `unpatchify`.

        For p > 1 (Tuna-R, Tuna-2) this is *not* the inverse of the input patchify: token k fills the pixels
        k·p², …, (k+1)·p² − 1 of the raster-scanned frame (a horizontal strip), which is what the released weights
        were trained to produce (anatomy §5).
        """
        frames, height, width = grid
        patch, channels = self.config.patch_size, self.config.latent_channels
        strips = image_tokens.reshape(image_tokens.shape[0], frames, height * width * patch * patch, channels)
        return strips.permute(0, 3, 1, 2).reshape(-1, channels, frames, height * patch, width * patch)

    def prepare_inputs_for_generation(
        self, *args, image_latents=None, timesteps=None, is_first_iteration=False, **kwargs
    ):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["image_latents"] = image_latents
            model_inputs["timesteps"] = timesteps
        return model_inputs


__all__ = ["TunaForUnifiedMultimodal", "TunaModel", "TunaPreTrainedModel"]
