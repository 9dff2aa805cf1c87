"""ShapesBench: scores a pipeline repository on the shapes world by reading its pictures back from their pixels.

Text-to-image and editing outputs are read with `read_scene` (colour, shape and position of the one shape); VQA answers
are compared with the scene's attributes.
"""

import random
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from .shapes import CELL_CENTERS, COLORS, EDIT_ATTRIBUTES, POSITIONS, QUESTIONS, Edit, Scene, all_scenes, edits_of


def bench_edits(seed: int = 0) -> list[Edit]:
    """ShapesBench's fixed 162-item edit set: every scene once as a source, the attribute cycling colour → shape →
    position, the new value drawn with `seed`."""
    rng = random.Random(seed)
    edits = []
    for index, source in enumerate(all_scenes()):
        attribute = EDIT_ATTRIBUTES[index % 3]
        edits.append(rng.choice([edit for edit in edits_of(source) if edit.attribute == attribute]))
    return edits


def bench_subset(items: list, count: int, seed: int = 0) -> list:
    """A fixed subset of `count` ShapesBench items (scenes or edits), in their order, drawn with `seed` so that every
    position (scenes) or every edited attribute (edits) is equally represented. A plain stride would alias with the
    grid: every 6th scene lies in the left column, every 6th edit of `bench_edits` is a colour edit."""
    strata = {}
    for index, item in enumerate(items):
        strata.setdefault(item.attribute if isinstance(item, Edit) else item.position, []).append(index)
    if count % len(strata) or count // len(strata) > min(len(group) for group in strata.values()):
        raise ValueError(
            f"`count` must be a multiple of {len(strata)} (one share per position or edited attribute) and at most "
            f"{len(items)}, got {count}."
        )
    rng = random.Random(seed)
    chosen = sorted(index for group in strata.values() for index in rng.sample(group, count // len(strata)))
    return [items[index] for index in chosen]


# A pixel belongs to the shape when it is nearer (RGB distance) to one of the six colours than to the white
# background: faint residue, e.g. a pale outline, is background, as it is to the eye; anything more saturated counts.
PALETTE = ((255, 255, 255), *COLORS.values())
# Filled share of the shape's bounding box: square 1, circle π/4 ≈ 0.79, triangle ≈ 0.5.
SHAPE_FILL = {"square": 1.0, "circle": 0.79, "triangle": 0.53}


@dataclass(frozen=True)
class Reading:
    color: str | None
    shape: str | None
    position: str | None

    def matches(self, scene: Scene, attributes=EDIT_ATTRIBUTES) -> bool:
        return all(getattr(self, attribute) == scene.answer(attribute) for attribute in attributes)


def bench_items(subset: int = 0) -> tuple[list[Scene], list[Edit]]:
    """The scenes and edits ShapesBench scores: all 162 of each, or `subset` of each (`bench_subset`)."""
    scenes, edits = all_scenes(), bench_edits()
    if subset:
        scenes, edits = bench_subset(scenes, subset), bench_subset(edits, subset)
    return scenes, edits


def read_scene(image) -> Reading:
    """Colour, shape and position of the one shape in `image` (PIL or uint8 array), or None where unreadable."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32)
    foreground = np.linalg.norm(pixels[..., None, :] - np.array(PALETTE, np.float32), axis=-1).argmin(-1) > 0
    if foreground.sum() < 20:
        return Reading(None, None, None)
    y, x = np.nonzero(foreground)
    mean = pixels[foreground].mean(axis=0)
    color = min(COLORS, key=lambda name: np.linalg.norm(mean - np.array(COLORS[name])))
    box = (y.max() - y.min() + 1) * (x.max() - x.min() + 1)
    fill = foreground.sum() / box
    shape = min(SHAPE_FILL, key=lambda name: abs(SHAPE_FILL[name] - fill))
    cy, cx = (y.min() + y.max()) / 2, (x.min() + x.max()) / 2
    row = int(np.argmin([abs(cy - c) for c in CELL_CENTERS]))
    column = int(np.argmin([abs(cx - c) for c in CELL_CENTERS]))
    return Reading(color, shape, POSITIONS[3 * row + column])


def edit_is_right(image, edit: Edit) -> bool:
    """The changed attribute has its new value and the other two are kept."""
    return read_scene(image).matches(edit.target)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_text_to_image(pipe, scenes: list[Scene], num_inference_steps: int, seed: int = 0, batch_size: int = 27):
    """Share of scenes whose generated image reads back as (colour, shape, position); and the images."""
    images = []
    for chunk in _chunks(scenes, batch_size):
        generator = torch.Generator().manual_seed(seed)
        images += pipe([s.caption for s in chunk], num_inference_steps=num_inference_steps, generator=generator).images
    right = [read_scene(image).matches(scene) for image, scene in zip(images, scenes, strict=True)]
    return sum(right) / len(right), images


@torch.no_grad()
def score_understanding(model, processor, scenes: list[Scene], batch_size: int = 54):
    """Share of exact answers over the three questions of every scene (greedy decoding)."""
    right, total = 0, 0
    for attribute, question in QUESTIONS.items():
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        for chunk in _chunks(scenes, batch_size):
            inputs = processor(text=[prompt] * len(chunk), images=[s.draw() for s in chunk], return_tensors="pt")
            generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
            answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            pairs = zip(answers, chunk, strict=True)
            right += sum(answer.strip() == scene.answer(attribute) for answer, scene in pairs)
            total += len(chunk)
    return right / total


def score_editing(edit_pipe, edits: list[Edit], num_inference_steps: int, seed: int = 0, batch_size: int = 27):
    """Share of edits whose output has the new attribute value and keeps the other two; and the images."""
    images = []
    for chunk in _chunks(edits, batch_size):
        generator = torch.Generator().manual_seed(seed)
        sources = [edit.source.draw() for edit in chunk]
        images += edit_pipe(
            sources, [edit.instruction for edit in chunk], num_inference_steps=num_inference_steps, generator=generator
        ).images
    right = [edit_is_right(image, edit) for image, edit in zip(images, edits, strict=True)]
    return sum(right) / len(right), images
