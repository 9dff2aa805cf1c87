"""The README's main job runs end to end."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_writes_its_outputs(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--output-dir", str(tmp_path), "--steps", "2"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("text_to_image.png", "edit.png", "report.txt", "tiny-tuna/model_index.json"):
        assert (tmp_path / name).exists(), name
