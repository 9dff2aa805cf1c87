"""TUNA: a Qwen2.5 decoder with omni attention, three visual front-ends, an LM head and a flow head.

One sequence holds text and image spans. A span is `[timestep slot, image token 1 … image token N]` (all
`<|image_pad|>` in `input_ids`, between `<|vision_start|>` and `<|vision_end|>`): the slot carries the embedding of
the flow time t (t = 1 clean, 0 noise), the tokens the visual features (docs/architecture.md §2). Attention is causal,
plus bidirectional inside each span (docs/architecture.md §3). The LM head answers in text; the flow head reads the
decoder's final hidden states and predicts, per image token, the velocity (Tuna) or the clean pixels (Tuna-R/Tuna-2)
(docs/architecture.md §5).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, ModelMixin
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, eager_attention_forward
from transformers.models.siglip.modeling_siglip import SiglipEncoder, SiglipVisionEmbeddings
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.import_utils import torch_compilable_check

from ._compat import ActivationCheckpointingNames, slice_logits_to_keep
from .configuration_tuna import TunaConfig, TunaFlowHeadConfig
from .losses import flow_loss
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
        return cls.from_slots(input_ids == image_token_id)

    @classmethod
    def from_slots(cls, in_span: torch.BoolTensor) -> "TunaImageSpans":
        """The spans of the marked positions `[B, L]`: each maximal run is one span, numbered in row-major order."""
        starts = in_span & ~F.pad(in_span[:, :-1], (1, 0), value=False)
        positions = torch.arange(in_span.shape[1], device=in_span.device).expand_as(in_span)
        span_start = torch.where(starts, positions, -1).cummax(dim=1).values
        numbering = starts.flatten().cumsum(0).view_as(in_span) - 1
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
class TunaFlowInputs:
    """What the flow head conditions on besides the decoder's hidden states; passed from [`TunaModel`] to
    [`TunaForUnifiedMultimodal`], not a user-facing output. The image fields are None for a text-only sequence.

    Args:
        position_ids (`torch.LongTensor` `[B, L]`): the sequence positions of the new tokens.
        attention_mask (`torch.Tensor` `[B, past + L]`, *optional*): the 2-D padding mask the decoder was given.
        spans ([`TunaImageSpans`], *optional*): where the images sit among the new tokens.
        grid (`tuple[int, int, int]`, *optional*): the `(T, h, w)` token grid of the images.
        timesteps (`torch.FloatTensor` `[num_images]`, *optional*): the flow time of each image.
        timestep_embeds (`torch.FloatTensor` `[num_images, hidden]`, *optional*): their embeddings, which also sit in
            slot 0 of each span and drive the flow head's AdaLN.
    """

    position_ids: torch.LongTensor
    attention_mask: torch.Tensor | None = None
    spans: TunaImageSpans | None = None
    grid: tuple[int, int, int] | None = None
    timesteps: torch.FloatTensor | None = None
    timestep_embeds: torch.FloatTensor | None = None


@dataclass
class TunaModelOutputWithPast(ModelOutput):
    r"""
    Outputs of [`TunaModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` `[B, L, hidden]`): the decoder's final (normed) hidden states.
        past_key_values (`Cache`, *optional*): the decoder's key/value cache.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*): the decoder's hidden states after the embeddings and
            each layer, with `output_hidden_states=True`.
        attentions (`tuple[torch.FloatTensor]`, *optional*): the decoder's attention weights, with
            `output_attentions=True` (eager attention).
        image_hidden_states (`torch.FloatTensor` `[num_images, T·h·w, hidden]`, *optional*): the visual tokens of the
            images as they were placed in their spans (the front-end's output, after `bool_masked_pos` masking).
        flow_inputs ([`TunaFlowInputs`], *optional*): what the flow head conditions on (internal).
    """

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    flow_inputs: TunaFlowInputs | None = None


@dataclass
class TunaCausalLMOutputWithPast(ModelOutput):
    r"""
    Outputs of [`TunaForUnifiedMultimodal`].

    Args:
        loss (`torch.FloatTensor`, *optional*): `ntp_coeff · ntp_loss + flow_coeff · flow_loss`, with `labels` and/or
            `flow_labels`.
        ntp_loss (`torch.FloatTensor`, *optional*): the next-token loss on `labels`.
        flow_loss (`torch.FloatTensor`, *optional*): the flow loss on `flow_labels` (velocity MSE for Tuna, the JiT
            x0 loss for Tuna-R and Tuna-2).
        logits (`torch.FloatTensor` `[B, L, vocab]`): the LM head's logits (of the last `logits_to_keep` positions).
        past_key_values (`Cache`, *optional*): the decoder's key/value cache.
        hidden_states, attentions (`tuple[torch.FloatTensor]`, *optional*): as in [`TunaModelOutputWithPast`].
        image_hidden_states (`torch.FloatTensor` `[num_images, T·h·w, hidden]`, *optional*): the visual tokens.
        flow_prediction (`torch.FloatTensor` `[num_images, C, T, H, W]`, *optional*): with `timesteps`, the flow
            head's prediction for every image in the flow space: the velocity `x − noise` (Tuna) or x0 (Tuna-R,
            Tuna-2).
        flow_head_past_key_values (`Cache`, *optional*): the flow head's key/value cache, when one was passed.
    """

    loss: torch.FloatTensor | None = None
    ntp_loss: torch.FloatTensor | None = None
    flow_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    flow_prediction: torch.FloatTensor | None = None
    flow_head_past_key_values: Cache | None = None


def omni_attention_mask(
    config,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_key_values: Cache | None,
    position_ids: torch.LongTensor,
    spans: TunaImageSpans | None,
):
    """TUNA's omni attention mask (docs/architecture.md §3; official `omni_attn_mask_naive`): causal, plus
    bidirectional inside each image span, timestep slot included. Built by transformers' `create_causal_mask` in the
    form `config._attn_implementation` takes; a cached prefix counts as text (its spans are complete)."""
    block_ids = None
    if spans is not None:
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        block_ids = F.pad(spans.image_index, (past_length, 0), value=-1)
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        past_key_values=past_key_values,
        position_ids=position_ids,
        block_sequence_ids=block_ids,
    )


def compute_dtype(linear: nn.Linear, default: torch.dtype) -> torch.dtype:
    """The dtype `linear` computes in: its weight's floating dtype — float32 for the layers kept so in a half-precision
    model (`_keep_in_fp32_modules`) — or `default` when its weight is stored quantized or in float8."""
    dtype = linear.weight.dtype
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else default


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation, computed in float32 as the official `modulate`."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)


def span_modulation(
    modulation: nn.Linear,
    timestep_embeds: torch.Tensor | None,
    spans: TunaImageSpans | None,
    hidden_states: torch.Tensor,
    fills: tuple[float, ...],
) -> tuple[torch.Tensor, ...]:
    """AdaLN parameters per position (docs/architecture.md §5): image k's on span k (timestep slot included), the
    identity `fills` elsewhere."""
    if spans is None:
        return tuple(torch.full_like(hidden_states[..., :1], fill) for fill in fills)
    chunks = modulation(F.silu(timestep_embeds)).chunk(len(fills), dim=1)
    return tuple(spans.spread(chunk, fill) for chunk, fill in zip(chunks, fills, strict=True))


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
        frequencies = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(compute_dtype(self.linear_1, dtype))
        return self.linear_2(self.act(self.linear_1(frequencies))).to(dtype)


class TunaVisionTower(nn.Module):
    """SigLIP without post-LayerNorm or head (features of the last kept layer); frames are folded into the batch."""

    def __init__(self, config: SiglipVisionConfig):
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


class TunaFlowHeadPositionEmbeddings(NamedTuple):
    """The flow head's rotations (docs/architecture.md §4): `text` cos/sin `[B, L, head_dim]` (rotate-half) for text
    positions, `image` cos/sin `[B, L, head_dim / 2]` (interleaved pairs) for image tokens, and the `spans` that say
    which position is which (None: all text). Timestep slots get no rotation."""

    text: tuple[torch.Tensor, torch.Tensor]
    image: tuple[torch.Tensor, torch.Tensor] | None = None
    spans: TunaImageSpans | None = None


class TunaFlowHeadRotaryEmbedding(LlamaRotaryEmbedding):
    """The flow head's three position schemes (docs/architecture.md §4; official `apply_rope_image3d_text1d`):

    * text: 1-D rotate-half RoPE at the sequence position, with the llama3-scaled inverse frequencies of
      `config.rope_parameters` (buffer `inv_freq`, as transformers' Llama);
    * timestep slot: none;
    * image tokens: a 3-D RoPE on their (frame, row, column) token coordinates, independent of the sequence position:
      the `head_dim / 2` pairs split t : h : w = 1/4 : 3/8 : 3/8, pair k of an axis of `d` dims turning by
      `coordinate · image_rope_theta^(−2k/d)` (buffers `image_inv_freq` and `image_axis`), applied to interleaved
      pairs.
    """

    def __init__(self, config: TunaFlowHeadConfig):
        super().__init__(config)
        image_inv_freq, image_axis = self.compute_image_rope_parameters(config)
        self.image_inv_freq = nn.Buffer(image_inv_freq, persistent=False)
        self.image_axis = nn.Buffer(image_axis, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """Moved and cast like any module, but a cast (`.to(torch.bfloat16)`, `.half()`) does not round the image
        frequencies: the official code computes them in float32 at every call (the text ones follow the cast, as the
        official module's do)."""
        super()._apply(fn, recurse)
        if self.image_inv_freq.dtype != torch.float32:
            image_inv_freq, _ = self.compute_image_rope_parameters(self.config)
            self.image_inv_freq = image_inv_freq.to(self.image_inv_freq.device)
        return self

    @staticmethod
    def compute_image_rope_parameters(config: TunaFlowHeadConfig) -> tuple[torch.Tensor, torch.LongTensor]:
        """The 3-D RoPE's inverse frequency of every pair `[head_dim / 2]` and the grid axis it turns with (0 frame,
        1 row, 2 column)."""
        head_dim, theta = config.head_dim, config.image_rope_theta
        axis_dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
        inv_freq = torch.cat([1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim) for dim in axis_dims])
        axis = torch.cat([torch.full((dim // 2,), index) for index, dim in enumerate(axis_dims)])
        return inv_freq, axis

    @torch.no_grad()
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.LongTensor,
        spans: TunaImageSpans | None = None,
        grid: tuple[int, int, int] | None = None,
    ) -> TunaFlowHeadPositionEmbeddings:
        text = super().forward(hidden_states, position_ids)
        if spans is None:
            return TunaFlowHeadPositionEmbeddings(text)
        if self.config.head_dim % 8:  # checked here, not in the config: a converter still lists shape mismatches
            raise ValueError(f"`head_dim` must be a multiple of 8 for the 3-D image RoPE, got {self.config.head_dim}.")
        coordinates = spans.token_grid_coordinates(grid).float()[..., self.image_axis]
        angles = coordinates * self.image_inv_freq.to(dtype=torch.float)
        image = (angles.cos().to(hidden_states.dtype), angles.sin().to(hidden_states.dtype))
        return TunaFlowHeadPositionEmbeddings(text, image, spans)


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs `(x[2i], x[2i+1])` by −θ: the official 3-D RoPE convention (row vector × [[c, −s], [s, c]])."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([even * cos + odd * sin, odd * cos - even * sin], dim=-1).flatten(-2)


def apply_flow_head_rotary_pos_emb(
    query: torch.Tensor, key: torch.Tensor, position_embeddings: TunaFlowHeadPositionEmbeddings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's scheme on `query` and `key` `[B, heads, L, head_dim]`: rotate-half on text, interleaved pairs on
    image tokens, nothing on timestep slots."""
    text_query, text_key = apply_rotary_pos_emb(query, key, *position_embeddings.text)
    spans = position_embeddings.spans
    if spans is None:
        return text_query, text_key
    cos, sin = (t.unsqueeze(1) for t in position_embeddings.image)
    is_text = spans.is_text[:, None, :, None]
    is_image = spans.is_image_token[:, None, :, None]
    query = torch.where(is_text, text_query, torch.where(is_image, rotate_interleaved(query, cos, sin), query))
    key = torch.where(is_text, text_key, torch.where(is_image, rotate_interleaved(key, cos, sin), key))
    return query, key


class TunaFlowHeadAttention(nn.Module):
    """GQA with q/k RMSNorm and the flow head's position schemes ([`TunaFlowHeadRotaryEmbedding`])."""

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
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: TunaFlowHeadPositionEmbeddings,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = apply_flow_head_rotary_pos_emb(query, key, position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
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


class TunaFlowHeadLayer(GradientCheckpointingLayer):
    """Transformer block with AdaLN-Zero: only span positions are modulated, text positions pass unmodulated."""

    def __init__(self, config: TunaFlowHeadConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TunaFlowHeadAttention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.modulation = nn.Linear(config.hidden_size, 6 * config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: TunaFlowHeadPositionEmbeddings | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = span_modulation(
            self.modulation, timestep_embeds, position_embeddings.spans, hidden_states, fills=(0, 0, 1, 0, 0, 1)
        )
        attn_input = modulate(self.input_layernorm(hidden_states), shift_msa, scale_msa)
        attn_output = self.self_attn(
            attn_input,
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
            **kwargs,
        )
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

    def forward(
        self, hidden_states: torch.Tensor, timestep_embeds: torch.Tensor | None, spans: TunaImageSpans | None
    ) -> torch.Tensor:
        dtype = compute_dtype(self.proj, hidden_states.dtype)
        hidden_states = hidden_states.to(dtype)
        if timestep_embeds is not None:
            timestep_embeds = timestep_embeds.to(dtype)
        shift, scale = span_modulation(self.modulation, timestep_embeds, spans, hidden_states, fills=(0, 0))
        return self.proj(modulate(self.norm(hidden_states), shift, scale))


class TunaFlowHead(nn.Module):
    """The flow head over the decoder's final (normed) hidden states of the whole sequence (docs/architecture.md §5).
    Its attention reads `config._attn_implementation` and builds its own omni mask in that form."""

    def __init__(self, config: TunaFlowHeadConfig, out_features: int):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([TunaFlowHeadLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layer = TunaFlowHeadFinalLayer(config, out_features)
        self.rotary_emb = TunaFlowHeadRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        flow_inputs: TunaFlowInputs,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Per-token outputs `[B, L, patch_size² · channels]`; `past_key_values` is the flow head's own cache."""
        spans, timestep_embeds = flow_inputs.spans, flow_inputs.timestep_embeds
        attention_mask = omni_attention_mask(
            self.config, hidden_states, flow_inputs.attention_mask, past_key_values, flow_inputs.position_ids, spans
        )
        position_embeddings = self.rotary_emb(hidden_states, flow_inputs.position_ids, spans, flow_inputs.grid)
        for layer in self.layers:
            # The states and the conditioning go positionally: reentrant checkpointing only carries gradients of
            # positional inputs (`GradientCheckpointingLayer`).
            hidden_states = layer(
                hidden_states,
                timestep_embeds,
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                **kwargs,
            )
        return self.final_layer(hidden_states, timestep_embeds, spans)


# Compiled entries allowed per repeated block (`compile_repeated_blocks`): the kinds of forward a block meets in
# text-to-image, editing, with and without the prompt cache, and the first changes of batch and prompt length.
RECOMPILES_PER_BLOCK = 16


class TunaPreTrainedModel(ActivationCheckpointingNames, PreTrainedModel):
    config: TunaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "TunaFlowHeadLayer"]
    # The blocks a denoising step and a decoding step repeat, for regional compilation (`compile_repeated_blocks`).
    _repeated_blocks = ("Qwen2DecoderLayer", "TunaFlowHeadLayer")
    # Diffusers' storage casting and group offloading (`enable_layerwise_casting`, `enable_group_offload`). Storage
    # casting skips diffusers' defaults (norms, the patch embedding) and `_keep_in_fp32_modules`.
    _skip_layerwise_casting_patterns = None
    _supports_group_offloading = True
    enable_layerwise_casting = ModelMixin.enable_layerwise_casting
    enable_group_offload = ModelMixin.enable_group_offload
    _skip_keys_device_placement = ["past_key_values"]
    _keep_in_fp32_modules_strict = ["vae"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def compile_repeated_blocks(self, *args, **kwargs):
        """
        Regional compilation, diffusers' `ModelMixin.compile_repeated_blocks`: `block.compile(*args, **kwargs)` for
        every decoder layer and flow-head block (`_repeated_blocks`), e.g. `fullgraph=True`.

        Every block reads its own layer of the KV cache, which dynamo guards on, so each block is compiled once per
        kind of forward it meets (a prompt's prefill, a step on the cache, a whole-row step without it, a new
        batch or prompt length until dynamo makes that size dynamic): the steps after a call's first reuse its code,
        and this raises dynamo's process-wide recompile limits to `RECOMPILES_PER_BLOCK` entries per block.
        """
        blocks = sum(type(module).__name__ in self._repeated_blocks for module in self.modules())
        dynamo_config = torch._dynamo.config
        limit = RECOMPILES_PER_BLOCK * blocks
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, limit)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, limit)
        ModelMixin.compile_repeated_blocks(self, *args, **kwargs)

    def set_attention_backend(self, backend: str) -> None:
        """
        Diffusers' `ModelMixin.set_attention_backend` for TUNA, whose attention layers are transformers' (the decoder,
        the flow head and SigLIP read `config._attn_implementation`): `backend`, a diffusers attention backend name,
        selects the transformers implementation that computes it, for every attention layer of the model. The omni
        mask (causal, bidirectional inside image spans) needs a backend that takes an arbitrary mask: `"native"`
        (PyTorch SDPA, transformers' `"sdpa"`, the default), `"flex"` (`"flex_attention"`) and `"_native_math"` (the
        unfused softmax, transformers' `"eager"`). The other diffusers backends (flash, sage, xformers, ...) take no
        such mask and raise.

        Args:
            backend (`str`): a diffusers `AttentionBackendName` value, case-insensitive.
        """
        implementations = {"native": "sdpa", "flex": "flex_attention", "_native_math": "eager"}
        name = backend.lower() if isinstance(backend, str) else backend
        if name not in implementations:
            raise ValueError(
                f"`backend` must be one of {sorted(implementations)}, the diffusers attention backends that take "
                f"TUNA's omni mask, got {backend!r}."
            )
        self.set_attn_implementation(implementations[name])

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
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
        if isinstance(module, TunaFlowHeadRotaryEmbedding):
            image_inv_freq, image_axis = module.compute_image_rope_parameters(module.config)
            init.copy_(module.image_inv_freq, image_inv_freq)
            init.copy_(module.image_axis, image_axis)


class TunaModel(TunaPreTrainedModel):
    """Decoder + visual front-end + timestep embedder, without heads; it owns the image-token layout (patchify,
    unpatchify, token grid)."""

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
            if config.vision_config._attn_implementation is None:
                # The official SigLIP runs eager; the vision tower is no `PreTrainedModel` that would pick its own.
                config.vision_config._attn_implementation = "eager"
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if config.use_mask_token else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.language_model.set_input_embeddings(value)

    def image_spans(self, input_ids: torch.LongTensor) -> TunaImageSpans:
        """The image spans of `input_ids` (runs of `config.image_token_id`)."""
        return TunaImageSpans.from_input_ids(input_ids, self.config.image_token_id)

    def encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] `[B, 3, (T,) H, W]` → the flow space: normalised Wan latents (Tuna) or the pixels."""
        pixel_values = self._check_pixels(pixel_values)
        if self.vae is None:
            return pixel_values.to(self.dtype)
        latents = sample_wan_posterior(
            self.vae, pixel_values.to(self.vae.dtype), generator=generator, sample=self.config.sample_vae_posterior
        )
        return latents.to(self.dtype)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """Images in [-1, 1] `[n, 3, (T,) H, W]` → their visual tokens `[n, T·h·w, hidden]` (Tuna: through its VAE),
        as `pooler_output` (what the decoder reads, as in transformers' Llava) and `last_hidden_state`."""
        features = self.patchify(self.encode_images(pixel_values))
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=features)

    def patchify(self, image_latents: torch.Tensor) -> torch.Tensor:
        """Flow-space images `[n, C, T, H, W]` → one visual token per `patch_size`² patch of each frame
        `[n, T·h·w, hidden]`, frame-major then raster order: Conv2d + RMSNorm (Tuna-2) or SigLIP + connector."""
        image_latents = image_latents.to(self.dtype)
        if self.config.visual_encoder == "patch":
            return self.patch_embed(image_latents)
        return self.connector(self.vision_tower(image_latents))

    def unpatchify(self, image_tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Flow-head outputs `[n, T·h·w, p·p·C]` → images `[n, C, T, h·p, w·p]` by a raw reshape, as the official
        `unpatchify` (docs/architecture.md §5).

        For p > 1 (Tuna-R, Tuna-2) this is *not* the inverse of `patchify`: token k fills the pixels k·p², …,
        (k+1)·p² − 1 of the raster-scanned frame (a horizontal strip), which is what the released weights were
        trained to produce.
        """
        frames, height, width = grid
        patch, channels = self.config.patch_size, self.config.latent_channels
        strips = image_tokens.reshape(image_tokens.shape[0], frames, height * width * patch * patch, channels)
        return strips.permute(0, 3, 1, 2).reshape(-1, channels, frames, height * patch, width * patch)

    def token_grid(self, image_latents: torch.Tensor) -> tuple[int, int, int]:
        """(T, h, w) token grid of flow-space images."""
        _, _, frames, height, width = image_latents.shape
        return frames, height // self.config.patch_size, width // self.config.patch_size

    def mask_image_tokens(self, image_embeds: torch.Tensor, bool_masked_pos: torch.BoolTensor) -> torch.Tensor:
        """Tuna-2's masked feature learning: the marked visual tokens are replaced by the learned mask token."""
        if self.mask_token is None:
            raise ValueError("`bool_masked_pos` needs a model with a mask token (`config.use_mask_token=True`).")
        if bool_masked_pos.shape != image_embeds.shape[:2]:
            raise ValueError(
                f"`bool_masked_pos` must be [num_images, tokens per image] = {list(image_embeds.shape[:2])}, "
                f"got {list(bool_masked_pos.shape)}."
            )
        return torch.where(bool_masked_pos[..., None], self.mask_token.to(image_embeds.dtype), image_embeds)

    @can_return_tuple
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
        bool_masked_pos: torch.BoolTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TunaModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` `[B, L]`): token ids; each image occupies a span of `<|image_pad|>` tokens
                (1 timestep slot + one slot per visual token).
            pixel_values (`torch.FloatTensor` `[num_images, 3, H, W]` or `[num_images, 3, T, H, W]`, in [-1, 1]):
                images (or video frames) in the order of the spans in `input_ids`; Tuna encodes them with its VAE.
            image_latents (`torch.FloatTensor` `[num_images, C, T, H, W]`): the images already in the flow space
                (normalised Wan 2.2 latents for Tuna, pixels otherwise), e.g. cached VAE latents or the noisy sample
                x_t being denoised. Exclusive with `pixel_values`.
            timesteps (`torch.FloatTensor` `[num_images]`): flow time of each image, 1 = clean (default), 0 = noise.
            attention_mask (`torch.Tensor` `[B, past + L]`, *optional*): 1 for tokens, 0 for padding.
            position_ids (`torch.LongTensor` `[B, L]`, *optional*): defaults to the positions after the cache.
            past_key_values (`Cache`, *optional*): the decoder's key/value cache.
            inputs_embeds (`torch.FloatTensor` `[B, L, hidden]`, *optional*): instead of `input_ids`; with images, the
                image slots must hold the embedding of `<|image_pad|>`, which locates the spans.
            use_cache (`bool`, *optional*): return a key/value cache (a new `DynamicCache` if none was given).
            bool_masked_pos (`torch.BoolTensor` `[num_images, T·h·w]`, *optional*): visual tokens replaced by the mask
                token (Tuna-2 training, see `tuna_hf.losses.prepare_flow_training`).
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
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length)[None]

        if pixel_values is not None:
            image_latents = self.encode_images(pixel_values)
        flow_inputs = TunaFlowInputs(position_ids=position_ids, attention_mask=attention_mask)
        image_embeds = None
        if image_latents is not None:
            image_latents = self._check_image_latents(image_latents)
            spans = self._locate_spans(input_ids, inputs_embeds)
            timesteps = self._check_timesteps(timesteps, image_latents)
            timestep_embeds = self.timestep_embedder(timesteps, inputs_embeds.dtype)
            image_embeds = self.patchify(image_latents)
            if bool_masked_pos is not None:
                image_embeds = self.mask_image_tokens(image_embeds, bool_masked_pos)
            self._check_spans(spans, image_embeds)
            inputs_embeds = self._insert_images(inputs_embeds, spans, timestep_embeds, image_embeds)
            flow_inputs.spans, flow_inputs.grid = spans, self.token_grid(image_latents)
            flow_inputs.timesteps, flow_inputs.timestep_embeds = timesteps, timestep_embeds
        elif isinstance(past_length, int) and past_length == 0:
            # Filling a cache (or without one): spans need their images. (A static cache's length is a tensor: its
            # decoding steps are not checked, so as not to wait for the device at every token.)
            self._check_no_image_slots(input_ids, inputs_embeds)

        mask = self._decoder_mask(inputs_embeds, attention_mask, past_key_values, position_ids, flow_inputs.spans)
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
            image_hidden_states=image_embeds,
            flow_inputs=flow_inputs,
        )

    def _decoder_mask(self, inputs_embeds, attention_mask, past_key_values, position_ids, spans):
        """The omni mask for the decoder; a prepared mask (a 4-D tensor, or `generate`'s mapping for a static cache)
        goes through as it is, which only text may come with."""
        if attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
            return omni_attention_mask(
                self.config.text_config, inputs_embeds, attention_mask, past_key_values, position_ids, spans
            )
        if spans is not None:
            raise ValueError(
                "A prepared 4-D `attention_mask` cannot carry the omni mask of image spans: with images, pass the 2-D "
                "padding mask (1 = token, 0 = padding)."
            )
        return attention_mask["full_attention"] if isinstance(attention_mask, dict) else attention_mask

    def _image_slots(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.BoolTensor:
        """The positions of image slots: `<|image_pad|>` in `input_ids`, or (as Llava and Qwen2-VL find them) the
        positions of `inputs_embeds` that hold its embedding."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_pad = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_pad).to(inputs_embeds.dtype)).all(-1)

    def _locate_spans(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> TunaImageSpans:
        slots = self._image_slots(input_ids, inputs_embeds)
        if not slots.any():
            raise ValueError(
                "Images need their spans: pass `input_ids`, or `inputs_embeds` whose image slots hold the embedding "
                "of `<|image_pad|>` (`model.get_input_embeddings()(input_ids)`)."
            )
        return TunaImageSpans.from_slots(slots)

    def _check_no_image_slots(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor):
        if self._image_slots(input_ids, inputs_embeds).any():
            raise ValueError(
                "The inputs contain image spans but neither `pixel_values` nor `image_latents` was given."
            )

    def _insert_images(
        self,
        inputs_embeds: torch.Tensor,
        spans: TunaImageSpans,
        timestep_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
    ) -> torch.Tensor:
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
                f"`pixel_values` must have 1 + {self.config.frames_per_latent_frame}·k frames for this VAE, "
                f"got {frames}."
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

    def _check_timesteps(self, timesteps, image_latents: torch.Tensor) -> torch.Tensor:
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

    def _check_context_length(self, length: int | torch.Tensor):
        limit = self.config.context_length
        torch_compilable_check(
            length <= limit,
            lambda: (
                f"The sequence ({int(length)} tokens) exceeds the context of {limit} tokens "
                "(max_position_embeddings, times the factor of a scaled `rope_parameters`)."
            ),
        )

    def _check_device(self, name: str, tensor: torch.Tensor):
        if tensor.device != self.device:
            raise ValueError(f"`{name}` is on {tensor.device} but the model is on {self.device}.")


class TunaForUnifiedMultimodal(TunaPreTrainedModel, GenerationMixin):
    """TUNA with its two heads: the LM head (understanding, `generate()`) and the flow head (generation, editing)."""

    output_modalities = ("image", "text")
    # The layers that stay in high precision, declared once for every quantization backend (transformers' quantizers
    # skip them), for diffusers' storage casting, and for float16 loading (they load in float32): the VAE, the timestep
    # embedder and the flow head's final layer, measured to matter most at low bit widths (docs/architecture.md §9).
    _keep_in_fp32_modules = ["model.vae", "model.timestep_embedder", "flow_head.final_layer"]
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The decoder's plans come with it (Qwen2's); the LM head as in `Qwen2ForCausalLM`. The flow head and the visual
    # front-ends are replicated under tensor parallelism and sit after / before the pipeline stages.
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    # Decoding (text tokens on a static cache) compiles to one graph; a forward with images does not: where its spans
    # are depends on the data.
    _can_compile_fullgraph = True

    def __init__(self, config: TunaConfig):
        super().__init__(config)
        self.loss_type = "ForCausalLM"  # the text loss; transformers would guess it from the class name
        self.model = TunaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        out_features = config.patch_size**2 * config.latent_channels
        if config.flow_head_config._attn_implementation is None:
            # The flow head is no `PreTrainedModel` that would pick its attention: it follows the decoder's, unless
            # set apart (`set_attn_implementation({"flow_head_config": ...})`).
            config.flow_head_config._attn_implementation = config.text_config._attn_implementation
        self.flow_head = TunaFlowHead(config.flow_head_config, out_features)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.set_input_embeddings(value)

    @classmethod
    def from_pretrained_parts(
        cls,
        llm: str,
        tokenizer: PreTrainedTokenizerBase,
        visual_encoder: str = "patch",
        vision_tower: str | None = None,
        vae: str | None = None,
        **config_kwargs,
    ) -> "TunaForUnifiedMultimodal":
        """A fresh TUNA from pretrained parts, as the official code builds one before stage-1 training.

        Args:
            llm (`str`): a Qwen2.5 checkpoint.
            tokenizer (`PreTrainedTokenizerBase`): its tokenizer, which gets TUNA's four tokens and to whose length the
                vocabulary is resized (the official `resize_token_embeddings(len(tokenizer))` shrinks Qwen's padded
                vocabulary).
            visual_encoder (`str`, defaults to `"patch"`): see [`TunaConfig`].
            vision_tower (`str`, *optional*): a SigLIP checkpoint (Tuna, Tuna-R); only tensors whose shapes still
                match the TUNA tower are warm-started, as the official code does.
            vae (`str`, *optional*): a diffusers `AutoencoderKLWan` directory (Tuna).
            config_kwargs: more [`TunaConfig`] arguments (e.g. `vision_config`, `flow_head_config`, `vae_config`).
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

    @can_return_tuple
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
        flow_labels: torch.FloatTensor | None = None,
        generation_targets: torch.BoolTensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TunaCausalLMOutputWithPast:
        r"""
        The arguments of [`TunaModel.forward`], and:

        Args:
            labels (`torch.LongTensor` `[B, L]`, *optional*): next-token targets (-100 where no loss), for the text
                loss.
            logits_to_keep (`int` or `torch.Tensor`, defaults to 0): compute logits for the last `logits_to_keep`
                positions only (0: all), or for the given position indices.
            flow_head_past_key_values (`Cache`, *optional*): the flow head's own key/value cache, aligned with
                `past_key_values`. Passing one runs the flow head (also without images, to cache a text prompt) and
                appends the new tokens' keys and values to it. A prompt's flow-head states do not depend on the image
                being denoised, so the pipelines fill both caches once and then run only the image span at each
                denoising step (docs/architecture.md §7).
            flow_labels (`torch.FloatTensor` `[num_targets, C, T, H, W]`, *optional*): the regression targets of the
                images marked by `generation_targets` (the velocity `x − noise` for Tuna, the clean image for Tuna-R
                and Tuna-2), which join the text loss as `flow_coeff · flow_loss`. `tuna_hf.losses.
                prepare_flow_training` makes them, with the noisy `image_latents` and their `timesteps`, from a
                collated batch.
            generation_targets (`torch.BoolTensor` `[num_images]`, *optional*): which images `flow_labels` belong to
                (default: all).
        """
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
            bool_masked_pos=bool_masked_pos,
            return_dict=True,
            **kwargs,
        )
        hidden_states, flow_inputs = outputs.last_hidden_state, outputs.flow_inputs
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        ntp_loss = None
        if labels is not None:
            ntp_loss = self.loss_function(logits, labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
            ntp_loss = torch.nan_to_num(ntp_loss)  # no answer token in the batch: 0, as the official `ntp_loss`

        flow_prediction = None
        denoising = timesteps is not None and flow_inputs.spans is not None
        if denoising or flow_head_past_key_values is not None:
            flow_prediction = self.predict_flow(
                hidden_states, flow_inputs, past_key_values=flow_head_past_key_values, **kwargs
            )
        flow_loss_value = None
        if flow_labels is not None or generation_targets is not None:
            flow_loss_value = self._flow_loss(flow_prediction, flow_labels, generation_targets, flow_inputs)
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
            image_hidden_states=outputs.image_hidden_states,
            flow_prediction=flow_prediction if denoising else None,
            flow_head_past_key_values=flow_head_past_key_values,
        )

    def _flow_loss(
        self,
        flow_prediction: torch.Tensor | None,
        flow_labels: torch.Tensor,
        generation_targets: torch.BoolTensor | None,
        flow_inputs: TunaFlowInputs,
    ) -> torch.Tensor | None:
        """The flow loss over the generation targets (None when the batch has none)."""
        if flow_labels is None:
            raise ValueError(
                "`generation_targets` mark the images that `flow_labels` belong to: pass `flow_labels` too "
                "(`tuna_hf.losses.prepare_flow_training` makes both from a collated batch)."
            )
        if flow_prediction is None:
            raise ValueError("`flow_labels` need images with their `timesteps`.")
        targets = generation_targets
        if targets is None:
            targets = torch.ones(flow_prediction.shape[0], dtype=torch.bool, device=flow_prediction.device)
        targets = torch.as_tensor(targets, dtype=torch.bool, device=flow_prediction.device).reshape(-1)
        if targets.numel() != flow_prediction.shape[0]:
            raise ValueError(
                f"`generation_targets` needs one flag per image ({flow_prediction.shape[0]}), got {targets.numel()}."
            )
        expected = (int(targets.sum()), *flow_prediction.shape[1:])
        if tuple(flow_labels.shape) != expected:
            raise ValueError(f"`flow_labels` must have shape {expected}, got {tuple(flow_labels.shape)}.")
        if not targets.any():
            return None
        return flow_loss(
            flow_prediction[targets], flow_labels, flow_inputs.timesteps[targets], self.config.prediction_type
        )

    def predict_flow(
        self, hidden_states: torch.Tensor, flow_inputs: TunaFlowInputs, **kwargs
    ) -> torch.FloatTensor | None:
        """Flow head over the decoder's hidden states → `[num_images, C, T, H, W]` in the flow space (None without
        images)."""
        per_token = self.flow_head(hidden_states, flow_inputs, **kwargs)
        spans = flow_inputs.spans
        if spans is None:
            return None
        image_tokens = per_token[spans.is_image_token].view(spans.num_images, -1, per_token.shape[-1])
        return self.model.unpatchify(image_tokens, flow_inputs.grid)

    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """[`TunaModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values=pixel_values, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_latents: torch.FloatTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        is_first_iteration: bool = False,
        **kwargs,
    ) -> dict:
        """transformers' preparation, for the forward that fills an empty cache with two changes. The images
        (`pixel_values` or `image_latents`, and their `timesteps`) go with it whichever iteration it is: an assistant's
        prefill runs as "not first" and would get the spans without their images. And its attention mask stays 2-D
        also with a static cache, so that the forward builds the omni mask (docs/architecture.md §3); the decoding
        steps after it take transformers' prepared causal mask."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            image_latents=image_latents,
            timesteps=timesteps,
            **kwargs,
        )
        if past_key_values is None or not kwargs.get("use_cache", True):
            filling = True
        else:
            length = past_key_values.get_seq_length()
            filling = is_first_iteration or (isinstance(length, int) and length == 0)
        if filling:
            model_inputs.update(attention_mask=attention_mask, pixel_values=pixel_values)
        else:
            for name in ("image_latents", "timesteps"):
                model_inputs.pop(name, None)
        return model_inputs


__all__ = ["TunaForUnifiedMultimodal", "TunaModel", "TunaPreTrainedModel"]
