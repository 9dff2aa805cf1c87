"""Processor class for TUNA (image processor + Qwen2.5 tokenizer)."""

import re
from collections.abc import Callable
from functools import cached_property

from transformers.image_utils import ImageInput
from transformers.processing_utils import BatchFeature, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTrainedTokenizerBase, TextInput
from transformers.video_utils import VideoInput

from ._compat import kept_kwargs_defaults
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


# Control-token text a user typed travels through a rendered chat string between these private-use code points (the
# markers of transformers' `sanitize_control_tokens`) and is encoded as plain text (docs/architecture.md §14).
LITERAL_START, LITERAL_END = "\U000f0000", "\U000f0001"
LITERAL_PIECES = re.compile(f"{LITERAL_START}(.*?){LITERAL_END}|[{LITERAL_START}{LITERAL_END}]", re.DOTALL)


def check_text(name: str, text: str) -> None:
    """`text` must be encodable Unicode (a lone surrogate is not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"`{name}` is not valid Unicode text: {error.reason} at position {error.start} "
            f"({text[error.start : error.end]!r})."
        ) from None


def encode_as_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The ids of `text` read as plain text: no added token (special or not) is matched, so typed control-token text
    stays text. Other text gets the ids of `tokenizer.encode(text, add_special_tokens=False)`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        if set(ids) & set(tokenizer.added_tokens_decoder):
            raise ValueError(f"{type(tokenizer).__name__} cannot encode added tokens as text; use a fast tokenizer.")
        return ids
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for piece in pieces for token in backend.model.tokenize(piece)]


def split_literals(text: str) -> list[tuple[str, bool]]:
    """`text` as `(piece, is_literal)` pieces: marked control-token text is literal; lone markers are dropped."""
    parts = LITERAL_PIECES.split(text)
    pieces = [(parts[0], False)]
    for index in range(1, len(parts), 2):
        if parts[index] is not None:
            pieces.append((parts[index], True))
        pieces.append((parts[index + 1], False))
    return [(piece, literal) for piece, literal in pieces if piece]


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


PAD_KWARGS = ("padding", "max_length", "pad_to_multiple_of", "padding_side", "return_attention_mask")


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
        return_tensors = text_kwargs.get("return_tensors")
        media = self._process_media(images, videos, output_kwargs)
        if text is None:
            if images is None and videos is None:
                raise ValueError("Pass `text`, `images` or `videos`.")
            return BatchFeature(dict(media), tensor_type=return_tensors)
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(sample, str) for sample in texts):
            raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
        for sample in texts:
            check_text("text", sample)
        samples = [split_literals(sample) for sample in texts]
        spans = [self.replace_image_token(media, index) for index in range(len(media.get("pixel_values", [])))]
        self._check_placeholders(samples, len(spans), "videos" if videos is not None else "images")
        inputs = self._tokenize(samples, spans, text_kwargs)
        if text_kwargs.get("max_length") is not None:
            # Padded rows count their tokens (attention mask 1); without a mask, every id counts.
            rows = inputs["attention_mask"] if "attention_mask" in inputs else inputs["input_ids"]
            lengths = [int(sum(row)) if "attention_mask" in inputs else len(row) for row in rows]
            self._check_max_length(lengths, text_kwargs["max_length"])
        return BatchFeature({**inputs, **media}, tensor_type=return_tensors)

    def _merge_kwargs(self, ModelProcessorKwargs=None, tokenizer_init_kwargs=None, **kwargs) -> dict:
        """`ProcessorMixin._merge_kwargs`, leaving the kwargs class's defaults unchanged (`kept_kwargs_defaults`)."""
        ModelProcessorKwargs = ModelProcessorKwargs or self.valid_processor_kwargs
        with kept_kwargs_defaults(ModelProcessorKwargs):
            return super()._merge_kwargs(ModelProcessorKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs)

    def _process_media(self, images, videos, output_kwargs: dict) -> dict:
        """The image processor's `pixel_values` of `images`, or of `videos` (video arguments over image ones)."""
        if images is not None:
            return self.image_processor(images, **output_kwargs["images_kwargs"])
        if videos is not None:
            return self.image_processor(
                videos=videos, **{**output_kwargs["images_kwargs"], **output_kwargs["videos_kwargs"]}
            )
        return {}

    def _check_placeholders(self, samples: list[list[tuple[str, bool]]], num_media: int, media: str) -> None:
        """One `<image>` placeholder per image or video; the span tokens only as typed (literal) text."""
        reserved = (self.boi_token, self.image_pad_token, self.eoi_token)
        count = 0
        for pieces in samples:
            for piece, literal in pieces:
                if literal:
                    continue
                if token := next((token for token in reserved if token in piece), None):
                    raise ValueError(
                        f"`text` contains the reserved token {token!r}: the processor writes image spans itself from "
                        f"the {self.image_token!r} placeholders (`apply_chat_template` turns typed tokens into text)."
                    )
                count += piece.count(self.image_token)
        if count != num_media:
            raise ValueError(f"Found {count} {self.image_token} placeholders in the text but {num_media} {media}.")

    def _tokenize(self, samples: list[list[tuple[str, bool]]], spans: list[str], text_kwargs: dict):
        """The rows of `samples` with the placeholders replaced by `spans` (in order); literal pieces are encoded as
        plain text, the rest as the model's format."""
        spans = iter(spans)

        def expand(piece: str) -> str:
            parts = piece.split(self.image_token)
            return "".join(part + (next(spans) if index < len(parts) - 1 else "") for index, part in enumerate(parts))

        samples = [[(piece if literal else expand(piece), literal) for piece, literal in pieces] for pieces in samples]
        if all(len(pieces) <= 1 and not any(literal for _, literal in pieces) for pieces in samples):  # no markers
            return self.tokenizer(["".join(piece for piece, _ in pieces) for pieces in samples], **text_kwargs)
        ids = [
            [i for piece, literal in pieces for i in self._encode_piece(piece, literal, text_kwargs)]
            for pieces in samples
        ]
        padding = {name: text_kwargs[name] for name in PAD_KWARGS if text_kwargs.get(name) is not None}
        return self.tokenizer.pad({"input_ids": ids}, **padding)

    def _encode_piece(self, piece: str, literal: bool, text_kwargs: dict) -> list[int]:
        if literal:
            return encode_as_text(self.tokenizer, piece)
        return self.tokenizer.encode(piece, add_special_tokens=text_kwargs.get("add_special_tokens", False))

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
        used as it is. Control tokens typed in the messages' roles and texts (`<|im_end|>`, `<image>`, ...) are marked
        (`mark_control_tokens`), so that this processor encodes them as plain text: only the template writes
        control tokens and placeholders."""
        batched = isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        if chat_template is None:
            conversations = [self._with_system_prompt(c) for c in conversations]
        conversations = [[self._mark_message(message) for message in c] for c in conversations]
        for name in ("tools", "documents"):  # rendered by templates that take them
            if kwargs.get(name) is not None:
                kwargs[name] = self._mark_strings(kwargs[name])
        return super().apply_chat_template(conversations if batched else conversations[0], chat_template, **kwargs)

    @cached_property
    def _control_tokens(self) -> re.Pattern:
        """Every added token but whitespace ones: what typed text must not become (longest first)."""
        tokens = [t.content for t in self.tokenizer.added_tokens_decoder.values() if not t.content.isspace()]
        return re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)) or "(?!)")

    def mark_control_tokens(self, text: str, keep: tuple[str, ...] = ()) -> str:
        """`text` with every control token in it but those in `keep` marked as literal text (markers already in it
        are dropped first, so they cannot be forged); the processor encodes marked tokens as plain text
        (docs/architecture.md §14)."""
        text = text.replace(LITERAL_START, "").replace(LITERAL_END, "")
        return self._control_tokens.sub(
            lambda match: match[0] if match[0] in keep else LITERAL_START + match[0] + LITERAL_END, text
        )

    def _mark_message(self, message: dict) -> dict:
        """A message the caller wrote, its strings marked (`mark_control_tokens`): only the template writes control
        tokens. A string content keeps its `<image>` placeholders (the official prompt's `"<image>\n" + question`);
        in text items, as everywhere else, `<image>` is text (images go in `{"type": "image"}` items). Text items that
        follow each other are kept apart by a lone marker, so that their texts cannot join into a control token."""
        marked = {key: self._mark_strings(value) for key, value in message.items() if key != "content"}
        content = message.get("content")
        if isinstance(content, str):
            marked["content"] = self.mark_control_tokens(content, keep=(self.image_token,))
        elif isinstance(content, (list, tuple)):
            marked["content"], previous = [], None
            for item in content:
                if isinstance(item, dict) and item.get("type") == "text":
                    text = self.mark_control_tokens(item["text"])
                    item = {**item, "text": LITERAL_END + text if previous == "text" else text}
                marked["content"].append(item)
                previous = item.get("type") if isinstance(item, dict) else None
        elif content is not None:
            marked["content"] = self._mark_strings(content)
        return marked

    def _mark_strings(self, value):
        """Every string in `value` (nested lists and dicts: a message's other fields) marked."""
        if isinstance(value, str):
            return self.mark_control_tokens(value)
        if isinstance(value, (list, tuple)):
            return [self._mark_strings(item) for item in value]
        if isinstance(value, dict):
            return {key: self._mark_strings(item) for key, item in value.items()}
        return value

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

        for text in texts:
            check_text("prompts", text)
        rows = [layout(encode_as_text(self.tokenizer, text)) for text in texts]  # typed control tokens stay text
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
