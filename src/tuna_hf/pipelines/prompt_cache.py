"""Prompt caching across denoising steps (anatomy §9).

Everything before the image being generated (the text prompt and, when editing, the clean source image at t = 1)
attends only to earlier tokens, in the decoder and in the flow head, where its AdaLN is the identity (text) or uses
t = 1 (the source). Its keys and values therefore do not depend on the sample or on t. They are computed once per
call, and each denoising step runs only the image span (timestep slot + image tokens) of every row. The tokens the
official layout puts after that span (`<|vision_end|>`, `<|im_end|>`, padding) are never attended by it, so they are
dropped. Conditional and unconditional rows share one forward.
"""

import torch
from transformers import DynamicCache


class TunaPromptCache:
    """
    Flow predictions for rows that end with the span of the image being denoised.

    Args:
        transformer ([`TunaForUnifiedMultimodal`]): the model.
        input_ids (`torch.LongTensor` `[R, L]`): left-padded rows whose last `span_length` tokens are the target span.
        attention_mask (`torch.LongTensor` `[R, L]`): 0 on the left padding. Positions count real tokens only, so
            each row sees the positions of the official right-padded layout.
        span_length (`int`): 1 timestep slot + the image tokens of the target.
        prompt_images (`torch.Tensor` `[R, C, T, h, w]`, *optional*): a clean image inside each row's prompt (the
            edit source), in the flow space, at t = 1.
        enabled (`bool`): False recomputes the whole sequence at every step (the official behaviour; for checks).
    """

    def __init__(self, transformer, input_ids, attention_mask, span_length: int, prompt_images=None, enabled=True):
        self.transformer = transformer
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.span_length = span_length
        self.prompt_images = prompt_images
        self.enabled = enabled
        if enabled:
            self.decoder_cache, self.flow_head_cache = self._encode_prompt()

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.span_length

    def _encode_prompt(self) -> tuple[DynamicCache, DynamicCache]:
        prompt = slice(None, self.prompt_length)
        decoder_cache = DynamicCache(config=self.transformer.config.text_config)
        flow_head_cache = DynamicCache()
        self.transformer(
            input_ids=self.input_ids[:, prompt],
            attention_mask=self.attention_mask[:, prompt],
            position_ids=self.position_ids[:, prompt],
            image_latents=self.prompt_images,
            past_key_values=decoder_cache,
            flow_head_past_key_values=flow_head_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return decoder_cache, flow_head_cache

    def predict(self, latents: torch.Tensor, flow_time: torch.Tensor) -> torch.Tensor:
        """The flow prediction `[R, C, T, h, w]` for the samples `latents` (one per row) at TUNA time `flow_time`."""
        if self.enabled:
            return self._predict_span(latents, flow_time)
        return self._predict_full_sequence(latents, flow_time)

    def _predict_span(self, latents, flow_time):
        span = slice(self.prompt_length, None)
        outputs = self.transformer(
            input_ids=self.input_ids[:, span],
            attention_mask=self.attention_mask,
            position_ids=self.position_ids[:, span],
            image_latents=latents,
            timesteps=flow_time.expand(latents.shape[0]),
            past_key_values=self.decoder_cache,
            flow_head_past_key_values=self.flow_head_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.decoder_cache.crop(-self.span_length)
        self.flow_head_cache.crop(-self.span_length)
        return outputs.flow_prediction

    def _predict_full_sequence(self, latents, flow_time):
        timesteps = flow_time.expand(latents.shape[0])
        if self.prompt_images is not None:
            latents = torch.stack([self.prompt_images, latents], dim=1).flatten(0, 1)
            timesteps = torch.stack([torch.ones_like(timesteps), timesteps], dim=1).flatten()
        outputs = self.transformer(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            image_latents=latents,
            timesteps=timesteps,
            logits_to_keep=1,
        )
        prediction = outputs.flow_prediction
        return prediction[1::2] if self.prompt_images is not None else prediction
