"""Resumable checkpoints: `accelerator.save_state` under checkpoints/step_N, whole or absent; the newest are kept."""

import json
import re
import shutil
from pathlib import Path

from ..files import commit, staging_path

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
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / TRAINING_STATE).write_text(json.dumps(state))
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
