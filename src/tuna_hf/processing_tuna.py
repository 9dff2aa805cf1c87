"""Processor class for TUNA (image processor + Qwen2.5 tokenizer)."""

from collections.abc import Callable

from transformers.image_utils import ImageInput
from transformers.processing_utils import BatchFeature, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTrainedTokenizerBase, TextInput
from transformers.video_utils import VideoInput

from .image_processing_tuna import TunaImageProcessor, TunaImageProcessorKwargs

DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5 chat format; image and video items render as the `<image>` placeholder plus a newline, as in the official
# understanding prompt `"<image>\n" + question`.
DEFAULT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for item in message['content'] %}"
    "{%- if item['type'] in ('image', 'video') %}"
    "{{- '<image>\\n' }}"
    "{%- elif item['type'] == 'text' %}"
    "{{- item['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def add_tuna_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """
    Add TUNA's tokens to a Qwen2.5 tokenizer exactly as the official `get_text_tokenizer`: the special pad token
    `[PAD]`, then the plain tokens `<image>`, `<|vid_start|>`, `<|vid_end|>` (ids `len(tokenizer)` onwards).
    """
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    for token in ("<image>", "<|vid_start|>", "<|vid_end|>"):
        tokenizer.add_tokens(token)
    return tokenizer


def tuna_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The `TunaConfig` token ids (`image_token_id`, `boi_token_id`, `eoi_token_id`) of a TUNA tokenizer."""
    tokens = {"image_token_id": "<|image_pad|>", "boi_token_id": "<|vision_start|>", "eoi_token_id": "<|vision_end|>"}
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


class TunaProcessorKwargs(ProcessingKwargs, total=False):
    """The processor's call arguments: transformers' ones, TUNA's image arguments (`height`, `width`), and the defaults
    of the official understanding prompt (no special tokens added, left padding, PyTorch tensors)."""

    images_kwargs: TunaImageProcessorKwargs
    _defaults = {
        "text_kwargs": {"add_special_tokens": False, "padding_side": "left", "truncation": False},
        "common_kwargs": {"return_tensors": "pt"},
    }


