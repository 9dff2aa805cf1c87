"""The gradio demo, driven through `gradio_client` on 127.0.0.1 against the embedded shapes checkpoint."""

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_examples import load_example

from tuna_hf import TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes import Scene
from tuna_hf.demo.shapes_bench import read_scene
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "shapes-tuna-2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model: str):
    """The demo for `model` on a free port of 127.0.0.1, and a client for it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo = load_example("examples/gradio_app.py").TunaDemo(model).build()
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client():
    with serve(str(CHECKPOINT)) as shapes_client:
        yield shapes_client


@pytest.fixture
def scene_file(tmp_path) -> str:
    path = tmp_path / "scene.png"
    Scene("blue", "square", "bottom right").draw().save(path)
    return str(path)


def test_answer_streams_the_right_answer(client, scene_file):
    answer = client.predict(handle_file(scene_file), "What color is the shape?", api_name="/answer")
    assert answer.strip() == "blue"


def test_generate_returns_the_asked_number_of_images(client):
    gallery = client.predict("a green triangle at the center", "", 64, 64, 20, 3.0, 0, 2, api_name="/generate")
    assert len(gallery) == 2
    images = [Image.open(item["image"]).convert("RGB") for item in gallery]
    assert all(image.size == (64, 64) for image in images)
    assert any(read_scene(image).matches(Scene("green", "triangle", "center")) for image in images)


def test_edit_changes_the_asked_attribute(client, scene_file):
    edited = Image.open(client.predict(handle_file(scene_file), "make it red", 20, 2.0, 0, api_name="/edit"))
    assert edited.size == (64, 64)
    assert read_scene(edited.convert("RGB")).matches(Scene("red", "square", "bottom right"))


def test_bad_input_gets_a_clear_message(client, scene_file):
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("  ", "", 64, 64, 2, 3.0, 0, 1, api_name="/generate")
    with pytest.raises(AppError, match="`height` must be a positive multiple of"):
        client.predict("a red circle at the top", "", 50, 64, 2, 3.0, 0, 1, api_name="/generate")
    with pytest.raises(AppError, match="context"):
        client.predict(handle_file(scene_file), "What shape is it? " * 3000, api_name="/answer")
    with pytest.raises(AppError, match="Upload an image"):
        client.predict(None, "What shape is it?", api_name="/answer")
    with pytest.raises(AppError, match="instruction is empty"):
        client.predict(handle_file(scene_file), "", 2, 2.0, 0, api_name="/edit")


def endpoints(client) -> set[str]:
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_no_video_tab_for_tuna_2(client):
    assert endpoints(client) == {"/answer", "/generate", "/edit"}


def test_video_tab_on_a_tuna(tmp_path):
    processor = tiny_tuna_processor(height=64, width=64)
    model = tiny_tuna_model("vae_siglip", processor.tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna")
    TunaPipeline(model, processor, scheduler).save_pretrained(tmp_path / "tuna")
    with serve(str(tmp_path / "tuna")) as tuna_client:
        assert "/video" in endpoints(tuna_client)
        video = Image.open(tuna_client.predict("a boat", 5, 64, 64, 3, 6.0, 0, api_name="/video"))
        assert video.n_frames == 5 and video.size == (64, 64)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
def test_screenshot_in_headless_chromium(tmp_path):
    output = tmp_path / "demo.png"
    command = [sys.executable, str(REPO / "examples" / "demo_screenshot.py"), "--output", str(output)]
    subprocess.run(command, check=True, timeout=600)
    assert Image.open(output).size[0] >= 1000
