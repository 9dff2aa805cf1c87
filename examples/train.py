"""Train or fine-tune TUNA with accelerate: one CPU process, or many GPUs/nodes with FSDP (see README, `accelerate/`).

    accelerate launch examples/train.py --model PIPELINE_DIR --data mmu_pairs.jsonl ti_pairs.jsonl \
        --recipe lora-all --output runs/lora --max-steps 1000

Mixed batches of understanding, text-to-image, editing and video samples (the official jsonl formats,
`tuna_hf.data`), noised for the flow loss by `tuna_hf.losses.prepare_flow_training`, the model's own losses
(`loss = ntp_coeff · ntp + flow_coeff · flow`), a named recipe (`tuna_hf.recipes`), AdamW with the official
betas/weight decay, linear warm-up, gradient clipping 1.0, gradient accumulation, optional gradient checkpointing, an
optional EMA of the weights (`--ema-decay`), checkpoints every `--checkpointing-steps` (`--resume-from` continues the
same run), losses logged to `OUTPUT/log.jsonl`, sample images every `--sample-every` steps. The result is a pipeline
repository (full recipes) or a PEFT adapter (LoRA recipes) that `AutoModelForImageTextToText` (`load_adapter`) and
`TunaPipeline.load_lora_weights` both load.
"""

import argparse
import contextlib
import gc
import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tuna_hf import TunaPipeline
from tuna_hf.checkpointing import checkpoint_step, latest_checkpoint, resume, save_checkpoint
from tuna_hf.data import ResolutionBucketSampler, TunaDataCollator, TunaDataset
from tuna_hf.hub import upload_repository, write_model_card
from tuna_hf.losses import prepare_flow_training
from tuna_hf.pipelines.base import write_transformers_entry
from tuna_hf.recipes import RECIPES, apply_recipe, count_trainable_parameters


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="pipeline repository to start from")
    parser.add_argument("--data", nargs="+", required=True, help="jsonl files in the official formats")
    parser.add_argument("--resolution", nargs="+", default=["512x512"], help="HxW buckets, multiples of 16")
    parser.add_argument("--recipe", default="stage2", choices=sorted(RECIPES))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, help="default: the recipe's")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument(
        "--lr-schedule", default="constant", choices=["constant", "cosine"], help="after warm-up (official: constant)"
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the trained weights, used for samples and the result "
        "(official: 0.9999; 0: off)",
    )
    parser.add_argument(
        "--group-by-task", action="store_true", help="one task per batch (less padding) instead of mixed batches"
    )
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="empty captions, for CFG")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--checkpointing-steps", type=int, default=500)
    parser.add_argument("--resume-from", help="a checkpoint folder, or 'latest' in --output")
    parser.add_argument(
        "--allow-inexact-resume",
        action="store_true",
        help="resume from a checkpoint without RNG states or recorded arguments (a warning instead of an error)",
    )
    parser.add_argument("--sample-every", type=int, default=0, help="write sample images every N steps (0: never)")
    parser.add_argument("--sample-prompts", nargs="+", default=["a photo of a cat"])
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="upload the pipeline (or adapter) to the Hub at the end"
    )
    return parser.parse_args(argv)


def parse_resolution(text: str) -> tuple[int, int]:
    height, width = (int(side) for side in text.lower().split("x"))
    return height, width


