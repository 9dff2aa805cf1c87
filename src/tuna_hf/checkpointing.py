"""Training checkpoints that resume exactly and load safely (`examples/train.py`, docs/architecture.md §15).

A `checkpoint-N` folder holds accelerate's state (`save_state`: weights as safetensors; optimizer, scheduler and RNG
states loaded with `weights_only=True`), the run's defining arguments (`training_args.json`) and, with an EMA, its
shadow weights per process (`ema_{rank}.safetensors`, scalars in the metadata). Resuming checks all of it first:

- nothing is unpickled beyond `weights_only` data: a folder holding pickled custom state (accelerate's
  `custom_checkpoint_*.pkl`, which it loads with full unpickling) is refused;
- a missing or unreadable RNG state would make the resumed run silently differ: refused unless the caller allows an
  inexact resume, then a warning;
- an argument that defines the run (learning rate, batch size, data, ...) given with another value than the
  checkpointed run's would be silently overridden by the restored optimizer/scheduler state: refused, naming it.
"""

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
from accelerate.utils import load
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
RUN_ARGUMENTS_NAME = "training_args.json"

# The arguments that define the optimisation: a resumed run must give the values of the checkpointed one. With a
# cosine schedule the number of steps shapes the learning rate too (`SCHEDULE_ARGUMENTS`).
RUN_ARGUMENTS = (
    "model",
    "data",
    "resolution",
    "recipe",
    "lora_rank",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "lr_schedule",
    "ema_decay",
    "group_by_task",
    "caption_dropout",
    "seed",
)
SCHEDULE_ARGUMENTS = {"cosine": ("max_steps",)}


class InexactResumeWarning(UserWarning):
    """The resumed run will not continue the checkpointed one exactly (allowed by the caller)."""


def checkpoint_step(folder: str | Path) -> int:
    """The step a `checkpoint-N` folder was written at; a clear error for any other folder."""
    folder = Path(folder)
    match = CHECKPOINT_PATTERN.fullmatch(folder.name)
    if match is None:
        raise ValueError(f"`--resume-from` must be a `checkpoint-N` folder written by a run, got {str(folder)!r}.")
    if not folder.is_dir():
        raise FileNotFoundError(f"`--resume-from`: no checkpoint folder at {str(folder)!r}.")
    return int(match[1])


def latest_checkpoint(output: Path) -> Path | None:
    """The `checkpoint-N` folder of `output` with the largest N (None when there is none)."""
    checkpoints = [p for p in output.glob("checkpoint-*") if CHECKPOINT_PATTERN.fullmatch(p.name) and p.is_dir()]
    return max(checkpoints, key=checkpoint_step, default=None)


def run_arguments(args, accelerator) -> dict:
    """What defines a run, JSON-ready: its arguments (`RUN_ARGUMENTS`, `SCHEDULE_ARGUMENTS`; local paths resolved)
    and the processes and precision it ran with (which set the global batch and the numerics)."""
    names = RUN_ARGUMENTS + SCHEDULE_ARGUMENTS.get(args.lr_schedule, ())
    values = {name: _resolved(getattr(args, name)) for name in names}
    values.update(num_processes=accelerator.num_processes, mixed_precision=str(accelerator.mixed_precision))
    return json.loads(json.dumps(values, default=str))


def _resolved(value):
    """A local path as its absolute form (`./repo` and `repo` are one model), anything else as it is."""
    if isinstance(value, (list, tuple)):
        return [_resolved(item) for item in value]
    return str(Path(value).resolve()) if isinstance(value, (str, Path)) and Path(value).exists() else value


