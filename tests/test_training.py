"""Training: losses on hand-computed cases, masking, recipes, data, LoRA round trips, the accelerate script
(overfitting, resume, restore, two processes)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from tuna_hf import TunaFlowMatchScheduler, TunaForUnifiedMultimodal, TunaPipeline
from tuna_hf.data import IGNORE_INDEX, ResolutionBucketSampler, TunaDataCollator, TunaDataset
from tuna_hf.losses import (
    VELOCITY_TIME_SHIFT_MU,
    flow_loss,
    flow_targets,
    prepare_flow_training,
    sample_flow_times,
    sample_understanding_times,
)
from tuna_hf.recipes import RECIPES, apply_recipe, count_trainable_parameters
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
COLORS = {"red": (220, 30, 30), "blue": (40, 70, 220), "green": (30, 160, 60)}


def load_train_script():
    spec = importlib.util.spec_from_file_location("train", REPO / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def square(color: str) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (SIZE, SIZE), "white")
    image.paste(COLORS[color], (8, 8, 24, 24))
    return image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A few samples of every task in the official jsonl formats."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "imgs").mkdir()
    for color in COLORS:
        square(color).save(folder / "imgs" / f"{color}.png")
    question = [{"from": "human", "value": "What color is the square?"}]
    files = {
        "mmu_pairs": [
            {"image": f"imgs/{c}.png", "conversations": [*question, {"from": "gpt", "value": c}]} for c in COLORS
        ],
        "ti_pairs": [{"image": f"imgs/{c}.png", "caption": f"a {c} square"} for c in COLORS],
        "edit_pairs": [
            {"raw_image": "imgs/red.png", "out_image": f"imgs/{c}.png", "instruction": f"make it {c}"} for c in COLORS
        ],
        "text_only": [{"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}],
    }
    for name, records in files.items():
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    return folder


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repo")
    processor = tiny_tuna_processor(height=SIZE, width=SIZE)
    model = tiny_tuna_model("patch", processor.tokenizer)
    TunaPipeline(model, processor, TunaFlowMatchScheduler.from_official_defaults("tuna_2")).save_pretrained(folder)
    return folder


def data_files(data_dir):
    return [str(data_dir / f"{name}.jsonl") for name in ("mmu_pairs", "ti_pairs", "edit_pairs", "text_only")]


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


class TestLosses:
    def test_velocity_loss(self):
        prediction, clean, noise = torch.full((1, 2), 1.0), torch.full((1, 2), 3.0), torch.full((1, 2), 1.0)
        targets = flow_targets(clean, noise, "velocity")
        assert flow_loss(prediction, targets, torch.tensor([0.3]), "velocity").item() == 1.0  # target 3 − 1

    def test_x0_loss_weight_is_clamped(self):
        prediction, clean, noise = torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(2, 1)
        loss = flow_loss(prediction, flow_targets(clean, noise, "x0"), torch.tensor([0.9, 0.99]), "x0")
        assert loss.item() == pytest.approx((1 / 0.1**2 + 1 / 0.05**2) / 2)

    def test_time_distributions(self):
        generator = torch.Generator().manual_seed(0)
        velocity = sample_flow_times(4, "velocity", generator=generator)
        normal = torch.randn(4, generator=torch.Generator().manual_seed(0))
        t, shift = torch.sigmoid(normal), math.exp(VELOCITY_TIME_SHIFT_MU)
        torch.testing.assert_close(velocity, 1 - shift * (1 - t) / (shift * (1 - t) + t))
        assert math.isclose(VELOCITY_TIME_SHIFT_MU, 0.63, rel_tol=1e-6)
        x0 = sample_flow_times(4, "x0", generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(x0, torch.sigmoid(normal * 0.8 - 0.8))
        assert torch.equal(sample_understanding_times(3, 0.0, 0.1), torch.ones(3))
        noisy = sample_understanding_times(1000, 1.0, 0.1)
        assert noisy.min() >= 0.9 and noisy.max() <= 1.0


class TestModelLosses:
    @pytest.fixture(scope="class")
    def batch(self, data_dir):
        processor = tiny_tuna_processor(height=SIZE, width=SIZE)
        dataset = TunaDataset.from_jsonl(data_files(data_dir), [(SIZE, SIZE)])
        return processor, TunaDataCollator(processor)([dataset[i] for i in (0, 3, 6, 9)])  # mmu, t2i, edit, text

    def test_collated_batch(self, batch):
        processor, batch = batch
        assert batch["generation_targets"].tolist() == [False, True, False, True]  # mmu image, t2i, edit src/target
        assert batch["pixel_values"].shape == (4, 3, SIZE, SIZE)
        answers = [processor.tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
        assert answers == ["red<|im_end|>", "", "", "hi<|im_end|>"]

    def test_loss_is_the_weighted_sum_of_hand_computed_parts(self, batch):
        _, batch = batch
        model = tiny_tuna_model("patch")  # eval: no masking
        times = torch.tensor([1.0, 0.3, 1.0, 0.6])
        noise = 2 * torch.randn(4, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        outputs = model(**prepare_flow_training(model, batch, timesteps=times, noise=noise))
        clean = batch["pixel_values"].unsqueeze(2)
        x_t = times.view(-1, 1, 1, 1, 1) * clean + (1 - times.view(-1, 1, 1, 1, 1)) * noise
        plain = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], image_latents=x_t, timesteps=times
        )
        targets = batch["generation_targets"]
        weights = 1 / (1 - times[targets]).clamp(min=0.05) ** 2
        expected_flow = (
            ((plain.flow_prediction[targets] - clean[targets]) ** 2) * weights.view(-1, 1, 1, 1, 1)
        ).mean()
        logits, labels = plain.logits[:, :-1], batch["labels"][:, 1:]
        expected_ntp = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
        )
        torch.testing.assert_close(outputs.flow_loss, expected_flow)
        torch.testing.assert_close(outputs.ntp_loss, expected_ntp)
        torch.testing.assert_close(outputs.loss, model.config.ntp_coeff * expected_ntp + expected_flow)

    def test_sampled_times_keep_inputs_clean(self, batch):
        """Understanding images and edit sources stay at t = 1; targets get sampled times."""
        _, batch = batch
        timesteps = prepare_flow_training(tiny_tuna_model("patch"), batch)["timesteps"]
        assert timesteps[~batch["generation_targets"]].tolist() == [1.0, 1.0]
        assert (timesteps[batch["generation_targets"]] < 1).all()

    def test_understanding_noise_spares_edit_sources(self, batch):
        """The official `mmu_noise_prob` noises understanding images; edit sources stay at t = 1."""
        _, batch = batch
        model = tiny_tuna_model("patch")
        model.config.understanding_noise_prob = 1.0
        understanding, _, edit_source, _ = prepare_flow_training(model, batch)["timesteps"].tolist()
        assert 0.9 <= understanding < 1.0 and edit_source == 1.0

    def test_tuna_velocity_loss_with_vae_latents(self):
        model = tiny_tuna_model("vae_siglip")
        processor = tiny_tuna_processor(model.config and None, SIZE, SIZE)
        inputs = processor.build_generation_inputs(["a red square"], height=SIZE, width=SIZE)
        latents, noise = torch.randn(1, 48, 1, 2, 2), torch.randn(1, 48, 1, 2, 2)
        batch = {**inputs, "image_latents": latents, "generation_targets": [True]}
        outputs = model(**prepare_flow_training(model, batch, timesteps=[0.4], noise=noise))
        plain = model(**inputs, image_latents=0.4 * latents + 0.6 * noise, timesteps=[0.4])
        torch.testing.assert_close(outputs.flow_loss, ((plain.flow_prediction - (latents - noise)) ** 2).mean())
        assert model.config.ntp_coeff == 0.2 and outputs.ntp_loss is None

    def test_one_time_for_all_images_and_bad_shapes(self, batch):
        _, batch = batch
        model = tiny_tuna_model("patch")
        assert prepare_flow_training(model, batch, timesteps=0.5)["timesteps"].tolist() == [0.5] * 4
        with pytest.raises(ValueError, match=r"`timesteps` needs one value per image \(4\), got 3"):
            prepare_flow_training(model, batch, timesteps=[0.5, 0.5, 0.5])
        with pytest.raises(ValueError, match="`noise` must have the images' shape"):
            prepare_flow_training(model, batch, noise=torch.zeros(1))
        with pytest.raises(ValueError, match="pass `flow_labels` too"):
            model(**{**batch, "pixel_values": None, "image_latents": batch["pixel_values"].unsqueeze(2)})

    def test_masking_in_training_only(self):
        """Tuna-2's masks are drawn for a model in training; forward puts the mask token exactly there."""
        model = tiny_tuna_model("patch", mask_ratio_min=0.5, mask_ratio_max=0.5)
        rows = tiny_tuna_processor(height=SIZE, width=SIZE).build_generation_inputs(
            ["a", "b"], height=SIZE, width=SIZE
        )
        batch = {**rows, "image_latents": torch.rand(2, 3, 1, SIZE, SIZE), "generation_targets": [True, True]}
        assert "bool_masked_pos" not in prepare_flow_training(model, batch)
        model.train()
        inputs = prepare_flow_training(model, batch)
        masked = inputs["bool_masked_pos"]
        assert masked.sum(-1).tolist() == [2, 2]  # int(4 tokens · 0.5) per image
        features = model(**inputs).image_hidden_states
        assert torch.equal((features == model.model.mask_token[0]).all(-1), masked)
        clean = model.model.patchify(inputs["image_latents"])
        torch.testing.assert_close(features[~masked], clean[~masked])
        assert tiny_tuna_model("patch").config.use_mask_token


