"""Diffusers side of tuna-hf (`TunaPipeline`, `TunaEditPipeline`, `TunaFlowMatchScheduler`): not built yet.

The transformer they will hold is `tuna_hf.TunaForUnifiedMultimodal`; its VAE (Tuna) lives inside it
(`transformer.model.vae`), so a pipeline repository stores the Wan 2.2 weights once, under `transformer/`.
"""
