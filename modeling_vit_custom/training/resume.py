"""Resuming a run: which checkpoint, where in its epoch the run continues, and what cannot continue, decided from the
checkpoint's training_state.json before any data is read or weights are loaded."""

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import TRAINING_STATE, list_checkpoints
from .run_log import EVAL_EVENT, METRICS_FILE, read_metrics, truncate_metrics
from .tracking import BestModel

logger = logging.getLogger(__name__)

# Flags a resumed run may set differently from the run it continues: its length, where and how often it reports and
# saves, how the work is spread over processes and workers (the global batch is checked on its own), how fast the
# kernels run. Every other flag is the recipe, and a resume that changes it is refused.
RESUMABLE_SETTINGS = frozenset(
    {
        "max_train_steps",
        "num_train_epochs",
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "num_workers",
        "logging_steps",
        "eval_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "ddp_timeout",
        "report_to",
        "dry_run",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
        "synchronize_timing",
        "torch_compile",
        "attn_implementation",
        "cache_dir",
        "data_in_memory",
        "data_in_memory_max_gb",
        "num_processes",
        "global_batch_size",
    }
)
# Where the checkpoints, best/ and final/ of an abandoned timeline go when a run is resumed from an earlier step.
ABANDONED = "abandoned_after_step_{step}"


@dataclass
class ResumePoint:
    """Where a resumed run continues: the checkpoint, its optimizer step and epoch, the per-process batches of that
    epoch already trained (on this run's process count), and the best evaluation so far."""

    checkpoint: Path
    step: int
    epoch: int
    skip_batches: int
    planned_steps: int
    best_score: float | None
    best_step: int | None
    state: dict

    def describe_length(self, max_train_steps: int) -> str | None:
        """A line for the log when this run's length differs from the checkpoint's, saying which way."""
        if max_train_steps == self.planned_steps:
            return None
        change = "Extending" if max_train_steps > self.planned_steps else "Shortening"
        return (
            f"{change} the run from {self.planned_steps} to {max_train_steps} optimizer steps: the learning-rate "
            f"schedule is recomputed for {max_train_steps}"
        )


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path:
    """'latest' (the newest complete checkpoint of output_dir's run) or a checkpoint folder, refused by name."""
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


def plan_resume(
    output_dir: str, resume_from_checkpoint: str, settings: dict, num_processes: int, global_batch_size: int,
    per_device_batch_size: int,
) -> ResumePoint:  # fmt: skip
    """The point a resumed run continues from, or a refusal naming what would differ: another optimizer or recipe
    (`settings`: this run's flags, compared with those the checkpoint recorded), another global batch, a position
    this process count cannot reach, repeated augmentation on another process count."""
    checkpoint = resolve_checkpoint(output_dir, resume_from_checkpoint)
    state = read_training_state(checkpoint)
    check_same_recipe(state, settings)
    if settings.get("repeated_augmentation", 1) > 1 and state["num_processes"] != num_processes:
        raise ValueError(
            f"--resume_from_checkpoint with --repeated_augmentation: the checkpoint ran on {state['num_processes']} "
            f"processes, this run on {num_processes}; the repeats are dealt out per process, so the samples would "
            "differ: resume on the same number of processes"
        )
    skip_batches = resume_batches(state, per_device_batch_size, num_processes, global_batch_size)
    return ResumePoint(
        checkpoint=checkpoint,
        step=state["step"],
        epoch=state["epoch"],
        skip_batches=skip_batches,
        planned_steps=state["max_train_steps"],
        # best_top1: what checkpoints written before multi-label runs call it.
        best_score=state.get("best_score", state.get("best_top1")),
        best_step=state["best_step"],
        state=state,
    )


def check_same_recipe(state: dict, settings: dict) -> None:
    """Refuses a resume whose recipe differs from the checkpoint's (older checkpoints did not record theirs): the
    optimizer's restored state (its learning rates, its decay) would silently win over the new flags, or the rest of
    the run would train something other than its record says. Names each changed flag, old -> new."""
    saved_optim = state.get("optim", "adamw")
    if saved_optim != settings["optim"]:
        raise ValueError(
            f"--optim {settings['optim']}: the checkpoint was trained with {saved_optim}, whose state this optimizer "
            f"cannot continue; resume with --optim {saved_optim}"
        )
    saved = state.get("settings")
    if saved is None:
        return
    changed = [
        f"--{name} {saved.get(name)!r} -> {settings.get(name)!r}"
        for name in sorted(set(saved) | set(settings))
        if name not in RESUMABLE_SETTINGS and saved.get(name) != settings.get(name)
    ]
    if changed:
        raise ValueError(
            f"--resume_from_checkpoint: the checkpoint was trained with other settings ({'; '.join(changed)}); a "
            "resumed run continues the checkpoint's optimizer and schedule, so these cannot change mid-run: resume "
            "with the checkpoint's values, or start a new run (another --output_dir) from its weights with "
            "--model_name_or_path"
        )


