"""Training data for TUNA: the official jsonl formats and HF `datasets` with the same columns, resolution buckets,
and a collator that builds the official sequence layouts with `TunaProcessor`.

Record formats (official `data_examples/`):
* understanding (`mmu_pairs`): `{"image", "conversations": [{"from": "human"|"gpt", "value"}]}`;
* text-to-image (`ti_pairs`): `{"image", "caption"}`;
* editing (`edit_pairs`): `{"raw_image", "out_image", "instruction"}`;
* text-to-video (`video_pairs`): `{"video", "caption"}` (a list of frames, or a file read with `imageio`);
* text only (`text_only`): `{"conversations"}`.
Images are paths (relative to the jsonl's folder) or PIL images (HF datasets). A record may carry precomputed
flow-space latents (e.g. Wan VAE samples) of its images, in the record's order (edit: source, target), under
`"latents"`: a `.pt`/`.safetensors` path or a tensor `[num_images, C, T, h, w]`.
"""

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import torch
from torch.utils.data import Dataset, Sampler

from .processing_tuna import check_text

TASKS = ("understanding", "text_to_image", "edit", "video", "text")
OFFICIAL_FILE_TASKS = {
    "mmu_pairs": "understanding",
    "ti_pairs": "text_to_image",
    "edit_pairs": "edit",
    "video_pairs": "video",
    "text_only": "text",
}
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
IGNORE_INDEX = -100


# What each task's records hold (`validate_record`): text fields, image fields, and the conversation.
TEXT_FIELDS = {"text_to_image": ("caption",), "video": ("caption",), "edit": ("instruction",)}
IMAGE_FIELDS = {"understanding": ("image",), "text_to_image": ("image",), "edit": ("raw_image", "out_image")}
CONVERSATION_TASKS = ("understanding", "text")


def infer_task(record: dict) -> str:
    """The task of a record from its columns."""
    if "raw_image" in record:
        return "edit"
    if "video" in record:
        return "video"
    if "caption" in record:
        return "text_to_image"
    if "conversations" in record:
        return "understanding" if record.get("image") is not None else "text"
    raise ValueError(f"Cannot tell the task of a record with columns {sorted(record)}.")


