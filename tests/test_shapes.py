"""The shapes world is drawn exactly as specified, ShapesBench reads it back, and the committed checkpoint passes
ShapesBench on a fixed subset (a regression test of the whole stack)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tuna_hf import TunaEditPipeline, TunaPipeline
from tuna_hf.demo.shapes import CELL_CENTERS, COLORS, POSITIONS, Scene, all_edits, all_scenes, world_texts
from tuna_hf.demo.shapes_bench import (
    bench_edits,
    bench_subset,
    read_scene,
    score_editing,
    score_text_to_image,
    score_understanding,
)
from tuna_hf.testing import build_byte_tokenizer

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tuna-2"
SUBSET = 27  # items per task in CI: 3 scenes per position, 9 edits per edited attribute
STEPS = 20  # the quickstart's


def test_world_geometry():
    assert CELL_CENTERS == (11, 32, 53) and len(all_scenes()) == 162 and len(all_edits()) == 162 * 15
    square = np.asarray(Scene("red", "square", "center").draw())
    inside = (square != 255).any(-1)
    assert inside.sum() == 256 and inside[24:40, 24:40].all()
    assert tuple(square[32, 32]) == COLORS["red"] and set(map(tuple, square.reshape(-1, 3))) == {
        COLORS["red"],
        (255,) * 3,
    }
    triangle = (np.asarray(Scene("blue", "triangle", "top left").draw()) != 255).any(-1)
    rows = triangle.sum(1)[3:19]
    assert rows.tolist() == list(range(1, 17))  # apex at the top, one pixel wider per row, 16 wide at the base
    circle = (np.asarray(Scene("green", "circle", "bottom right").draw()) != 255).any(-1)
    assert abs(circle.sum() - np.pi * 64) < 12


def test_captions_questions_and_edits():
    scene = Scene("red", "circle", "top left")
    assert scene.caption == "a red circle at the top left"
    edits = bench_edits()
    assert edits == bench_edits() and len(edits) == 162
    assert [e.attribute for e in edits[:3]] == ["color", "shape", "position"]
    assert edits[0].instruction.startswith("make it ") and edits[1].instruction.startswith("turn it into a ")
    assert edits[2].instruction.startswith("move it to the ")
    for edit in edits:
        changed = [a for a in ("color", "shape", "position") if edit.source.answer(a) != edit.target.answer(a)]
        assert changed == [edit.attribute]


def test_bench_subset_is_fixed_and_balanced():
    scenes, edits = bench_subset(all_scenes(), 27), bench_subset(bench_edits(), 27)
    assert scenes == bench_subset(all_scenes(), 27) and len(set(scenes)) == 27
    assert Counter(scene.position for scene in scenes) == dict.fromkeys(POSITIONS, 3)
    assert len({scene.color for scene in scenes}) == 6 and len({scene.shape for scene in scenes}) == 3
    assert Counter(edit.attribute for edit in edits) == {"color": 9, "shape": 9, "position": 9}
    assert bench_subset(all_scenes(), 162) == all_scenes()
    with pytest.raises(ValueError, match="multiple of 9"):
        bench_subset(all_scenes(), 20)


def test_shapes_tokenizer_makes_words_single_tokens_and_encodes_any_text():
    tokenizer = build_byte_tokenizer(world_texts())
    assert tokenizer.get_vocab() == build_byte_tokenizer(world_texts()).get_vocab()  # deterministic merges
    for scene in all_scenes()[::7]:
        assert len(tokenizer(scene.color)["input_ids"]) == 1 and len(tokenizer(scene.shape)["input_ids"]) == 1
    for text in ("a red circle at the top left", "Ünïcode, emoji 🙂 and tabs\t"):
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer("a red circle at the top left")["input_ids"]) == 7


def test_checker_reads_every_scene_and_tolerates_noise():
    rng = np.random.default_rng(0)
    for scene in all_scenes():
        assert read_scene(scene.draw()).matches(scene), scene
        noisy = np.asarray(scene.draw()).astype(np.int16) + rng.integers(-20, 21, (64, 64, 3))
        assert read_scene(np.clip(noisy, 0, 255).astype(np.uint8)).matches(scene), scene
    assert read_scene(np.full((64, 64, 3), 255, np.uint8)).color is None


def blend_in(base: Scene, other: Scene, opacity: float) -> np.ndarray:
    """`base` with `other` painted over it at `opacity` (1: fully drawn) where `other`'s shape is."""
    pixels, extra = np.asarray(base.draw()).astype(np.float32), np.asarray(other.draw()).astype(np.float32)
    inside = (extra != 255).any(-1)
    pixels[inside] = (1 - opacity) * pixels[inside] + opacity * extra[inside]
    return pixels.round().astype(np.uint8)


@pytest.mark.parametrize("color", COLORS)
def test_checker_ignores_faint_residue_but_not_a_second_shape(color):
    """A pixel is the shape's when it is nearer to a colour than to white: a pale copy elsewhere (40 % opacity) is
    background, a clearer one (60 %) makes the reading wrong, as it should."""
    scene, copy = Scene(color, "circle", "top left"), Scene(color, "square", "top right")
    assert read_scene(blend_in(scene, copy, 0.4)).matches(scene)
    assert not read_scene(blend_in(scene, copy, 0.6)).matches(scene)


@pytest.fixture(scope="module")
def shapes_pipeline():
    assert (CHECKPOINT / "model_index.json").exists(), f"the committed shapes checkpoint is missing at {CHECKPOINT}"
    pipe = TunaPipeline.from_pretrained(CHECKPOINT, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shapes_bench_text_to_image(shapes_pipeline):
    score, _ = score_text_to_image(shapes_pipeline, bench_subset(all_scenes(), SUBSET), STEPS)
    assert score >= 0.90


def test_shapes_bench_vqa(shapes_pipeline):
    assert (
        score_understanding(shapes_pipeline.transformer, shapes_pipeline.processor, bench_subset(all_scenes(), SUBSET))
        >= 0.95
    )


def test_shapes_bench_editing(shapes_pipeline):
    score, _ = score_editing(TunaEditPipeline.from_pipe(shapes_pipeline), bench_subset(bench_edits(), SUBSET), STEPS)
    assert score >= 0.80