def check_same_optimizer_groups(state: dict, sizes: list[int]) -> None:
    """Refuses to continue a checkpoint's optimizer state with its parameters split into other groups (`sizes`: this
    run's `group_sizes`; older checkpoints did not record theirs, and their Muon also stepped a convolutional stem's
    weights)."""
    saved_sizes = state.get("optimizer_groups")
    if saved_sizes is None and state.get("optim") == "muon":
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


def is_complete(point: ResumePoint, max_train_steps: int, output_dir: Path) -> bool:
    """Whether the checkpoint is the end of a run of `max_train_steps` whose final/ is saved: nothing to train."""
    return point.step >= max_train_steps and (output_dir / "final").is_dir()


def restore(
    accelerator, point: ResumePoint, output_dir: Path, best_metric: str, streaming: bool, max_train_steps: int
) -> BestModel:
    """Continues the run at `point`, once it is accepted: loads the checkpoint's weights, optimizer, schedule and
    random states; on the main process, sets a later timeline aside and cuts the metrics log back to the checkpoint's
    step. Returns the best model so far: the checkpoint's while best/ holds it, else none (chosen again from this
    run's evaluations)."""
    accelerator.load_state(str(point.checkpoint))
    if accelerator.is_main_process:
        aside = set_aside_later_timeline(output_dir, point, best_metric)
        if aside is not None:
            logger.info(f"Moved the later timeline's checkpoints and models to {aside}")
        truncate_metrics(output_dir / METRICS_FILE, point.step)
        logger.info(f"Resumed from {point.checkpoint} at step {point.step} (epoch {point.epoch}, batch "
                    f"{point.skip_batches})")  # fmt: skip
        if streaming and point.skip_batches:
            logger.info(
                f"The stream is read again from the start of epoch {point.epoch} and its first {point.skip_batches} "
                "batches skipped: its order is fixed by (seed, epoch) and --num_workers, so the run continues with "
                "the same samples if --num_workers is unchanged"
            )
        if point.describe_length(max_train_steps):
            logger.info(point.describe_length(max_train_steps))
    accelerator.wait_for_everyone()
    if (output_dir / "best").is_dir():
        return BestModel(best_metric, point.best_score, point.best_step)
    return BestModel(best_metric)


def set_aside_later_timeline(output_dir: Path, point: ResumePoint, best_metric: str) -> Path | None:
    """A run resumed from an earlier checkpoint starts a new timeline at its step: the old timeline's later
    checkpoints, its final/ (and final_ema/) and a best/ chosen after that step are moved into
    checkpoints/abandoned_after_step_N/, where `latest` never finds them and nothing overwrites them. Returns that
    folder, or None when there was nothing later. Called on the main process, once the resume is accepted."""
    later = [path for path in list_checkpoints(output_dir) if _step_of(path) > point.step]
    finished_later = (output_dir / "final").is_dir() and point.step < point.planned_steps
    if finished_later:
        later += [output_dir / name for name in ("final", "final_ema") if (output_dir / name).is_dir()]
    if (output_dir / "best").is_dir() and _best_chosen_after(output_dir / METRICS_FILE, point, best_metric):
        later.append(output_dir / "best")
    if not later:
        return None
    aside = output_dir / "checkpoints" / ABANDONED.format(step=point.step)
    if aside.exists():  # an earlier abandoned timeline from the same step: kept apart from this one
        aside = aside.with_name(f"{aside.name}_{sum(1 for _ in aside.parent.glob(aside.name + '*'))}")
    aside.mkdir(parents=True)
    for path in later:
        shutil.move(str(path), str(aside / path.name))
    return aside


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step_"))


def _best_chosen_after(metrics_path: Path, point: ResumePoint, best_metric: str) -> bool:
    """Whether an evaluation after the checkpoint's step beat its best score, so that best/ holds a later model."""
    if not metrics_path.is_file():
        return False
    best = point.best_score if point.best_score is not None else -math.inf
    return any(
        event.get("event") == EVAL_EVENT and event.get("step", 0) > point.step and event.get(best_metric, -1) > best
        for event in read_metrics(metrics_path)
    )
