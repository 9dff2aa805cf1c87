"""Diffusers pipelines for TUNA: `TunaPipeline` (text-to-image, text-to-video) and `TunaEditPipeline` (editing).

They hold `transformer` (`tuna_hf.TunaForUnifiedMultimodal`, with Tuna's Wan 2.2 VAE inside as
`transformer.model.vae`, so a repository stores the VAE once, under `transformer/`), `processor` (`TunaProcessor`)
and `scheduler` (`TunaFlowMatchScheduler`).
"""

import diffusers

from .base import OFFICIAL_EDIT_NEGATIVE_PROMPT, OFFICIAL_GUIDANCE_DEFAULTS, TunaBasePipeline
from .lora import TunaLoraLoaderMixin
from .pipeline_output import TunaPipelineOutput, TunaVideoPipelineOutput
from .pipeline_tuna import OFFICIAL_T2I_NEGATIVE_PROMPT, TunaPipeline
from .pipeline_tuna_edit import TunaEditPipeline
from .prompt_cache import TunaPromptCache, TunaPromptRows

# `DiffusionPipeline.from_pretrained` resolves `model_index.json`'s `_class_name` on the diffusers namespace
# (docs/architecture.md §9); after `import tuna_hf` the generic loader finds our pipelines.
for _pipeline_class in (TunaPipeline, TunaEditPipeline):
    setattr(diffusers, _pipeline_class.__name__, _pipeline_class)

__all__ = [
    "OFFICIAL_EDIT_NEGATIVE_PROMPT",
    "OFFICIAL_GUIDANCE_DEFAULTS",
    "OFFICIAL_T2I_NEGATIVE_PROMPT",
    "TunaBasePipeline",
    "TunaEditPipeline",
    "TunaLoraLoaderMixin",
    "TunaPipeline",
    "TunaPipelineOutput",
    "TunaPromptCache",
    "TunaPromptRows",
    "TunaVideoPipelineOutput",
]