class TunaProcessor(ProcessorMixin):
    r"""
    Constructs a TUNA processor from a [`TunaImageProcessor`] and a Qwen2.5 tokenizer extended by
    [`add_tuna_tokens`].

    For understanding, every `<image>` placeholder in the text becomes an image span
    `<|vision_start|> <|image_pad|>×N <|vision_end|>`, where `N` = 1 (timestep slot) + one slot per latent patch.
    [`~TunaProcessor.build_generation_inputs`] and [`~TunaProcessor.build_edit_inputs`] build the text-to-image and
    editing sequences of the official pipelines.

    Args:
        image_processor ([`TunaImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The Qwen2.5 tokenizer with the TUNA tokens added.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to a Qwen2.5 template that renders image items as `<image>\n`.
        image_token, boi_token, eoi_token, image_pad_token, bos_token, eos_token, pad_token (`str`, *optional*):
            The placeholder, image start/end, image slot, sequence start/end and padding tokens.
        default_system_prompt (`str`, *optional*):
            System message added by [`~TunaProcessor.apply_chat_template`] to conversations without one.
        spatial_compression (`int`, *optional*, defaults to 16):
            Pixels per image token along height and width.
        temporal_compression (`int`, *optional*, defaults to 4):
            Frames per latent frame (Wan VAE: `T = 1 + (frames - 1) / 4`); 1 if frames are not compressed.
    """

    valid_processor_kwargs = TunaProcessorKwargs

    def __init__(
        self,
        image_processor: TunaImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        image_token: str = "<image>",
        boi_token: str = "<|vision_start|>",
        eoi_token: str = "<|vision_end|>",
        image_pad_token: str = "<|image_pad|>",
        bos_token: str = "<|im_start|>",
        eos_token: str = "<|im_end|>",
        pad_token: str = "[PAD]",
        default_system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        spatial_compression: int = 16,
        temporal_compression: int = 4,
    ):
        self.image_token = image_token
        self.boi_token = boi_token
        self.eoi_token = eoi_token
        self.image_pad_token = image_pad_token
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.default_system_prompt = default_system_prompt
        self.spatial_compression = spatial_compression
        self.temporal_compression = temporal_compression

        vocab = tokenizer.get_vocab()
        for name in ("image", "boi", "eoi", "image_pad", "bos", "eos", "pad"):
            token = getattr(self, f"{name}_token")
            if token not in vocab:
                raise ValueError(f"The tokenizer has no {token!r} token; call `add_tuna_tokens(tokenizer)` first.")
            setattr(self, f"{name}_token_id", vocab[token])
        self.image_token_ids = [self.image_pad_token_id]

        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)

    def __call__(
        self,
        text: TextInput | list[TextInput] | None = None,
        images: ImageInput | None = None,
        videos: VideoInput | None = None,
        **kwargs: Unpack[TunaProcessorKwargs],
    ) -> BatchFeature:
        """
        Tokenize `text` for understanding, replacing each `<image>` placeholder (in order) by the span of the
        matching image or video (docs/architecture.md §2).

        Args:
            text (`str` or `list[str]`, *optional*): the prompts, e.g. from [`~TunaProcessor.apply_chat_template`].
            images (PIL images, arrays or tensors, *optional*): one per `<image>` placeholder, in order.
            videos (lists of frames, *optional*): instead of `images`; each fills one placeholder.
            kwargs: the processor arguments, flat or per modality as for every transformers processor
                (`return_tensors`, default `"pt"`; tokenizer arguments such as `padding` or `max_length`; image
                arguments such as `height` and `width`). Text is never truncated: a row longer than `max_length`
                raises, and `truncation=True` is refused, since it would cut image spans.

        Returns a `BatchFeature` with `input_ids`, `attention_mask` and `pixel_values` (`[B, 3, H, W]`, or
        `[B, 3, T, H, W]` for videos).
        """
        if images is not None and videos is not None:
            raise ValueError("Pass either `images` or `videos`: both fill the `<image>` placeholders.")
        output_kwargs = self._merge_kwargs(
            TunaProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
            raise ValueError(
                f"`truncation={text_kwargs['truncation']!r}` would cut image spans: TUNA's processor does not "
                "truncate; a row longer than `max_length` raises instead."
            )
        if videos is None:
            inputs = super().__call__(images=images, text=text, **kwargs)
        else:
            inputs = self._call_videos(text, videos, output_kwargs)
        if text is not None and text_kwargs.get("max_length") is not None:
            # Padded rows count their tokens (attention mask 1); without a mask, every id counts.
            rows = inputs["attention_mask"] if "attention_mask" in inputs else inputs["input_ids"]
            lengths = [int(sum(row)) if "attention_mask" in inputs else len(row) for row in rows]
            self._check_max_length(lengths, text_kwargs["max_length"])
        return inputs

    def _call_videos(self, text: TextInput | list[TextInput] | None, videos: VideoInput, output_kwargs: dict):
        # The image processor does the frames, with the video arguments over the image ones.
        video_kwargs = {**output_kwargs["images_kwargs"], **output_kwargs["videos_kwargs"]}
        video_inputs = self.image_processor(videos=videos, **video_kwargs)
        return_tensors = output_kwargs["text_kwargs"].get("return_tensors")
        if text is None:
            return BatchFeature(dict(video_inputs), tensor_type=return_tensors)

        text = [text] if isinstance(text, str) else list(text)
        num_videos = len(video_inputs["pixel_values"])
        num_placeholders = sum(sample.count(self.image_token) for sample in text)
        if num_placeholders != num_videos:
            raise ValueError(
                f"Found {num_placeholders} {self.image_token} placeholders in the text but {num_videos} videos."
            )
        spans = [self.replace_image_token(video_inputs, i) for i in range(num_videos)]
        text, _ = self.get_text_with_replacements(text, spans)
        text_inputs = self.tokenizer(text, **output_kwargs["text_kwargs"])
        return BatchFeature({**text_inputs, **video_inputs}, tensor_type=return_tensors)

    @staticmethod
    def _check_max_length(lengths: list[int], max_length: int | None):
        if max_length is None:
            return
        for i, length in enumerate(lengths):
            if length > max_length:
                raise ValueError(f"Row {i} has {length} tokens (image spans included), `max_length` is {max_length}.")

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The span text of image `image_idx` (`ProcessorMixin`'s placeholder hook)."""
        pixel_values = image_inputs["pixel_values"][image_idx]
        num_frames = pixel_values.shape[1] if pixel_values.ndim == 4 else 1
        height, width = pixel_values.shape[-2:]
        num_slots = self.num_image_tokens(height, width, num_frames=num_frames)
        return self.boi_token + self.image_pad_token * num_slots + self.eoi_token

    def num_image_tokens(self, height: int, width: int, num_frames: int = 1) -> int:
        """Slots in one image/video span: 1 timestep slot + `T·(H/16)·(W/16)` (`T` = latent frames)."""
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % self.spatial_compression:
                raise ValueError(f"`{name}` must be a positive multiple of {self.spatial_compression}, got {value}.")
        if num_frames < 1 or (num_frames - 1) % self.temporal_compression:
            raise ValueError(
                f"`num_frames` must be 1 plus a multiple of {self.temporal_compression}, got {num_frames}."
            )
        latent_frames = 1 + (num_frames - 1) // self.temporal_compression
        return 1 + latent_frames * (height // self.spatial_compression) * (width // self.spatial_compression)

    def apply_chat_template(
        self, conversation: list[dict] | list[list[dict]], chat_template: str | None = None, **kwargs
    ):
        """[`ProcessorMixin.apply_chat_template`]. With the processor's own template, conversations without a system
        message get `default_system_prompt` (the official understanding prompt's); a `chat_template` given here is
        used as it is."""
        if chat_template is not None:
            return super().apply_chat_template(conversation, chat_template, **kwargs)
        batched = isinstance(conversation[0], (list, tuple))
        conversations = [self._with_system_prompt(c) for c in (conversation if batched else [conversation])]
        return super().apply_chat_template(conversations if batched else conversations[0], chat_template, **kwargs)

    def _with_system_prompt(self, conversation: list[dict]) -> list[dict]:
        if not self.default_system_prompt or conversation[0]["role"] == "system":
            return conversation
        return [{"role": "system", "content": self.default_system_prompt}, *conversation]

    def build_generation_inputs(
        self,
        prompts: str | list[str],
        negative_prompts: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 1,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        padding_side: str = "right",
    ) -> BatchFeature:
        """
        Text-to-image (or video) rows `[bos] prompt [boi] [image_pad]×N [eoi] [eos]` (no chat template).

        Args:
            prompts (`str` or `list[str]`): the prompts.
            negative_prompts (`str` or `list[str]`, *optional*): the unconditional rows' texts (same layout; a falsy
                one is empty text), which follow the conditional rows.
            height, width (`int`, *optional*): the image size; default the image processor's `size`.
            num_frames (`int`, defaults to 1): video frames (1 + k·`temporal_compression`).
            max_length (`int`, *optional*): a longer row raises.
            return_tensors (`str`, *optional*, defaults to `"pt"`): the tensor type.
            padding_side (`str`, defaults to `"right"`): where the `pad_token`s go (attention mask 0). The official
                layout pads on the right; the pipelines pad on the left so that the image spans end every row
                together.
        """
        span = self._image_span(height, width, num_frames)

        def layout(ids):
            return [self.bos_token_id, *ids, *span, self.eos_token_id]

        return self._build_rows(prompts, negative_prompts, layout, max_length, return_tensors, padding_side)

    def build_edit_inputs(
        self,
        instructions: str | list[str],
        negative_prompts: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        padding_side: str = "right",
    ) -> BatchFeature:
        """
        Editing rows `[bos] [boi] [image_pad]×N [eoi] instruction [boi] [image_pad]×N [eoi] [eos]` (source image,
        then target image); the arguments are those of [`~TunaProcessor.build_generation_inputs`], with the
        instructions as `instructions`.
        """
        span = self._image_span(height, width)

        def layout(ids):
            return [self.bos_token_id, *span, *ids, *span, self.eos_token_id]

        return self._build_rows(instructions, negative_prompts, layout, max_length, return_tensors, padding_side)

    def _image_span(self, height: int | None, width: int | None, num_frames: int = 1) -> list[int]:
        height = self.image_processor.size["height"] if height is None else height
        width = self.image_processor.size["width"] if width is None else width
        num_slots = self.num_image_tokens(height, width, num_frames=num_frames)
        return [self.boi_token_id, *[self.image_pad_token_id] * num_slots, self.eoi_token_id]

    def _build_rows(
        self,
        texts: str | list[str],
        negative_prompts: str | list[str] | None,
        layout: Callable[[list[int]], list[int]],
        max_length: int | None,
        return_tensors: str | None,
        padding_side: str,
    ) -> BatchFeature:
        if padding_side not in ("left", "right"):
            raise ValueError(f'`padding_side` must be "left" or "right", got {padding_side!r}.')
        texts = [texts] if isinstance(texts, str) else list(texts)
        if negative_prompts is not None:
            if isinstance(negative_prompts, str):
                negative_prompts = [negative_prompts] * len(texts)
            if len(negative_prompts) != len(texts):
                raise ValueError(f"Got {len(negative_prompts)} negative prompts for {len(texts)} prompts.")
            texts += [negative or "" for negative in negative_prompts]

        rows = [layout(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        self._check_max_length([len(row) for row in rows], max_length)

        length = max(len(row) for row in rows)
        left = padding_side == "left"

        def pad(values: list[int], fill: int) -> list[int]:
            padding = [fill] * (length - len(values))
            return padding + values if left else values + padding

        input_ids = [pad(row, self.pad_token_id) for row in rows]
        attention_mask = [pad([1] * len(row), 0) for row in rows]
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask}, tensor_type=return_tensors)


__all__ = ["TunaProcessor", "add_tuna_tokens"]
