"""tuna-hf: the TUNA family of unified multimodal models (Tuna, Tuna-R, Tuna-2) for transformers and diffusers.

Importing the package registers the model with the transformers Auto classes (no `trust_remote_code` needed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from ._compat import AutoImageProcessor
from .configuration_tuna import TunaConfig, TunaFlowHeadConfig
from .image_processing_tuna import TunaImageProcessor
from .modeling_tuna import TunaForUnifiedMultimodal, TunaModel, TunaPreTrainedModel
from .pipelines import TunaEditPipeline, TunaPipeline, TunaPipelineOutput, TunaVideoPipelineOutput
from .processing_tuna import TunaProcessor, add_tuna_tokens
from .scheduling_tuna import TunaFlowMatchScheduler

AutoConfig.register("tuna", TunaConfig, exist_ok=True)
AutoConfig.register("tuna_flow_head", TunaFlowHeadConfig, exist_ok=True)
# `AutoModel` gives the model with both heads (it answers and generates); the base `TunaModel` is imported by name.
AutoModel.register(TunaConfig, TunaForUnifiedMultimodal, exist_ok=True)
AutoModelForImageTextToText.register(TunaConfig, TunaForUnifiedMultimodal, exist_ok=True)
AutoImageProcessor.register(TunaConfig, image_processor_classes={"pil": TunaImageProcessor}, exist_ok=True)
AutoProcessor.register(TunaConfig, TunaProcessor, exist_ok=True)

__all__ = [
    "TunaConfig",
    "TunaEditPipeline",
    "TunaFlowHeadConfig",
    "TunaFlowMatchScheduler",
    "TunaForUnifiedMultimodal",
    "TunaImageProcessor",
    "TunaModel",
    "TunaPipeline",
    "TunaPipelineOutput",
    "TunaPreTrainedModel",
    "TunaProcessor",
    "TunaVideoPipelineOutput",
    "add_tuna_tokens",
]
