"""Every code block of the README runs, in order, as a newcomer would run it from the repository root.

Blocks run in a scratch folder that links the repository's `checkpoints/`, `examples/` and `conversion/`, so their
outputs stay out of the clone. Blocks that need what no test machine has run on tiny stand-ins (`stand_ins` lists
each replaced text). Of the two set-up commands, the quickstart one runs literally in the clone; the test one is what
`.ci/run` runs (checked, not re-run inside pytest).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_conversion import conversion_arguments

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.DOTALL | re.MULTILINE)
BLOCKS = BLOCK.findall((REPO / "README.md").read_text())
LINKED = ("checkpoints", "examples", "conversion")
TEST_COMMAND = "bash scripts/install.sh && python -m pytest"
PARITY_BLOCK = next(code for _, code in BLOCKS if "parity/make_official_env.sh" in code)
# The test command is CI itself; the screenshot needs Debian's chromium (tests/test_gradio_app.py, `pytest -m slow`);
# the parity block makes the official environment (slow, below).
RUN_ELSEWHERE = (TEST_COMMAND, PARITY_BLOCK.strip(), "python examples/demo_screenshot.py --output-dir docs")
# vLLM-Omni's blocks need its environment: `bash tests/vllm_omni/run.sh` makes it and runs the engine tests, which
# run the offline block too; `vllm serve` needs a GPU (README "Serving with vLLM-Omni").
VLLM_OMNI_BLOCKS = [index for index, (_, code) in enumerate(BLOCKS) if "vllm" in code]
RUNNABLE = [
    index
    for index, (_, code) in enumerate(BLOCKS)
    if code.strip() not in RUN_ELSEWHERE and index not in VLLM_OMNI_BLOCKS
]
CONVERSION_SOURCE = "--checkpoint tuna_2_pixel_7b.pt --preset tuna-2-7b \\\n    --tokenizer Qwen2.5-7B-Instruct/"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (root / name).symlink_to(REPO / name)
    return root


@pytest.fixture(scope="module")
def stand_ins(workdir) -> dict[str, str]:
    """README text → what the test runs instead: the official tiny checkpoint for the conversion block."""
    arguments = conversion_arguments("tuna_2", workdir, workdir / "unused")
    official = " ".join(arguments[: arguments.index("--output")])
    return {CONVERSION_SOURCE: official}


def run_block(language: str, code: str, cwd: Path) -> None:
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, check=False, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{code}\n--- stderr ---\n{result.stderr[-3000:]}"


def test_the_readme_has_the_blocks_this_test_knows():
    assert len(BLOCKS) == 17, [code.splitlines()[0] for _, code in BLOCKS]
    assert sum("scripts/install.sh" in code for _, code in BLOCKS) == 2
    assert len(VLLM_OMNI_BLOCKS) == 3


def test_ci_runs_the_readme_test_command():
    assert [code.strip() for _, code in BLOCKS if code.strip() in RUN_ELSEWHERE] == list(RUN_ELSEWHERE)
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", RUNNABLE)
def test_block(index, workdir, stand_ins):
    language, code = BLOCKS[index]
    for text, replacement in stand_ins.items():
        code = code.replace(text, replacement)
    if "scripts/install.sh" in code:
        run_block(language, code, REPO)  # the installer installs the folder it lives in
    elif "gradio_app.py" in code:
        run_server_block(code, workdir)
    else:
        run_block(language, code, workdir)


def run_server_block(code: str, cwd: Path) -> None:
    """The demo command starts a server: it must come up (print its local URL), then it is stopped."""
    server = subprocess.Popen(
        ["bash", "-c", code],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    output, deadline = "", time.monotonic() + 180
    try:
        while "Running on local URL" not in output and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            output += line
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Running on local URL" in output, output[-3000:]


@pytest.mark.slow
def test_the_parity_block_records_references_the_suites_pass_on(tmp_path):
    """The block as written, in a scratch folder; `TUNA_OFFICIAL_SOURCE` (a local clone) replaces GitHub if set."""
    code = PARITY_BLOCK.replace("/tmp/official", str(tmp_path / "official"))
    code = code.replace("/tmp/tuna-parity", str(tmp_path / "references"))
    if source := os.environ.get("TUNA_OFFICIAL_SOURCE"):
        code = code.replace(
            f"make_official_env.sh {tmp_path / 'official'}", f"make_official_env.sh {tmp_path / 'official'} {source}"
        )
    environment = {key: value for key, value in os.environ.items() if key != "TUNA_REQUIRE_PARITY"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=REPO, env=environment, check=False)
    assert result.returncode == 0