class TestRecipes:
    @staticmethod
    def numel(model, prefixes):
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))

    def test_stage_presets_freeze_what_they_say(self):
        for encoder in ("patch", "vae_siglip"):
            model = tiny_tuna_model(encoder)
            apply_recipe(model, "stage1")
            trainable = ("model.vision_tower.", "model.connector.", "model.patch_embed.", "model.timestep_embedder.")
            expected = self.numel(model, (*trainable, "model.mask_token", "flow_head."))
            assert count_trainable_parameters(model) == expected
            assert not any(
                p.requires_grad for n, p in model.named_parameters() if n.startswith("model.language_model.")
            )
            apply_recipe(model, "stage2")
            assert count_trainable_parameters(model) == self.numel(model, ("",)) - self.numel(model, ("model.vae.",))

    @pytest.mark.parametrize(
        "name, part", [("lora-understanding", "model.language_model."), ("lora-generation", "flow_head.")]
    )
    def test_lora_presets(self, name, part):
        model = tiny_tuna_model("patch")
        apply_recipe(model, name, lora_rank=4)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n and n.startswith(part) for n in trainable)
        per_layer = 7 * 2  # q, k, v, o, gate, up, down × (A, B)
        assert len(trainable) == per_layer * 2
        assert set(RECIPES) >= {"stage1", "stage2", "sft", "restore", "lora-all"}

    def test_restore_trains_only_the_filled_layers(self):
        model = tiny_tuna_model("patch", filled_layers=["model.language_model.layers.1", "flow_head.layers.0"])
        apply_recipe(model, "restore")
        prefixes = ("model.language_model.layers.1.", "flow_head.layers.0.")
        assert count_trainable_parameters(model) == self.numel(model, prefixes)
        with pytest.raises(ValueError, match="filled_layers"):
            apply_recipe(tiny_tuna_model("patch"), "restore")


