"""Resumable checkpoints: `accelerator.save_state` under checkpoints/step_N, whole or absent; the newest are kept."""

import json
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import gather_object

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
    failure = None
    try:
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            (staging / TRAINING_STATE).write_text(json.dumps(state))
    except Exception as error:  # OSError, or the serialiser's own error type, for a full or refusing file system
        failure = error
    # Every rank learns whether all wrote their part (their RNG state, their shards) before the rename: one rank's
    # failure stops them all now, instead of leaving the others in the next collective until --ddp_timeout.
    failures = [
        f"process {rank}: {error}" for rank, error in enumerate(gather_object([failure and str(failure)])) if error
    ]
    if failures:
        previous = list_checkpoints(output_dir)
        raise CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {staging} ({'; '.join(failures)}); stopping. "
            + (f"The previous checkpoint {previous[-1]} is intact." if previous else "No earlier checkpoint exists.")
        ) from failure
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


def group_sizes(optimizer: torch.optim.Optimizer) -> list[int]:
    """Tensors per param group: how the optimizer split the weights (AdamW's decay split, layer decay, Muon's)."""
    return [len(group["params"]) for group in optimizer.param_groups]