def learning_rate_schedule(warmup_steps: int, total_steps: int, shape: str):
    """Linear warm-up, then constant (the official `fsdp_utils` schedule) or a cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if shape == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def check_vae_encoding(accelerator, model, dataset: TunaDataset) -> None:
    """Tuna's images are encoded by its VAE in `prepare_flow_training`, outside the sharded forward: under FSDP the
    records must bring precomputed `latents`."""
    if accelerator.distributed_type != DistributedType.FSDP or model.config.visual_encoder != "vae_siglip":
        return
    missing = sum(record.get("latents") is None for record in dataset.records if record["task"] != "text")
    if missing:
        raise ValueError(
            f"{missing} records have images but no precomputed `latents`: under FSDP, Tuna's VAE cannot encode them "
            "outside the sharded forward. Add each record's VAE latents (`tuna_hf.data`, `latents`)."
        )


def save_result(accelerator, model, pipeline, args, steps: int, lora: bool) -> Path | None:
    """Full recipes: a pipeline repository with its model card in `OUTPUT/pipeline`; LoRA recipes: the PEFT adapter in
    `OUTPUT/adapter`. The state dict is gathered from all processes first (FSDP shards it). Returns the folder on the
    main process."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    if lora:
        unwrapped.save_pretrained(args.output / "adapter", state_dict=state_dict)
        return args.output / "adapter"
    repository = args.output / "pipeline"
    pipeline.save_config(repository)  # model_index.json
    unwrapped.save_pretrained(repository / "transformer", state_dict=state_dict)
    pipeline.processor.save_pretrained(repository / "processor")
    pipeline.scheduler.save_pretrained(repository / "scheduler")
    write_transformers_entry(repository)
    provenance = (
        f"Trained with tuna-hf's `examples/train.py` from `{args.model}`: recipe `{args.recipe}`, {steps} steps of "
        f"{args.batch_size} × {args.gradient_accumulation_steps} samples, learning rate {args.learning_rate}"
        + (f", EMA {args.ema_decay}" if args.ema_decay else "")
        + ", data "
        + ", ".join(f"`{Path(path).name}`" for path in args.data)
        + "."
    )
    repo_id = args.push_to_hub or str(repository)
    write_model_card(repository, pipeline, model_name=repository.parent.name, repo_id=repo_id, provenance=provenance)
    return repository


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, parameters: list):
    """The EMA weights in the model for the duration of the block (nothing changes without an EMA)."""
    if ema is None:
        yield
        return
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


@torch.no_grad()
def write_samples(accelerator, model, pipeline, args, step: int) -> None:
    """Sample images of `--sample-prompts` (single process or DDP; FSDP shards the weights, so no samples there)."""
    if not accelerator.is_main_process or accelerator.distributed_type == DistributedType.FSDP:
        return
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    sampler = TunaPipeline.from_pipe(pipeline, transformer=unwrapped)  # the repository's sampling settings
    sampler.set_progress_bar_config(disable=True)
    height, width = parse_resolution(args.resolution[0])
    images = sampler(
        args.sample_prompts,
        height=height,
        width=width,
        num_inference_steps=args.sample_steps,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    folder = args.output / "samples" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")
    unwrapped.train()


def main(argv=None):
    args = parse_args(argv)
    # Without GPUs, processes started by torchrun form a gloo group (MULTI_CPU): examples/accelerate/multi_cpu.yaml.
    # A batch without images (or without text labels) leaves the flow head (or parts of the decoder's inputs) unused.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[unused],
    )
    try:
        train(accelerator, args)
    finally:
        # The wrapped model goes before the process group: DDP's reducer dropping the group's last reference while
        # holding the GIL can deadlock with a gloo worker thread (pytorch/pytorch#56297); the group itself is then
        # destroyed by `end_training` with the GIL released.
        accelerator.free_memory()
        gc.collect()
        accelerator.end_training()


def resume_folder(accelerator, args) -> Path | None:
    """The checkpoint `--resume-from` names (checked before anything loads), None for a new run."""
    if args.resume_from is None:
        return None
    if args.resume_from != "latest":
        checkpoint_step(args.resume_from)
        return Path(args.resume_from)
    folder = latest_checkpoint(args.output)
    if folder is None:
        accelerator.print(f"--resume-from latest: no checkpoint-N folder in {args.output}, starting a new run")
    return folder


