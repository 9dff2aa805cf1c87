"""The gradio demo, driven through `gradio_client` on 127.0.0.1 against the embedded shapes checkpoint."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_examples import load_example

from tuna_hf import TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes import QUESTIONS, Scene
from tuna_hf.demo.shapes_bench import read_scene
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "shapes-tuna-2"
APP = load_example("examples/gradio_app.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model: str, concurrency: int = 2):
    """The demo for `model` on a free port of 127.0.0.1 (its `TunaDemo` and app), and a client for it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    tuna = APP.TunaDemo(model)
    demo = tuna.launch(
        concurrency, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
    )
    try:
        yield tuna, demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def shapes_app():
    with serve(str(CHECKPOINT)) as served:
        yield served


@pytest.fixture(scope="module")
def client(shapes_app):
    return shapes_app[2]


def new_session(shapes_app) -> Client:
    """A second user: a client with its own session (its own gr.State values)."""
    return Client(shapes_app[1].local_url, verbose=False)


def scene_file(tmp_path, scene: Scene) -> str:
    path = tmp_path / f"{scene.color}-{scene.shape}-{scene.position}.png"
    scene.draw().save(path)
    return str(path)


def native(path) -> Image.Image:
    """A displayed picture back at the model's 64×64 (exact for a nearest-neighbour upscale)."""
    image = Image.open(path).convert("RGB")
    return image.resize((64, 64), Image.Resampling.NEAREST)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_upscale_is_nearest_neighbour_and_exact():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    large = APP.upscale(small)
    assert large.size == (5 * 48, 5 * 40)  # the largest integer factor within 256
    blocks = np.asarray(large).reshape(40, 5, 48, 5, 3)
    assert (blocks == np.asarray(small)[:, None, :, None]).all()  # every pixel an exact 5×5 block
    assert APP.upscale(Scene("red", "circle", "top").draw()).size == (256, 256)
    big = Image.new("RGB", (512, 300))
    assert APP.upscale(big) is big


def test_plain_messages():
    assert APP.plain_message("`height` must be a positive multiple of 16, got `50`.") == (
        "Height must be a positive multiple of 16, got 50."
    )
    assert "`" not in APP.plain_message("odd ``` text`")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_counts_must_be_whole_numbers_of_at_least_one(value):
    with pytest.raises(APP.argparse.ArgumentTypeError, match="TUNA_CONCURRENCY must be a whole number ≥ 1"):
        APP.positive_int(value, "TUNA_CONCURRENCY")
    assert APP.positive_int("3") == 3


def test_answer_streams_the_right_answer(client, tmp_path):
    image = scene_file(tmp_path, Scene("blue", "square", "bottom right"))
    assert client.predict(handle_file(image), "What color is the shape?", api_name="/answer").strip() == "blue"


def test_generate_shows_the_pictures_upscaled(client):
    gallery = client.predict("a green triangle at the center", "", 64, 64, 20, 3.0, 0, 2, api_name="/generate")
    assert len(gallery) == 2
    for item in gallery:
        shown = pixels(item["image"])
        assert shown.shape == (256, 256, 3)
        assert (shown.reshape(64, 4, 64, 4, 3) == shown[::4, ::4][:, None, :, None]).all()  # 4×4 blocks
    assert any(read_scene(native(item["image"])).matches(Scene("green", "triangle", "center")) for item in gallery)


def test_use_as_edit_source_moves_the_generated_picture(shapes_app, tmp_path):
    user = new_session(shapes_app)
    with pytest.raises(AppError, match="Generate an image first"):
        user.predict(api_name="/use_as_edit_source")
    gallery = user.predict("a purple circle at the right", "", 64, 64, 20, 3.0, 0, 2, api_name="/generate")
    source = Image.open(user.predict(api_name="/use_as_edit_source"))
    assert source.size == (64, 64)  # the model's own picture, not the enlarged one
    assert (np.asarray(source.convert("RGB")) == np.asarray(native(gallery[0]["image"]))).all()
    edited = user.predict(handle_file(source.filename), "make it yellow", 20, 2.0, 0, api_name="/edit")
    again = Image.open(user.predict(api_name="/edit_again"))  # the edited picture becomes the next source
    assert again.size == (64, 64) and (np.asarray(again.convert("RGB")) == np.asarray(native(edited))).all()
    # The gallery's choice: the second picture, into the editing tab.
    images = [Scene("red", "circle", "top").draw(), Scene("blue", "square", "left").draw()]
    chosen, tabs = APP.TunaDemo.use_as_edit_source(images, 1)
    assert chosen is images[1] and isinstance(tabs, gr.Tabs)


def test_edit_changes_the_asked_attribute(client, tmp_path):
    image = scene_file(tmp_path, Scene("blue", "square", "bottom right"))
    edited = native(client.predict(handle_file(image), "make it red", 20, 2.0, 0, api_name="/edit"))
    assert read_scene(edited).matches(Scene("red", "square", "bottom right"))


