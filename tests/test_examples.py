"""The README's main job runs end to end on the embedded checkpoint, and is reproducible."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_quickstart(output_dir: Path) -> str:
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--output-dir", str(output_dir)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart_writes_its_outputs_and_repeats_them(tmp_path):
    report = run_quickstart(tmp_path / "first")
    assert "Outputs written to" in report and "read back right" in report
    for name in ("text_to_image.png", "edit.png", "question.png", "report.txt"):
        assert (tmp_path / "first" / name).exists(), name
    run_quickstart(tmp_path / "second")
    for name in ("text_to_image.png", "edit.png"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