class TunaDataset(Dataset):
    """
    Records of any TUNA task, each assigned the resolution bucket nearest its image's aspect ratio (as the official
    `ti_dataset`). `resolutions` are `(height, width)` pairs, multiples of the model's 16 pixels per token.

    `caption_dropout` empties a generation caption or edit instruction with that probability (for classifier-free
    guidance). The draw depends only on `(seed, epoch, index)` (`set_epoch`), so a resumed run drops the same ones.
    """

    def __init__(
        self,
        records: list[dict],
        resolutions: list[tuple[int, int]],
        root: str | Path | None = None,
        caption_dropout: float = 0.0,
        seed: int = 0,
    ):
        if not resolutions:
            raise ValueError("`resolutions` needs at least one (height, width).")
        if not records:
            raise ValueError("The dataset has no records.")
        self.resolutions = [tuple(size) for size in resolutions]
        self.root = Path(root) if root is not None else None
        self.records = []
        for index, record in enumerate(records):
            where = record.get("_source", f"record {index}")
            try:
                record = {**record, "task": record.get("task") or infer_task(record)}
                self.validate_record(record)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            self.records.append(record)
        self.buckets = [self._bucket(record) for record in self.records]
        self.caption_dropout, self.seed, self.epoch = caption_dropout, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def validate_record(self, record: dict) -> None:
        """A record must hold what its task reads, checked before training starts: its text fields as strings, a
        conversation of known roles, and image files that open."""
        task = record["task"]
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
        for field in TEXT_FIELDS.get(task, ()):
            if not isinstance(record.get(field), str):
                raise ValueError(f"a {task} record needs a string {field!r}, got {record.get(field)!r}.")
            check_text(field, record[field])
        if task in CONVERSATION_TASKS:
            self._validate_conversation(record.get("conversations"))
        for field in IMAGE_FIELDS.get(task, ()):
            self._validate_image(record, field)
        if task == "video" and not isinstance(record.get("video"), (str, Path, list, tuple)):
            raise ValueError(
                f"a video record needs 'video' (a file or a list of frames), got {record.get('video')!r}."
            )

    @staticmethod
    def _validate_conversation(conversation) -> None:
        if not isinstance(conversation, list) or not conversation:
            raise ValueError(f"'conversations' must be a non-empty list of turns, got {conversation!r}.")
        for turn in conversation:
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                raise ValueError(
                    f"a turn must be {{'from': one of {sorted(ROLES)}, 'value': a string}}, got {turn!r}."
                )
            check_text("value", turn["value"])
            if "<image>" in turn["value"]:
                raise ValueError(
                    "a turn's text holds `<image>`: the record's image goes at the start of the first user turn "
                    "by itself, and typed control tokens are text (docs/architecture.md §14); remove the placeholder."
                )

    def _validate_image(self, record: dict, field: str) -> None:
        value = record.get(field)
        if isinstance(value, PIL.Image.Image):
            return
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{field!r} must be an image path or a PIL image, got {value!r}.")
        try:
            with PIL.Image.open(self._path(value, record)) as image:
                image.verify()  # the whole file's structure (a truncated PNG fails), without decoding it
        except (OSError, SyntaxError, PIL.UnidentifiedImageError) as error:
            raise ValueError(f"{field!r} {str(value)!r} cannot be read as an image ({error}).") from None

    @classmethod
    def from_jsonl(cls, paths, resolutions, task: str | None = None, **kwargs) -> "TunaDataset":
        """Official jsonl files (the task from the file name `mmu_pairs*`, `ti_pairs*`, … or the columns)."""
        records = []
        for path in [paths] if isinstance(paths, (str, Path)) else paths:
            path = Path(path)
            file_task = task or next(
                (t for prefix, t in OFFICIAL_FILE_TASKS.items() if path.stem.startswith(prefix)), None
            )
            count = len(records)
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if line.strip():
                    records.append(_read_json_line(path, number, line, file_task))
            if len(records) == count:
                raise ValueError(f"{path}: the file holds no records.")
        return cls(records, resolutions, **kwargs)

    @classmethod
    def from_hf(cls, dataset, resolutions, task: str | None = None, **kwargs) -> "TunaDataset":
        """A `datasets.Dataset` with the same columns (images as PIL images or paths)."""
        records = [
            {**row, "task": task or row.get("task"), "_source": f"row {index}"} for index, row in enumerate(dataset)
        ]
        return cls(records, resolutions, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = dict(self.records[index])
        for key in ("image", "raw_image", "out_image"):
            if record.get(key) is not None:
                record[key] = self._image(record[key], record)
        if record["task"] == "video":
            record["video"] = self._video(record["video"], record)
        if isinstance(record.get("latents"), (str, Path)):
            record["latents"] = _load_tensor(self._path(record["latents"], record))
        record["size"] = self.resolutions[self.buckets[index]]
        if self.caption_dropout and random.Random(f"{self.seed}-{self.epoch}-{index}").random() < self.caption_dropout:
            record.update({key: "" for key in ("caption", "instruction") if key in record})
        return record

    def _bucket(self, record: dict) -> int:
        if len(self.resolutions) == 1:
            return 0
        image = record.get("image") or record.get("raw_image")
        if image is None:
            return 0
        # PIL reads the size from the header: no decode just to pick a bucket.
        width, height = (
            image if isinstance(image, PIL.Image.Image) else PIL.Image.open(self._path(image, record))
        ).size
        aspect = width / max(height, 1)
        return min(
            range(len(self.resolutions)), key=lambda i: abs(self.resolutions[i][1] / self.resolutions[i][0] - aspect)
        )

    def _path(self, value, record) -> Path:
        root = record.get("_root") or self.root
        return Path(root) / value if root is not None else Path(value)

    def _image(self, value, record) -> PIL.Image.Image:
        """The image in its own mode: the processor reads every mode (16-bit included) to RGB."""
        if isinstance(value, PIL.Image.Image):
            return value
        with PIL.Image.open(self._path(value, record)) as image:
            image.load()
            return image

    def _video(self, value, record) -> list[PIL.Image.Image]:
        if isinstance(value, (list, tuple)):
            return [self._image(frame, record) for frame in value]
        import imageio.v3 as iio  # optional: `pip install imageio imageio-ffmpeg`

        return [PIL.Image.fromarray(frame).convert("RGB") for frame in iio.imread(self._path(value, record))]


def _read_json_line(path: Path, number: int, line: str, task: str | None) -> dict:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON record ({error.msg}, column {error.colno}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(record).__name__}.")
    return {**record, "task": task or record.get("task"), "_root": str(path.parent), "_source": where}


class ResolutionBucketSampler(Sampler[list[int]]):
    """Batches of indices from one resolution bucket each (images of a batch share their size), shuffled per epoch.
    `buckets` holds one hashable key per sample (a bucket index, or e.g. `(bucket, task)` for one task per batch)."""

    def __init__(self, buckets: list, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        self.buckets, self.batch_size, self.shuffle, self.seed = buckets, batch_size, shuffle, seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        groups = defaultdict(list)
        for index, bucket in enumerate(self.buckets):
            groups[bucket].append(index)
        batches = []
        for indices in groups.values():
            if self.shuffle:
                rng.shuffle(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class TunaDataCollator:
    """
    Samples → one mixed batch: right-padded `input_ids`, `attention_mask`, `labels` (answer tokens only),
    `pixel_values` (or `image_latents`) of every image in span order, and `generation_targets` (which images are
    generated: T2I/video targets and edit outputs; understanding images and edit sources are inputs at t = 1).

    Args:
        processor ([`TunaProcessor`]): builds the official layouts (chat template for understanding).
        max_length (`int`, *optional*): rows longer than this raise (nothing is truncated silently).
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length

    def __call__(self, samples: list[dict]) -> dict:
        sizes = {sample["size"] for sample in samples if sample["task"] != "text"}
        if len(sizes) > 1:
            raise ValueError(f"A batch mixes image sizes {sorted(sizes)}: batch with `ResolutionBucketSampler`.")
        height, width = sizes.pop() if sizes else samples[0]["size"]
        rows, images, targets, latents = [], [], [], []
        for sample in samples:
            ids, labels, sample_images, sample_targets = getattr(self, f"_{sample['task']}")(sample, height, width)
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"A {sample['task']} sample has {len(ids)} tokens, `max_length` is {self.max_length}."
                )
            rows.append((ids, labels))
            images += sample_images
            targets += sample_targets
            recorded = sample.get("latents")
            latents += list(recorded) if recorded is not None else [None] * len(sample_images)
        batch = self._pad(rows)
        if images:
            batch.update(self._images(images, latents, height, width))
            batch["generation_targets"] = torch.tensor(targets)
        return batch

    def _understanding(self, sample, height, width):
        return self._conversation(sample, height, width, image=sample["image"])

    def _text(self, sample, height, width):
        return self._conversation(sample, height, width, image=None)

    def _text_to_image(self, sample, height, width):
        ids = self._ids(self.processor.build_generation_inputs([sample["caption"]], height=height, width=width))
        return ids, [IGNORE_INDEX] * len(ids), [sample["image"]], [True]

    def _video(self, sample, height, width):
        frames = sample["video"]
        inputs = self.processor.build_generation_inputs(
            [sample["caption"]], height=height, width=width, num_frames=len(frames)
        )
        ids = self._ids(inputs)
        return ids, [IGNORE_INDEX] * len(ids), [frames], [True]

    def _edit(self, sample, height, width):
        inputs = self.processor.build_edit_inputs([sample["instruction"]], height=height, width=width)
        ids = self._ids(inputs)
        return ids, [IGNORE_INDEX] * len(ids), [sample["raw_image"], sample["out_image"]], [False, True]

    def _conversation(self, sample, height, width, image):
        """Chat-template rows; the labels are the assistant turns (their text and `<|im_end|>`)."""
        messages = []
        for turn in sample["conversations"]:
            role = ROLES[turn["from"]]
            content = [{"type": "text", "text": turn["value"]}]
            if image is not None and role == "user" and not any(m["role"] == "user" for m in messages):
                content.insert(0, {"type": "image"})
            messages.append({"role": role, "content": content})
        ids, labels = [], []
        for end, message in enumerate(messages, start=1):
            if message["role"] != "assistant":
                continue
            prompt = self._tokenize(messages[: end - 1], image, height, width, generation_prompt=True)
            full = self._tokenize(messages[:end], image, height, width, generation_prompt=False)
            answer_end = len(full) - 1  # the template's newline after <|im_end|> is not trained
            labels += [IGNORE_INDEX] * (len(prompt) - len(labels)) + full[len(prompt) : answer_end] + [IGNORE_INDEX]
            ids = full
        if not ids:
            ids = self._tokenize(messages, image, height, width, generation_prompt=False)
        labels += [IGNORE_INDEX] * (len(ids) - len(labels))
        return ids, labels, [image] if image is not None else [], [False] if image is not None else []

    def _tokenize(self, messages, image, height, width, generation_prompt: bool) -> list[int]:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        if image is None:  # through the processor too: typed control tokens stay text (docs/architecture.md §14)
            return self._ids(self.processor(text=text))
        return self._ids(self.processor(text=text, images=[image], height=height, width=width))

    @staticmethod
    def _ids(inputs) -> list[int]:
        ids = inputs["input_ids"]
        return list(ids[0].tolist() if hasattr(ids[0], "tolist") else ids[0])

    def _pad(self, rows) -> dict:
        length = max(len(ids) for ids, _ in rows)
        pad = self.processor.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in rows])
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows])
        labels = torch.tensor([labels + [IGNORE_INDEX] * (length - len(labels)) for _, labels in rows])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _images(self, images, latents, height, width) -> dict:
        if any(latent is not None for latent in latents):
            if not all(latent is not None for latent in latents):
                raise ValueError("Precomputed `latents` must be given for every image of a batch, or for none.")
            return {"image_latents": torch.stack([torch.as_tensor(latent) for latent in latents])}
        image_processor = self.processor.image_processor
        pixels = []
        for image in images:
            if isinstance(image, list):  # video frames → [3, T, H, W]
                frames = image_processor(image, height=height, width=width, return_tensors="pt")["pixel_values"]
                pixels.append(frames.permute(1, 0, 2, 3))
            else:
                pixels.append(
                    image_processor(image, height=height, width=width, return_tensors="pt")["pixel_values"][0]
                )
        return {"pixel_values": torch.stack(pixels)}


def _load_tensor(path: Path) -> torch.Tensor:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return next(iter(load_file(path).values()))
    return torch.load(path, map_location="cpu", weights_only=True)