def save_checkpoint(accelerator, folder: Path, args, ema=None) -> None:
    """accelerate's state, the run's arguments and the EMA (if any) in `folder`, the way `resume` reads them.
    Written as `checkpoint-N.partial` and renamed when complete, so that `latest` never picks a half-written one."""
    partial = folder.with_name(folder.name + ".partial")
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / RUN_ARGUMENTS_NAME).write_text(json.dumps(run_arguments(args, accelerator), indent=2) + "\n")
    if ema is not None:
        save_ema(ema, partial / f"ema_{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    accelerator.wait_for_everyone()


def resume(accelerator, folder: Path, args, ema=None, allow_inexact: bool = False) -> int:
    """Checks `folder` (see the module docstring), loads it into the prepared objects and `ema`; returns its step."""
    step = checkpoint_step(folder)
    check_loads_safely(folder)
    check_run_arguments(folder, args, accelerator, allow_inexact)
    check_random_states(folder, accelerator.process_index, allow_inexact)
    ema_file = folder / f"ema_{accelerator.process_index}.safetensors"
    if (ema is not None) != ema_file.exists():
        raise ValueError(
            f"{folder} was written {'without' if ema is not None else 'with'} an EMA (`--ema-decay`): resume with "
            "the same `--ema-decay` as the checkpointed run."
        )
    accelerator.load_state(str(folder))
    if ema is not None:
        load_ema(ema, ema_file)
    return step


def check_loads_safely(folder: Path) -> None:
    pickled = sorted(path.name for path in folder.glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise ValueError(
            f"{folder} holds pickled custom state ({', '.join(pickled)}), which accelerate would load with full "
            "unpickling (a tampered file runs code): refused. This project's checkpoints store the EMA as "
            "`ema_{rank}.safetensors`; start a new run, or resume from a checkpoint written by this version."
        )


def check_run_arguments(folder: Path, args, accelerator, allow_inexact: bool) -> None:
    """The arguments that define the run must be those of the checkpointed run (see `RUN_ARGUMENTS`)."""
    path = folder / RUN_ARGUMENTS_NAME
    if not path.exists():
        _inexact(f"{folder} has no {RUN_ARGUMENTS_NAME}: the run's arguments cannot be checked.", allow_inexact)
        return
    saved, given = json.loads(path.read_text()), run_arguments(args, accelerator)
    changed = [name for name in sorted(set(saved) | set(given)) if saved.get(name) != given.get(name)]
    if changed:
        flag = "`--{}` {!r} → {!r}".format
        flags = "; ".join(flag(name.replace("_", "-"), saved.get(name), given.get(name)) for name in changed)
        raise ValueError(
            f"Resuming {folder} with other arguments than the checkpointed run ({flags}): the restored optimizer and "
            "scheduler state would override or contradict them. Pass the checkpointed values, or start a new run "
            "(another `--output`) to change them."
        )


def check_random_states(folder: Path, process_index: int, allow_inexact: bool) -> None:
    """This process's RNG state must load (accelerate skips a missing or broken one without a word)."""
    path = folder / f"random_states_{process_index}.pkl"
    required = {"random_state", "numpy_random_seed", "torch_manual_seed"}
    if torch.cuda.is_available():
        required.add("torch_cuda_manual_seed")
    try:
        missing = required - set(load(path))
    except Exception as error:
        reason = f"{path.name} does not load ({type(error).__name__}: {error})"
    else:
        if not missing:
            return
        reason = f"{path.name} lacks {sorted(missing)}"
    _inexact(f"{folder}: {reason}, so the resumed run's random draws would differ.", allow_inexact)


def _inexact(reason: str, allow_inexact: bool) -> None:
    if not allow_inexact:
        raise ValueError(f"{reason} Pass `--allow-inexact-resume` to resume anyway.")
    warnings.warn(f"{reason} Resuming anyway (`--allow-inexact-resume`).", InexactResumeWarning, stacklevel=3)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A process's own part of a (possibly FSDP-sharded, DTensor) tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def save_ema(ema, path: Path) -> None:
    """An `EMAModel`'s shadow weights (this process's shards) as tensors, its scalar settings as metadata."""
    state = ema.state_dict()
    shadows = state.pop("shadow_params")
    tensors = {f"shadow.{index}": _local(p).detach().contiguous() for index, p in enumerate(shadows)}
    save_file(tensors, path, metadata={"ema": json.dumps(state)})


def load_ema(ema, path: Path) -> None:
    """Restores what `save_ema` wrote into `ema`, in place (its shadow weights keep their devices and sharding)."""
    with safe_open(path, framework="pt") as file:
        scalars = json.loads((file.metadata() or {}).get("ema", "null"))
    tensors = load_file(path)
    shadows = [_local(p) for p in ema.shadow_params]
    expected = {f"shadow.{index}": (tuple(p.shape), p.dtype) for index, p in enumerate(shadows)}
    found = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in tensors.items()}
    if not isinstance(scalars, dict) or found != expected:
        raise ValueError(
            f"{path} does not hold the EMA of this run's trainable parameters ({len(expected)} tensors expected, with "
            "the same shapes): resume with the checkpointed run's recipe and model."
        )
    ema.load_state_dict(scalars)
    with torch.no_grad():
        for index, shadow in enumerate(shadows):
            shadow.copy_(tensors[f"shadow.{index}"])
