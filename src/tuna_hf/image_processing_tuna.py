"""Image processor for TUNA (PIL backend)."""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import resize as np_resize
from transformers.image_utils import (
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    infer_channel_dimension_format,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.video_utils import VideoInput, make_batched_videos

from ._compat import pil_to_rgb_array

# The resize-to-cover before the centre crop (the official transform) grows with the mismatch of aspect ratios: a
# 1×100000 strip covering 512×512 would be 512×51200000 pixels. Refused beyond this many times the target's pixels
# (a 64:1 strip into a square; a 20:1 page screenshot passes), as are images beyond PIL's decompression-bomb limit.
MAX_COVER_FACTOR = 64
UINT16_TO_UINT8 = 257  # 65535 / 255
PIL_ARRAY_MODES = ("I", "F")  # 32-bit integer and float images: their values follow the array rules
PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}  # PIL's premultiplied alpha, converted to straight alpha first


def to_rgb_uint8(image: ImageInput, input_data_format: ChannelDimension | str | None = None) -> np.ndarray:
    """
    One image as the 8-bit RGB the model reads, `[3, H, W]` uint8 (docs/architecture.md §13, README "Image inputs").

    Accepted, as diffusers' `VaeImageProcessor` and transformers' image processors take them: PIL images of any mode
    (16-bit `I;16*` scaled to 8 bits, alpha composited on white); uint8 arrays/tensors; uint16 ones (scaled to 8 bits);
    other integer ones with values in [0, 255]; float ones with values in [0, 1]. Arrays are `[H, W, C]` or
    `[C, H, W]` with 1, 3 or 4 channels. Anything else is refused with what was expected: nothing is clipped.
    """
    if isinstance(image, PIL.Image.Image):
        check_image_size(image.height, image.width)
        image = image.convert(PREMULTIPLIED_MODES[image.mode]) if image.mode in PREMULTIPLIED_MODES else image
        if not (image.mode.startswith("I;16") or image.mode in PIL_ARRAY_MODES):
            return _channels_first(pil_to_rgb_array(image))
        image, input_data_format = np.array(image), ChannelDimension.LAST
    elif isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`images` must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}.")
    if image.ndim == 2:
        image, input_data_format = image[..., None], ChannelDimension.LAST
    if image.ndim != 3:
        raise ValueError(f"`images`: expected an image of shape [H, W, C] or [C, H, W], got {image.shape}.")
    if input_data_format is None:
        try:
            input_data_format = infer_channel_dimension_format(image, num_channels=(1, 3, 4))
        except ValueError:
            raise ValueError(f"`images`: expected 1, 3 or 4 channels, got an image of shape {image.shape}.") from None
    if ChannelDimension(input_data_format) == ChannelDimension.FIRST:
        image = np.moveaxis(image, 0, -1)
    check_image_size(*image.shape[:2])
    pixels = _to_uint8(image)
    if pixels.shape[-1] not in (1, 3, 4):
        raise ValueError(f"`images`: expected 1, 3 or 4 channels, got {pixels.shape[-1]}.")
    image = PIL.Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)  # L, RGB or RGBA
    return _channels_first(pil_to_rgb_array(image))


def check_image_size(height: int, width: int) -> None:
    """An image must have pixels, and no more than twice PIL's decompression-bomb limit (checked before any copy)."""
    if height == 0 or width == 0:
        raise ValueError(f"`images`: expected an image with pixels, got one of {height}×{width}.")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > 2 * limit:
        raise ValueError(
            f"`images`: an image of {height}×{width} pixels exceeds PIL's decompression-bomb limit of {2 * limit} "
            "pixels; downscale it first."
        )


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit pixel values of an `[H, W, C]` array, by the rules of `to_rgb_uint8`."""
    if not image.dtype.isnative:  # big-endian data (a TIFF's, PIL's `I;16B`): the same values, in native order
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # round(x / 257) in integers
        return ((image.astype(np.uint32) + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8).astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"`images`: expected integer or float pixel values, got dtype {image.dtype}.")
    low, high = (image.min(), image.max()) if image.size else (0, 0)
    if np.issubdtype(image.dtype, np.integer):
        if low < 0 or high > 255:
            raise ValueError(
                f"`images`: integer pixel values must be in [0, 255] (uint16: [0, 65535]), got [{low}, {high}] "
                f"({image.dtype})."
            )
        return image.astype(np.uint8)
    if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
        raise ValueError(
            f"`images`: float pixel values must be in [0, 1] (the diffusers and transformers convention), got "
            f"[{low}, {high}]. Map [-1, 1] images with `(x + 1) / 2`; pass [0, 255] ones as uint8."
        )
    return np.round(image.astype(np.float64) * 255.0).astype(np.uint8)


def _channels_first(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(image, -1, 0))


class TunaImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    height (`int`, *optional*):
        Output height for this call, overrides `size["height"]`.
    width (`int`, *optional*):
        Output width for this call, overrides `size["width"]`.
    size_divisor (`int`, *optional*, defaults to 16):
        The output height and width must be multiples of this value (the model's patch size).
    """

    height: int | None
    width: int | None
    size_divisor: int | None


