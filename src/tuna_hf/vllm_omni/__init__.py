"""The vLLM-Omni plugin of tuna-hf: serves TUNA's text-to-image and editing with vLLM-Omni's engine.

vLLM-Omni calls [`register`] in each of its processes through the `vllm_omni.general_plugins` entry point that the
package declares; it registers [`~tuna_hf.vllm_omni.pipeline.TunaOmniPipeline`], a native vLLM-Omni pipeline, for
the `_class_name`s of TUNA repositories (`model_index.json`), so `Omni(model=repo)` and `vllm serve repo --omni`
serve every variant (Tuna, Tuna-R, Tuna-2) without vLLM-Omni's generic diffusers adapter. Importing this module does
not import vLLM-Omni.
"""

# The `_class_name`s a TUNA repository's `model_index.json` may hold; one pipeline serves both tasks.
ARCHITECTURES = ("TunaPipeline", "TunaEditPipeline")
PIPELINE_MODULE = "tuna_hf.vllm_omni.pipeline"


def register() -> None:
    """Registers TUNA's pipeline with vLLM-Omni's diffusion model registry (the plugin's entry point). vLLM-Omni may
    call it several times in one process; registering again replaces the entry with the same one."""
    from vllm_omni.diffusion.registry import register_diffusion_model

    for architecture in ARCHITECTURES:
        register_diffusion_model(
            architecture,
            PIPELINE_MODULE,
            "TunaOmniPipeline",
            pre_process_func_name="get_tuna_pre_process_func",
        )


__all__ = ["ARCHITECTURES", "register"]
