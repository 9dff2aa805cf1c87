"""
What the older libraries in tuna-hf's supported range lack, in one place (README "Supported versions").

The newest versions are the reference: every name here is the newer library's own where it exists, and each shim
says which version it serves and what that version has instead. Nothing here changes behaviour on the newest set.
"""

import contextlib
import copy
import threading

import numpy as np
import PIL.Image
import torch
import transformers
from packaging import version
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# transformers 5.14's top-level `AutoImageProcessor` is a placeholder that demands torchvision; the class itself, and
# the PIL backend TunaImageProcessor uses, need only PIL. The same class on every version.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

try:  # transformers >= 5.20: composite configs declare their sub-configs, the base `__post_init__` builds them
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.20 has `sub_configs` only; each composite config builds its own
    SubConfigSpec = None

try:  # transformers >= 5.21
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.21 slices inline in each model; this is the newer helper

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """The positions of `hidden_states` whose logits are computed: the last `logits_to_keep` (0 is all), the
        1-D positions given, 2-D per-row positions, or a 2-D boolean mask."""
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim == 2:
            if logits_to_keep.dtype == torch.bool:
                return hidden_states[logits_to_keep]
            return torch.take_along_dim(hidden_states, logits_to_keep[..., None], dim=1)
        if isinstance(logits_to_keep, int):
            logits_to_keep = slice(-logits_to_keep, None)
        return hidden_states[:, logits_to_keep, :]


__all__ = [
    "MERGE_KWARGS_WRITES_DEFAULTS",
    "ActivationCheckpointingNames",
    "AutoImageProcessor",
    "SubConfigSpec",
    "build_sub_config",
    "kept_kwargs_defaults",
    "pil_to_rgb_array",
    "slice_logits_to_keep",
]


def build_sub_config(
    key: str, value, config_class: type, default_model_type: str | None = None, optional: bool = False
):
    """
    The sub-config `key` of a composite config from what was passed, as transformers >= 5.20's `SubConfigSpec` builds
    it (older versions build none): a config stays as it is; `None` stays `None` when `optional`; a dict (or `None`)
    becomes `config_class(**value)`, or with `AutoConfig` the class of its `model_type` (`default_model_type` if it
    has none).
    """
    if isinstance(value, PreTrainedConfig) or (value is None and optional):
        return value
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"`{key}` must be a dict, a PreTrainedConfig or None, got {type(value).__name__}.")
    value = dict(value or {})
    if config_class is not AutoConfig:
        return config_class(**value)
    model_type = value.get("model_type", default_model_type)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"`{key}.model_type` must be a transformers model type, got {model_type!r}.")
    return CONFIG_MAPPING[model_type](**value)


if hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers >= 5.23

    class ActivationCheckpointingNames:
        """transformers >= 5.23 has the `activation_checkpointing_*` names itself."""

else:

    class ActivationCheckpointingNames:
        """
        transformers < 5.23 calls them `gradient_checkpointing_*` (5.23 renamed them and kept the old names as
        aliases): the newer names on the older library. Its `every_n_layers` and `offload` arguments do not exist.
        """

        def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None):
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)

        def activation_checkpointing_disable(self):
            self.gradient_checkpointing_disable()

        @property
        def is_activation_checkpointing(self) -> bool:
            return self.is_gradient_checkpointing


# transformers < 5.23's `ProcessorMixin._merge_kwargs` updates the kwargs class's `_defaults["common_kwargs"]` in
# place with the call's `common_kwargs`, so one call's `common_kwargs={"return_tensors": None}` became every later
# call's default; 5.23 merges into a copy.
MERGE_KWARGS_WRITES_DEFAULTS = version.parse(transformers.__version__).release < (5, 23)
_DEFAULTS_LOCK = threading.Lock()


@contextlib.contextmanager
def kept_kwargs_defaults(kwargs_class: type):
    """
    Before transformers 5.23, leaves a processor kwargs class's `_defaults` as they were around a `_merge_kwargs`
    (`MERGE_KWARGS_WRITES_DEFAULTS`); merges of concurrent calls take turns, so none sees another's defaults.
    Does nothing on newer versions.
    """
    if not MERGE_KWARGS_WRITES_DEFAULTS:
        yield
        return
    with _DEFAULTS_LOCK:
        saved = copy.deepcopy(kwargs_class._defaults)
        try:
            yield
        finally:
            kwargs_class._defaults.clear()
            kwargs_class._defaults.update(saved)


def pil_to_rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """
    A PIL image as `[H, W, 3]` uint8 RGB, any transparency composited on white: what transformers >= 5.21's
    `image_transforms.convert_to_rgb(image, return_numpy=True)` gives. Before 5.21, `convert_to_rgb` has no
    `return_numpy` and drops alpha without compositing (transparent pixels would turn black instead of white).
    """
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
    return np.array(image.convert("RGB"))
