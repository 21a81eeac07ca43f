"""Resumable checkpoints: `accelerator.save_state` under checkpoints/step_N, whole or absent; the newest are kept."""

import json
import re
import shutil
from pathlib import Path

import torch

from ..files import commit, staging_path


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the earlier ones are untouched."""


CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINING_STATE = "training_state.json"


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: int) -> Path:
    """`accelerator.save_state` into checkpoints/step_N, written under a temporary name and renamed when complete,
    so an interrupted save never looks like a checkpoint; keeps the newest `total_limit`."""
    final = Path(output_dir) / "checkpoints" / f"step_{step}"
    staging = staging_path(final)  # the same on every rank: they all write into it
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            (staging / TRAINING_STATE).write_text(json.dumps(state))
    except Exception as error:  # OSError, or the serialiser's own error type, for a full or refusing file system
        previous = list_checkpoints(output_dir)
        raise CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {staging} ({error}); stopping. "
            + (f"The previous checkpoint {previous[-1]} is intact." if previous else "No earlier checkpoint exists.")
        ) from error
    accelerator.wait_for_everyone()  # every rank has written its part (its RNG state, its shards) before the rename
    if accelerator.is_main_process:
        commit(staging, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, half-written folders never match)."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if CHECKPOINT_PATTERN.match(p.name) and (p / TRAINING_STATE).is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path:
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/checkpoints"
            )
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {TRAINING_STATE})")
    return path


def read_training_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINING_STATE).read_text())


def group_sizes(optimizer: torch.optim.Optimizer) -> list[int]:
    """Tensors per param group: how the optimizer split the weights (AdamW's decay split, layer decay, Muon's)."""
    return [len(group["params"]) for group in optimizer.param_groups]


def check_same_optimizer(state: dict, optim: str, sizes: list[int]) -> None:
    """Refuses to continue a checkpoint's optimizer state with another optimizer (older checkpoints: AdamW's), or
    with its parameters split into other groups (`sizes`: this run's `group_sizes`; older checkpoints did not record
    theirs, and their Muon also stepped a convolutional stem's weights)."""
    saved = state.get("optim", "adamw")
    if saved != optim:
        raise ValueError(
            f"--optim {optim}: the checkpoint was trained with {saved}, whose state this optimizer cannot continue; "
            f"resume with --optim {saved}"
        )
    saved_sizes = state.get("optimizer_groups")
    if saved_sizes is None and optim == "muon":
        raise ValueError(
            "--resume_from_checkpoint: the checkpoint's Muon state is from an earlier version, which did not record "
            "its param groups and whose Muon also stepped a convolutional stem's weights (this version leaves them "
            "to AdamW), so this version cannot tell whether it fits; resume with the version that wrote it"
        )
    if saved_sizes is not None and saved_sizes != sizes:
        raise ValueError(
            f"--resume_from_checkpoint: the checkpoint's optimizer has param groups of {saved_sizes} tensors, this "
            f"run's of {sizes}: its weights are grouped differently (another --layer_decay, other trainable "
            "weights); resume with the settings that wrote it"
        )


def resume_batches(state: dict, per_device_batch_size: int, num_processes: int, global_batch_size: int) -> int:
    """Per-process batches to skip in the checkpoint's epoch so that the run continues at the same sample of the
    same global order, on this number of processes; refuses, saying what would differ, when it cannot.

    The sampler's order is global and each process reads every num_processes-th batch of it, so a position is a count
    of samples: it carries over to any process count whose per-step micro-batch (batch x processes) divides it."""
    if state["global_batch_size"] != global_batch_size:
        raise ValueError(
            f"--resume_from_checkpoint: the checkpoint was trained at global batch {state['global_batch_size']} "
            f"({state['num_processes']} processes), this run's is {global_batch_size} ({num_processes} processes x "
            f"--per_device_train_batch_size x --gradient_accumulation_steps): the learning rate, the schedule and the "
            "samples of each step would differ; set them so that the global batch is the checkpoint's"
        )
    micro_batch = per_device_batch_size * num_processes
    if state["samples_in_epoch"] % micro_batch:
        raise ValueError(
            f"--resume_from_checkpoint: the checkpoint stopped {state['samples_in_epoch']} samples into its epoch, "
            f"which is not a whole number of this run's micro-batches of {micro_batch} ({num_processes} processes x "
            f"{per_device_batch_size}): the run could not continue at the same sample"
        )
    return state["samples_in_epoch"] // micro_batch