class TestLoraRoundTrip:
    def test_adapter_loads_into_model_and_pipeline_and_merges(self, tmp_path, tiny_repository):
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText

        pipe = TunaPipeline.from_pretrained(tiny_repository, dtype=torch.float32)
        model = pipe.transformer
        apply_recipe(model, "lora-all", lora_rank=4)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.3)
        processor = pipe.processor
        inputs = processor.build_generation_inputs(["a red square"], height=SIZE, width=SIZE)
        x_t = torch.randn(1, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        expected = model(**inputs, image_latents=x_t, timesteps=[0.5]).flow_prediction
        model.save_pretrained(tmp_path / "adapter")

        base = AutoModelForImageTextToText.from_pretrained(tiny_repository, subfolder="transformer").eval()
        reference = base(**inputs, image_latents=x_t, timesteps=[0.5]).flow_prediction
        assert (reference - expected).abs().max() > 1e-3
        base.load_adapter(str(tmp_path / "adapter"))
        torch.testing.assert_close(base(**inputs, image_latents=x_t, timesteps=[0.5]).flow_prediction, expected)

        fresh = TunaPipeline.from_pretrained(tiny_repository, dtype=torch.float32)
        fresh.load_lora_weights(tmp_path / "adapter")
        torch.testing.assert_close(
            fresh.transformer(**inputs, image_latents=x_t, timesteps=[0.5]).flow_prediction, expected
        )

        plain = TunaForUnifiedMultimodal.from_pretrained(tiny_repository / "transformer").eval()
        merged = PeftModel.from_pretrained(plain, tmp_path / "adapter").merge_and_unload()
        torch.testing.assert_close(merged(**inputs, image_latents=x_t, timesteps=[0.5]).flow_prediction, expected)


class TestData:
    def test_resolution_buckets(self, tmp_path):
        records = [{"image": PIL.Image.new("RGB", size), "caption": "x"} for size in ((64, 32), (32, 64), (60, 30))]
        dataset = TunaDataset(records, [(32, 64), (64, 32)])
        assert dataset.buckets == [0, 1, 0]  # (height, width): wide images go to 32×64
        batches = list(ResolutionBucketSampler(dataset.buckets, batch_size=2, seed=0))
        assert sorted(sorted(batch) for batch in batches) == [[0, 2], [1]]
        with pytest.raises(ValueError, match="mixes image sizes"):
            TunaDataCollator(tiny_tuna_processor())([dataset[0], dataset[1]])

    def test_video_and_precomputed_latents(self):
        processor = tiny_tuna_processor(height=SIZE, width=SIZE)
        collator = TunaDataCollator(processor)
        frames = [square("red")] * 5
        video = collator([{"task": "video", "video": frames, "caption": "a red square", "size": (SIZE, SIZE)}])
        assert video["pixel_values"].shape == (1, 3, 5, SIZE, SIZE)
        latents = torch.randn(1, 48, 1, 2, 2)
        sample = {"task": "text_to_image", "image": None, "caption": "x", "latents": latents, "size": (SIZE, SIZE)}
        assert torch.equal(collator([sample])["image_latents"], latents)

    def test_hf_dataset_and_caption_dropout(self):
        import datasets

        rows = datasets.Dataset.from_list([{"image": square("red"), "caption": "a red square"}] * 20)
        processor = tiny_tuna_processor(height=SIZE, width=SIZE)
        kept = TunaDataCollator(processor)([TunaDataset.from_hf(rows, [(SIZE, SIZE)])[0]])
        dataset = TunaDataset.from_hf(rows, [(SIZE, SIZE)], caption_dropout=0.5, seed=1)
        dropped = [i for i in range(20) if dataset[i]["caption"] == ""]
        assert 0 < len(dropped) < 20 and dropped == [i for i in range(20) if dataset[i]["caption"] == ""]
        dataset.set_epoch(1)
        assert dropped != [i for i in range(20) if dataset[i]["caption"] == ""]
        empty = TunaDataCollator(processor)([dataset[dropped[0]]])
        assert empty["input_ids"].shape[1] == kept["input_ids"].shape[1] - len("a red square")


def test_fsdp_training_of_tuna_needs_precomputed_latents(data_dir):
    """Under FSDP the VAE is sharded with the model: train.py refuses Tuna records without latents up front."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    train = load_train_script()
    dataset = TunaDataset.from_jsonl(data_files(data_dir), [(SIZE, SIZE)])
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ValueError, match="9 records have images but no precomputed `latents`"):
        train.check_vae_encoding(fsdp, tiny_tuna_model("vae_siglip"), dataset)
    train.check_vae_encoding(fsdp, tiny_tuna_model("patch"), dataset)
    train.check_vae_encoding(
        SimpleNamespace(distributed_type=DistributedType.NO), tiny_tuna_model("vae_siglip"), dataset
    )


def run_train_script(tiny_repository, data_dir, output, *extra):
    """`examples/train.py` on the tiny repository and data: batches of 4, learning rate 2e-3, every loss logged."""
    arguments = ["--model", str(tiny_repository), "--data", *data_files(data_dir), "--resolution", f"{SIZE}x{SIZE}"]
    arguments += ["--output", str(output), "--batch-size", "4", "--learning-rate", "2e-3", "--log-every", "1"]
    load_train_script().main([*arguments, *extra])


class TestTrainScript:
    def run(self, tiny_repository, data_dir, output, *extra):
        run_train_script(tiny_repository, data_dir, output, *extra)

    def test_overfits_a_handful_of_samples_of_each_task(self, tmp_path, tiny_repository, data_dir):
        overfit = ("--max-steps", "80", "--batch-size", "10", "--caption-dropout", "0", "--checkpointing-steps", "0")
        self.run(tiny_repository, data_dir, tmp_path, *overfit)  # every batch holds all 10 samples
        log = read_log(tmp_path)
        first, last = (sum(r["loss"] for r in part) / len(part) for part in (log[:5], log[-5:]))
        assert first / last > 10, f"loss {first:.3f} → {last:.3f}"
        pipe = TunaPipeline.from_pretrained(tmp_path / "pipeline", dtype=torch.float32)
        assert pipe.transformer.config.tuna_variant == "tuna_2"
        card = (tmp_path / "pipeline" / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: diffusers\n") and "recipe `stage2`, 80 steps" in card

    def test_push_to_hub_uploads_the_pipeline_with_its_card(self, tmp_path, tiny_repository, data_dir, monkeypatch):
        import huggingface_hub

        calls = []
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id))
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
        self.run(tiny_repository, data_dir, tmp_path, "--max-steps", "1", "--push-to-hub", "someone/tuna-shapes")
        assert calls == ["someone/tuna-shapes", {**calls[1], "folder_path": str(tmp_path / "pipeline")}]
        assert 'from_pretrained("someone/tuna-shapes"' in (tmp_path / "pipeline" / "README.md").read_text()

    def test_resume_continues_the_same_loss_curve(self, tmp_path, tiny_repository, data_dir):
        """Checkpoints every 2 steps, 3 batches per epoch: resumes land mid-epoch (step 4) and at an epoch end (6)."""
        common = ("--checkpointing-steps", "2", "--caption-dropout", "0.5")
        self.run(tiny_repository, data_dir, tmp_path / "full", "--max-steps", "7", *common)
        for steps in ("4", "6", "7"):
            resume = ("--resume-from", "latest") if steps != "4" else ()
            self.run(tiny_repository, data_dir, tmp_path / "resumed", "--max-steps", steps, *resume, *common)
        full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "resumed")
        assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6, 7]
        for a, b in zip(full, resumed, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)

    def test_ema_weights_are_saved_and_resumed(self, tmp_path, tiny_repository, data_dir):
        """The result holds the EMA of the weights (not the last ones); a resumed run restores the EMA exactly."""
        common = ("--ema-decay", "0.5", "--caption-dropout", "0", "--checkpointing-steps", "2")
        self.run(tiny_repository, data_dir, tmp_path / "full", "--max-steps", "4", *common)
        self.run(tiny_repository, data_dir, tmp_path / "resumed", "--max-steps", "2", *common)
        self.run(
            tiny_repository, data_dir, tmp_path / "resumed", "--max-steps", "4", *common, "--resume-from", "latest"
        )
        last = load_file(tmp_path / "full" / "checkpoint-4" / "model.safetensors")
        averaged = load_file(tmp_path / "full" / "pipeline" / "transformer" / "model.safetensors")
        resumed = load_file(tmp_path / "resumed" / "pipeline" / "transformer" / "model.safetensors")
        name = "flow_head.final_layer.proj.weight"
        assert (averaged[name] - last[name]).abs().max() > 1e-6
        for key, value in averaged.items():
            torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)
        assert "EMA 0.5" in (tmp_path / "full" / "pipeline" / "README.md").read_text()

    def test_lora_recipe_saves_an_adapter(self, tmp_path, tiny_repository, data_dir):
        self.run(
            tiny_repository,
            data_dir,
            tmp_path,
            "--max-steps",
            "2",
            "--recipe",
            "lora-generation",
            "--lora-rank",
            "4",
            "--gradient-checkpointing",
        )
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
        pipe = TunaPipeline.from_pretrained(tiny_repository, dtype=torch.float32)
        pipe.load_lora_weights(tmp_path / "adapter")
        assert any("lora_" in name for name, _ in pipe.transformer.named_parameters())

    def test_restore_changes_only_the_filled_layers(self, tmp_path, tiny_repository, data_dir):
        repository = tmp_path / "foundation"
        pipe = TunaPipeline.from_pretrained(tiny_repository, dtype=torch.float32)
        pipe.transformer.config.filled_layers = ["flow_head.layers.1"]
        pipe.save_pretrained(repository)
        self.run(repository, data_dir, tmp_path / "run", "--max-steps", "2", "--recipe", "restore")
        before = pipe.transformer.state_dict()
        after = TunaForUnifiedMultimodal.from_pretrained(tmp_path / "run" / "pipeline" / "transformer").state_dict()
        changed = {key for key in before if not torch.equal(before[key], after[key])}
        assert changed and all(key.startswith("flow_head.layers.1.") for key in changed)

    def test_two_processes_with_accelerate_launch(self, tmp_path, tiny_repository, data_dir):
        """Data parallel over gloo (accelerate 1.15 enables FSDP only on accelerators, see the README)."""
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command += [str(REPO / "examples" / "accelerate" / "multi_cpu.yaml"), "--main_process_port", "29561"]
        command += [
            str(REPO / "examples" / "train.py"),
            "--model",
            str(tiny_repository),
            "--data",
            *data_files(data_dir),
        ]
        command += [
            "--resolution",
            f"{SIZE}x{SIZE}",
            "--output",
            str(tmp_path),
            "--max-steps",
            "3",
            "--log-every",
            "1",
        ]
        command += ["--checkpointing-steps", "0", "--learning-rate", "1e-3"]
        environment = {**os.environ, "ACCELERATE_USE_CPU": "1"}
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=environment)
        assert result.returncode == 0, result.stderr[-3000:]
        assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
        trained = TunaForUnifiedMultimodal.from_pretrained(tmp_path / "pipeline" / "transformer").state_dict()
        start = TunaForUnifiedMultimodal.from_pretrained(tiny_repository / "transformer").state_dict()
        assert any(not torch.equal(trained[key], start[key]) for key in start)


def test_fsdp2_sharding_on_cpu(tmp_path):
    """accelerate 1.15 runs FSDP only on accelerators; torch's FSDP2 shards the model on CPU (gloo) with the same
    wrapping, and the gathered weights save and load through `save_pretrained` / `from_pretrained`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563"]
    command += [str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = torch.load(tmp_path / "gathered.pt", weights_only=True)
    loaded = TunaForUnifiedMultimodal.from_pretrained(tmp_path).state_dict()
    start = tiny_tuna_model("patch").state_dict()
    assert all(torch.equal(loaded[key], gathered[key]) for key in gathered)
    assert sum(not torch.equal(loaded[key], start[key]) for key in start) > len(start) // 2