class TunaImageProcessor(PilBackend):
    r"""
    Constructs a TUNA image processor, identical to the official inference transform: bicubic resize to cover the
    target size (aspect ratio kept), centre crop, then scaling to `[-1, 1]`. Images give `pixel_values` of shape
    `[B, 3, H, W]`; videos (lists of frames) give `[B, 3, T, H, W]`.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 512, "width": 512}
    size_divisor = 16
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    valid_kwargs = TunaImageProcessorKwargs

    def __call__(self, images: ImageInput | None = None, videos: VideoInput | None = None, **kwargs) -> BatchFeature:
        return self.preprocess(images, videos=videos, **kwargs)

    def preprocess(
        self,
        images: ImageInput | None = None,
        videos: VideoInput | None = None,
        **kwargs: Unpack[TunaImageProcessorKwargs],
    ) -> BatchFeature:
        """Preprocess `images` (one or a batch) or `videos` (a list of frames, or a batch of such lists)."""
        if (images is None) == (videos is None):
            raise ValueError("Pass exactly one of `images` or `videos`.")
        # `videos` positionally: transformers < 5.18 has no `image_like_kwargs`; every version hands `*args` on to
        # `_preprocess_image_like_inputs(images, videos, ...)`.
        return super().preprocess(images, videos, **kwargs)

    def _standardize_kwargs(self, height=None, width=None, size_divisor=None, **kwargs) -> dict:
        """Fold per-call `height`/`width` into `size`; both must be multiples of `size_divisor`."""
        kwargs = super()._standardize_kwargs(**kwargs)
        size = kwargs["size"]
        height, height_arg = (height, "height") if height is not None else (size.height, 'size["height"]')
        width, width_arg = (width, "width") if width is not None else (size.width, 'size["width"]')
        for name, value in ((height_arg, height), (width_arg, width)):
            if not isinstance(value, int) or value <= 0 or value % size_divisor:
                raise ValueError(f"`{name}` must be a positive multiple of {size_divisor}, got {value}.")
        kwargs.update(size=SizeDict(height=height, width=width), size_divisor=size_divisor)
        return kwargs

    def process_image(
        self, image: ImageInput, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs
    ) -> np.ndarray:
        """One image or frame as `[3, H, W]` uint8 (`to_rgb_uint8`), checked to be non-empty and of a size PIL
        accepts."""
        if do_convert_rgb is False:
            raise ValueError("`do_convert_rgb=False` is not supported: TUNA reads 3-channel RGB images.")
        return to_rgb_uint8(image, input_data_format)

    def image_size(self, image: ImageInput) -> tuple[int, int]:
        """The (height, width) of one image as this processor reads it (its channel axis inferred the same way)."""
        return tuple(self.process_image(image).shape[-2:])

    def _preprocess_image_like_inputs(self, images, videos=None, **kwargs) -> BatchFeature:
        if videos is None:
            return super()._preprocess_image_like_inputs(images, **kwargs)
        return_tensors = kwargs.pop("return_tensors")
        clips = []
        for video in make_batched_videos(videos):
            frames = self._prepare_image_like_inputs(list(video), **kwargs)
            frames = self._preprocess(frames, return_tensors=None, **kwargs)["pixel_values"]
            clips.append(np.stack(frames, axis=1))
        return BatchFeature(data={"pixel_values": clips}, tensor_type=return_tensors)

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | None = None, **kwargs
    ) -> np.ndarray:
        """Resize (PIL, aspect ratio kept) to cover `size`, then centre-crop to exactly `size`."""
        height, width = image.shape[-2:]
        scale = max(size.width / width, size.height / height)
        if scale * scale * height * width > MAX_COVER_FACTOR * size.height * size.width:
            raise ValueError(
                f"`images`: a {height}×{width} image is too far from the {size.height}×{size.width} target's aspect "
                f"ratio (covering the target would take more than {MAX_COVER_FACTOR} times its pixels); crop it "
                "closer to the target's aspect ratio first."
            )
        image = np_resize(
            image,
            size=(round(height * scale), round(width * scale)),
            resample=resample if resample is not None else self.resample,
            data_format=ChannelDimension.FIRST,
            input_data_format=ChannelDimension.FIRST,
        )
        return self.center_crop(image, size)

    def postprocess(self, images, output_type: str = "pil"):
        """
        Convert `[-1, 1]` pixels (`[B, 3, H, W]` or `[B, 3, T, H, W]`) to uint8 exactly as the official `denorm`:
        `clamp((x + 1) / 2, 0, 1) * 255`, truncated. `output_type` is `"pil"` (list of images, or of frame lists),
        `"np"` (`[B, (T,) H, W, 3]`) or `"pt"` (`[B, 3, (T,) H, W]`).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f'`output_type` must be "pil", "np" or "pt", got {output_type!r}.')
        images = torch.as_tensor(images).detach()
        if images.ndim not in (4, 5):
            raise ValueError(f"Expected images of shape [B, 3, H, W] or [B, 3, T, H, W], got {tuple(images.shape)}.")
        images = torch.clamp((images + 1.0) / 2.0, min=0.0, max=1.0).to(torch.float32) * 255.0
        images = images.movedim(1, -1).cpu().numpy().astype(np.uint8)
        if output_type == "np":
            return images
        if output_type == "pt":
            return torch.from_numpy(images).movedim(-1, 1)
        if images.ndim == 5:
            return [[PIL.Image.fromarray(frame) for frame in video] for video in images]
        return [PIL.Image.fromarray(image) for image in images]


__all__ = ["TunaImageProcessor"]
