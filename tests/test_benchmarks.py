"""The benchmark scripts run: `benchmarks/sizing.py` sizes every official preset, `benchmarks/bench_gpu.py` runs on
the tiny preset."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

from tuna_hf.official_presets import OFFICIAL_PRESETS

REPO = Path(__file__).resolve().parents[1]
GPU_CLASSES = {"24 GB", "40 GB", "48 GB", "80 GB", "none"}


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text`, as stripped cells."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line[:1] == "|"]
    return [cells for cells in rows if cells[0] not in ("preset", "---")]


def test_sizing_prints_every_preset(capsys):
    """Every preset gets a summary row per precision; sizes parse, shrink with the precision, and grow with the
    image size and with each call's cache and activations on top of the weights."""
    runpy.run_path(str(REPO / "benchmarks" / "sizing.py"))["main"](["--markdown"])
    summary = capsys.readouterr().out.split("Peak of one call")[1]
    rows = {(cells[0], cells[1]): cells[2:] for cells in markdown_rows(summary)}
    assert set(rows) == {(preset, precision) for preset in OFFICIAL_PRESETS for precision in ("bf16", "int8", "4-bit")}
    for preset in OFFICIAL_PRESETS:
        weights = []
        for precision in ("bf16", "int8", "4-bit"):
            params, weight, t2i_512, t2i_1024, edit_512, fits = rows[preset, precision]
            assert float(params.removesuffix("B")) > 1 and fits in GPU_CLASSES
            assert float(weight) < float(t2i_512) < float(t2i_1024) and float(weight) < float(edit_512)
            weights.append(float(weight))
        assert weights == sorted(weights, reverse=True)


def test_bench_gpu_runs_end_to_end_with_the_tiny_preset():
    """The GPU benchmark's whole code path on the CPU (dynamo's eager backend keeps it fast; full-graph capture still
    has to succeed)."""
    command = [sys.executable, "benchmarks/bench_gpu.py", "--preset", "tiny", "--sizes", "32", "--steps", "2"]
    command += ["--new-tokens", "4", "--compile-backend", "eager"]
    output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    timed = [line for line in output.splitlines() if re.search(r"\d s/(image|token) +peak +[\d.]+ MiB$", line)]
    assert len(timed) == 6 + 2 + 2 + 2 + 2 + 2  # bf16: 6 eager calls, VQA ×2, 2 compiled; int8: 2, 2, 2
    assert sum("official padded" in line for line in timed) == 2
