"""The synthetic shapes world of the embedded demo checkpoint (ShapesBench, which scores it, is `shapes_bench`).

A 64×64 white canvas holds one filled, axis-aligned shape without anti-aliasing: a circle (radius 8), a square
(side 16) or an upward isosceles triangle (base 16, height 16), in one of six colours, centred on one of the 3×3 cell
centres `round(64·(2k+1)/6)` = 11, 32, 53. Prompts are `a {color} {shape} at the {position}` ("an orange …"); the
embedded checkpoint was trained on "a orange …" (`Scene.trained_caption`, which its training data keeps) and reads
both alike. Questions ask for the colour, the shape or the position; edits change exactly one attribute.
"""

import itertools
from dataclasses import dataclass, replace

import numpy as np
import PIL.Image

CANVAS = 64
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CELL_CENTERS = tuple(round(CANVAS * (2 * k + 1) / 6) for k in range(3))
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is it?", "position": "Where is the shape?"}
EDIT_ATTRIBUTES = ("color", "shape", "position")


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.shape} at the {self.position}"

    @property
    def trained_caption(self) -> str:
        """The caption the embedded checkpoint was trained on ("a" before every colour): the training data keeps it,
        so that `examples/shapes/build_checkpoint.sh` still rebuilds the committed checkpoint byte for byte."""
        return f"a {self.color} {self.shape} at the {self.position}"

    def answer(self, attribute: str) -> str:
        return getattr(self, attribute)

    def draw(self) -> PIL.Image.Image:
        row, column = divmod(POSITIONS.index(self.position), 3)
        cy, cx = CELL_CENTERS[row], CELL_CENTERS[column]
        y, x = np.mgrid[0:CANVAS, 0:CANVAS]
        dy, dx = y - cy, x - cx
        if self.shape == "circle":
            inside = dx**2 + dy**2 < 64
        elif self.shape == "square":
            inside = (dx >= -8) & (dx < 8) & (dy >= -8) & (dy < 8)
        else:  # rows 1, 2, …, 16 pixels wide from the apex down, centred like the square on cx − ½
            half_width = (dy + 9) / 2
            inside = (dy >= -8) & (dy < 8) & (-half_width <= dx + 0.5) & (dx + 0.5 < half_width)
        pixels = np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8)
        pixels[inside] = COLORS[self.color]
        return PIL.Image.fromarray(pixels)


@dataclass(frozen=True)
class Edit:
    source: Scene
    attribute: str
    target: Scene

    @property
    def instruction(self) -> str:
        value = self.target.answer(self.attribute)
        return {
            "color": f"make it {value}",
            "shape": f"turn it into a {value}",
            "position": f"move it to the {value}",
        }[self.attribute]


def all_scenes() -> list[Scene]:
    """The 162 scenes (colour × shape × position), in a fixed order."""
    return [Scene(*values) for values in itertools.product(COLORS, SHAPES, POSITIONS)]


def edits_of(source: Scene) -> list[Edit]:
    """The 15 single-attribute edits of `source` (5 colours, 2 shapes, 8 positions)."""
    return [
        Edit(source, attribute, replace(source, **{attribute: value}))
        for attribute, values in (("color", COLORS), ("shape", SHAPES), ("position", POSITIONS))
        for value in values
        if value != source.answer(attribute)
    ]


def all_edits() -> list[Edit]:
    """Every single-attribute edit: 162 sources × 15 targets."""
    return [edit for source in all_scenes() for edit in edits_of(source)]


def world_texts() -> list[str]:
    """Every caption, question, answer and edit instruction of the world (with repeats), e.g. to learn BPE merges."""
    scenes = all_scenes()
    answers = [scene.answer(attribute) for scene in scenes for attribute in QUESTIONS]
    questions = [question for _ in scenes for question in QUESTIONS.values()]
    captions = [scene.trained_caption for scene in scenes]
    return captions + questions + answers + [edit.instruction for edit in all_edits()]


def training_records(image_paths: dict[Scene, str], repeats: dict[str, int]) -> list[dict]:
    """Records in the official jsonl formats for every scene, question and edit; `repeats[task]` copies each."""
    records = []
    for scene, path in image_paths.items():
        records += [{"image": path, "caption": scene.trained_caption}] * repeats["text_to_image"]
        for attribute, question in QUESTIONS.items():
            conversation = [{"from": "human", "value": question}, {"from": "gpt", "value": scene.answer(attribute)}]
            records += [{"image": path, "conversations": conversation}] * repeats["understanding"]
    for edit in all_edits():
        record = {
            "raw_image": image_paths[edit.source],
            "out_image": image_paths[edit.target],
            "instruction": edit.instruction,
        }
        records += [record] * repeats["edit"]
    return records