def test_every_example_is_in_the_app_and_runs(shapes_app, client, tmp_path):
    samples = [
        dataset.samples for dataset in shapes_app[1].blocks.values() if isinstance(dataset, gr.Dataset)
    ]  # gr.Examples are gr.Dataset components
    assert [len(rows) for rows in samples] == [3, 4, 3]
    assert [row[0] for row in samples[1]] == [scene.caption for scene in APP.GENERATE_EXAMPLES]
    assert "an orange triangle at the bottom" in samples[1][1]
    for scene, attribute in APP.ANSWER_EXAMPLES:
        answer = client.predict(handle_file(scene_file(tmp_path, scene)), QUESTIONS[attribute], api_name="/answer")
        assert answer.strip() == scene.answer(attribute)
    for scene in APP.GENERATE_EXAMPLES:
        (item,) = client.predict(scene.caption, "", 64, 64, 20, 3.0, 0, 1, api_name="/generate")
        assert read_scene(native(item["image"])).matches(scene), scene
    for edit in APP.EDIT_EXAMPLES:
        source = handle_file(scene_file(tmp_path, edit.source))
        assert read_scene(native(client.predict(source, edit.instruction, 20, 2.0, 0, api_name="/edit"))).matches(
            edit.target
        ), edit


def test_rejected_input_gets_a_plain_message_and_no_traceback(client, tmp_path, capfd):
    image = handle_file(scene_file(tmp_path, Scene("blue", "square", "bottom right")))
    capfd.readouterr()
    rejected = [
        (("  ", "", 64, 64, 2, 3.0, 0, 1), "/generate", "prompt is empty"),
        (("a red circle at the top", "", 50, 64, 2, 3.0, 0, 1), "/generate", "Height must be a positive multiple of"),
        ((image, "What shape is it? " * 3000), "/answer", "context"),
        ((None, "What shape is it?"), "/answer", "Upload an image"),
        ((image, "  "), "/answer", "Enter a question"),
        ((image, "", 2, 2.0, 0), "/edit", "instruction is empty"),
        ((None, "make it red", 2, 2.0, 0), "/edit", "Upload the image to edit"),
    ]
    for inputs, endpoint, message in rejected:
        with pytest.raises(AppError, match=message) as error:
            client.predict(*inputs, api_name=endpoint)
        assert "`" not in str(error.value), str(error.value)
    log = capfd.readouterr()
    assert "Traceback" not in log.out + log.err


def test_queue_lets_two_model_calls_run_at_once(shapes_app):
    queue = shapes_app[1]._queue
    assert queue.max_size == APP.QUEUE_SIZE
    assert queue.event_queue_per_concurrency_id[APP.MODEL_CALLS].concurrency_limit == 2  # shared by all tabs


def test_concurrent_users_get_the_serial_results(shapes_app, tmp_path, monkeypatch):
    tuna, _, first = shapes_app
    second = new_session(shapes_app)
    source = handle_file(scene_file(tmp_path, Scene("green", "circle", "top left")))
    generate = ("a yellow square at the bottom", "", 64, 64, 20, 3.0, 3, 4)
    edit = (source, "move it to the center", 20, 2.0, 5)
    serial = [first.predict(*generate, api_name="/generate"), first.predict(*edit, api_name="/edit")]

    calls = []

    def timed(method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter()))

        return call

    monkeypatch.setattr(tuna, "generate", timed(tuna.generate))
    monkeypatch.setattr(tuna, "edit", timed(tuna.edit))
    jobs = [first.submit(*generate, api_name="/generate"), second.submit(*edit, api_name="/edit")]
    together = [job.result(timeout=300) for job in jobs]
    assert len(calls) == 2 and max(start for start, _ in calls) < min(end for _, end in calls)  # they overlapped
    for item, ref in zip(together[0], serial[0], strict=True):
        assert (pixels(item["image"]) == pixels(ref["image"])).all()
    assert (pixels(together[1]) == pixels(serial[1])).all()


def endpoints(client) -> set[str]:
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_no_video_tab_for_tuna_2(client):
    assert endpoints(client) == {"/answer", "/generate", "/edit"}  # the helpers are undocumented


def test_video_tab_on_a_tuna(tmp_path):
    processor = tiny_tuna_processor(height=64, width=64)
    model = tiny_tuna_model("vae_siglip", processor.tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna")
    TunaPipeline(model, processor, scheduler).save_pretrained(tmp_path / "tuna")
    with serve(str(tmp_path / "tuna")) as (_, _, tuna_client):
        assert "/video" in endpoints(tuna_client)
        video = Image.open(tuna_client.predict("a boat", 5, 64, 64, 3, 6.0, 0, api_name="/video"))
        assert video.n_frames == 5 and video.size == (64, 64)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
def test_screenshots_in_headless_chromium(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "demo_screenshot.py"), "--output-dir", str(tmp_path)]
    subprocess.run(command, check=True, timeout=900)
    for tab in ("answer", "generate", "edit"):
        assert Image.open(tmp_path / f"demo_{tab}.png").size[0] >= 1000
