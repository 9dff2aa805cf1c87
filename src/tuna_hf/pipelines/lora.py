"""LoRA loading for the TUNA pipelines, whose `transformer` is a transformers model (docs/architecture.md §9).

Diffusers' `LoraBaseMixin` already handles transformers models in `set_adapters`, `fuse_lora`, `unfuse_lora`,
`disable_lora`, `enable_lora`, `delete_adapters` and `unload_lora_weights`; only loading and saving are TUNA-specific.
"""

import contextlib
import math
import numbers
import os
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LoraBaseMixin, _fetch_state_dict, _load_lora_into_text_encoder
from diffusers.utils import logging

from ..locks import lock_for

logger = logging.get_logger(__name__)

PEFT_ADAPTER_CONFIG = "adapter_config.json"


class TunaLoraLoaderMixin(LoraBaseMixin):
    """`load_lora_weights` from a PEFT adapter directory or a diffusers LoRA file (keys prefixed `transformer.`)."""

    _lora_loadable_modules = ["transformer"]
    transformer_name = "transformer"

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        **kwargs,
    ):
        """
        Load a LoRA into `self.transformer` under `adapter_name`. A directory with `adapter_config.json` is a PEFT
        adapter (as saved by `TunaForUnifiedMultimodal.save_pretrained` with an adapter, or by PEFT); anything else
        is read as a diffusers LoRA state dict (`pytorch_lora_weights.safetensors`, see `save_lora_weights`).
        """
        before = set(getattr(self.transformer, "peft_config", None) or {})
        try:
            self._load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name, **kwargs)
        except BaseException:
            # A load that fails after PEFT injected the adapter's layers would leave it half registered.
            if not before:
                self.unload_lora_weights()  # the model as it was: no LoRA layers at all
            elif added := sorted(set(getattr(self.transformer, "peft_config", None) or {}) - before):
                self.transformer.delete_adapter(added)
            raise

    def _load_lora_weights(self, source, adapter_name: str | None, **kwargs) -> None:
        if not isinstance(source, dict) and (Path(source) / PEFT_ADAPTER_CONFIG).is_file():
            self.transformer.load_adapter(str(source), adapter_name=adapter_name)
            return
        state_dict, metadata = self.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        if not any(key.startswith(f"{self.transformer_name}.") for key in state_dict):
            raise ValueError(
                f"No LoRA weights for `{self.transformer_name}` in "
                f"{source if not isinstance(source, dict) else 'the dict'}: keys must start with "
                f"`{self.transformer_name}.`."
            )
        _load_lora_into_text_encoder(
            state_dict,
            network_alphas=None,
            text_encoder=self.transformer,
            prefix=self.transformer_name,
            text_encoder_name=self.transformer_name,
            adapter_name=adapter_name,
            _pipeline=self,
            metadata=metadata,
        )

    @contextlib.contextmanager
    def lora_scale(self, attention_kwargs: dict | None):
        """The call's LoRA scale, `attention_kwargs={"scale": s}` as in diffusers' pipelines: the active adapters'
        scales (as `set_adapters` left them) times `s` for the block, then exactly as they were (0: the model without
        them). Calls on a transformer with adapters run one at a time; fused adapters cannot be scaled."""
        from peft.tuners.lora import LoraLayer

        unknown = sorted(set(attention_kwargs or {}) - {"scale"})
        if unknown:
            raise ValueError(f"`attention_kwargs` takes only `scale` (the LoRA scale) here, got {unknown}.")
        scale = (attention_kwargs or {}).get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"`attention_kwargs['scale']` must be a finite number, got {scale!r}.")
        layers = [module for module in self.transformer.modules() if isinstance(module, LoraLayer)]
        if not layers:
            if scale != 1.0:
                logger.warning(f"`attention_kwargs['scale']={scale}` has no effect: the transformer has no adapter.")
            yield
            return
        with lock_for(self.transformer):  # the scale lives on the shared LoRA layers while the call runs
            if scale != 1.0 and any(layer.merged for layer in layers):
                raise ValueError("`attention_kwargs['scale']` cannot scale fused adapters: `unfuse_lora()` first.")
            saved = [dict(layer.scaling) for layer in layers]
            for layer in layers:
                layer.scale_layer(float(scale))
            try:
                yield
            finally:
                for layer, scaling in zip(layers, saved, strict=True):
                    layer.scaling.update(scaling)

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, return_lora_metadata: bool = False, **kwargs):
        """A diffusers LoRA state dict from a dict, a file, a directory or a Hub repo: safetensors, or (as diffusers
        does unless `use_safetensors=True`) a `.bin` written with `safe_serialization=False`, read with
        `torch.load(weights_only=True)`."""
        use_safetensors = kwargs.pop("use_safetensors", None)
        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            weight_name=kwargs.pop("weight_name", None),
            use_safetensors=True if use_safetensors is None else use_safetensors,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=use_safetensors is None,
        )
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")
        return (state_dict, metadata) if return_lora_metadata else state_dict

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, torch.Tensor],
        transformer_lora_adapter_metadata: dict | None = None,
        **kwargs,
    ):
        """
        Write `pytorch_lora_weights.safetensors` (keys prefixed `transformer.`). `transformer_lora_layers` is PEFT's
        `get_peft_model_state_dict(model)`; `transformer_lora_adapter_metadata` its `LoraConfig.to_dict()`.
        """
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.transformer_name: transformer_lora_layers},
            lora_metadata={cls.transformer_name: transformer_lora_adapter_metadata},
            **kwargs,
        )