def train(accelerator, args) -> None:
    resume_from = resume_folder(accelerator, args)
    set_seed(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)

    pipeline = TunaPipeline.from_pretrained(args.model, dtype=torch.float32)
    model = pipeline.transformer
    recipe = apply_recipe(model, args.recipe, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    accelerator.print(f"recipe {recipe.name}: {count_trainable_parameters(model):,} trainable parameters")

    resolutions = [parse_resolution(r) for r in args.resolution]
    dataset = TunaDataset.from_jsonl(args.data, resolutions, caption_dropout=args.caption_dropout, seed=args.seed)
    check_vae_encoding(accelerator, model, dataset)
    collator = TunaDataCollator(pipeline.processor)
    groups = dataset.buckets
    if args.group_by_task:
        groups = [(bucket, record["task"]) for bucket, record in zip(dataset.buckets, dataset.records, strict=True)]
    sampler = ResolutionBucketSampler(groups, args.batch_size, seed=args.seed)
    # A loader generator of its own: each new epoch iterator draws a seed from it, not from the global RNG that the
    # model's noise and masking use (else a resumed run's first iterator would shift that RNG).
    loader_generator = torch.Generator().manual_seed(args.seed)
    dataloader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, generator=loader_generator)
    args.learning_rate = args.learning_rate or recipe.learning_rate
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.01,
    )
    schedule = learning_rate_schedule(args.warmup_steps, args.max_steps, args.lr_schedule)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    # After `prepare`: the EMA follows the parameters the optimizer updates (FSDP replaces them by its shards).
    trainable = [p for p in model.parameters() if p.requires_grad]
    ema = EMAModel(trainable, decay=args.ema_decay, foreach=True) if args.ema_decay else None

    step = 0
    if resume_from is not None:
        step = resume(accelerator, resume_from, args, ema, allow_inexact=args.allow_inexact_resume)
        accelerator.print(f"resumed from {resume_from} at step {step}")
    batches_per_epoch = len(dataloader)
    skip = step * args.gradient_accumulation_steps
    log = (args.output / "log.jsonl").open("a") if accelerator.is_main_process else None
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process)
    epoch = skip // batches_per_epoch
    while step < args.max_steps:
        # The batch order depends on the epoch only, so a resumed run sees the batches the first run would have.
        sampler.set_epoch(epoch)
        epoch_loader = dataloader
        if skip % batches_per_epoch and epoch == skip // batches_per_epoch:
            epoch_loader = accelerator.skip_first_batches(dataloader, skip % batches_per_epoch)
        epoch_loader.set_epoch(epoch)  # also the dataset's (caption dropout)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                # Noised where the model's forward runs: under the same autocast (Tuna's VAE encodes the images).
                with accelerator.autocast():
                    inputs = prepare_flow_training(accelerator.unwrap_model(model), batch)
                outputs = model(**inputs)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(trainable)
            step += 1
            progress.update()
            record = {"step": step, "loss": accelerator.gather(outputs.loss.detach()).mean().item()}
            for name in ("ntp_loss", "flow_loss"):
                if (value := getattr(outputs, name)) is not None:
                    record[name] = value.item()
            if log is not None and (step % args.log_every == 0 or step == 1):
                log.write(json.dumps(record) + "\n")
                log.flush()
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output / f"checkpoint-{step}", args, ema)
            if args.sample_every and step % args.sample_every == 0:
                with ema_weights(ema, trainable):
                    write_samples(accelerator, model, pipeline, args, step)
            if step >= args.max_steps:
                break
        epoch += 1
    progress.close()
    accelerator.wait_for_everyone()
    with ema_weights(ema, trainable):
        result = save_result(accelerator, model, pipeline, args, step, lora=recipe.lora_targets is not None)
    accelerator.print(
        f"saved to {args.output} after {step} steps (epochs: {math.ceil(step / max(batches_per_epoch, 1))})"
    )
    if args.push_to_hub and result is not None:
        accelerator.print(f"pushed to {upload_repository(result, args.push_to_hub)}")


if __name__ == "__main__":
    main()
