"""Image processor for TUNA (PIL backend)."""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import resize as np_resize
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.video_utils import VideoInput, make_batched_videos


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
        return super().preprocess(images, image_like_kwargs={"videos": videos}, **kwargs)

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
