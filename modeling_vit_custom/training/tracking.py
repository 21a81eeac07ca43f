"""What the training loop carries from step to step besides the weights: the best evaluation so far, the losses not
yet checked for being finite, the log since the last log line, and the images counted."""

import logging
import time
from pathlib import Path

import torch

from ..data.decoding import check_bad_images
from .run_log import TRAIN_EVENT

logger = logging.getLogger(__name__)


class BestModel:
    """The best value of `metric` so far and its step (None before the first evaluation); `improves` records a
    better one."""

    def __init__(self, metric: str, score: float | None = None, step: int | None = None):
        self.metric, self.score, self.step = metric, score, step

    def improves(self, result: dict, step: int) -> bool:
        if self.score is not None and not result[self.metric] > self.score:
            return False
        self.score, self.step = result[self.metric], step
        return True


class FiniteLossGuard:
    """Collects each optimizer step's loss as a finiteness flag on the device (no host sync per step); `check`
    stops every rank at once, naming the first non-finite step, before anything is saved or logged, so that no
    non-finite step reaches disk."""

    def __init__(self, accelerator, checkpoints: Path):
        self.accelerator, self.checkpoints, self.pending = accelerator, checkpoints, []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(torch.isfinite(loss))

    def check(self, step: int) -> None:
        """`step`: the step of the last loss added. A collective: every rank calls it at the same steps."""
        if not self.pending:
            return
        finite = self.accelerator.reduce(torch.stack(self.pending).float(), "sum").cpu()
        self.pending, bad = [], (finite < self.accelerator.num_processes).nonzero()
        if len(bad):
            raise FloatingPointError(
                f"Non-finite loss at step {step - len(finite) + 1 + int(bad[0])}; stopping. The last checkpoint in "
                f"{self.checkpoints} is intact: lower --learning_rate or raise --num_warmup_steps"
            )


class StepLog:
    """The training log between two log lines: images counted per micro-batch, losses per optimizer step; `write`
    records one `train` event (the loss averaged over the steps and the processes, the rate, images per second and,
    where the device's peak is known, the model FLOPs utilisation) and starts the next interval."""

    def __init__(self, accelerator, metrics, epoch_steps: int, flops_per_image: float, device_peak: float | None):
        self.accelerator, self.metrics, self.epoch_steps = accelerator, metrics, epoch_steps
        self.flops_per_image, self.device_peak = flops_per_image, device_peak
        self.losses, self.images, self.start = [], 0, time.perf_counter()

    def add_images(self, count: int) -> None:
        self.images += count

    def add_loss(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def write(self, step: int, lr: float) -> dict:
        images_per_second = self.images / (time.perf_counter() - self.start)
        loss = self.accelerator.reduce(torch.stack(self.losses).mean(), "mean").item()
        values = {"loss": loss, "lr": lr, "images_per_second": images_per_second}
        if self.device_peak:
            peak = self.device_peak * self.accelerator.num_processes
            values["mfu"] = 3 * self.flops_per_image * images_per_second / peak
        self.metrics.write(TRAIN_EVENT, step=step, epoch=step / self.epoch_steps, **values)
        self.accelerator.log(values, step=step)
        self.losses, self.images, self.start = [], 0, time.perf_counter()
        return values


class ImageCounts:
    """The images this run trained on, over every process, and this epoch's unreadable ones (replaced by the loaders)
    among those this process read; `end_epoch` sums the epoch's over the processes, warns, and stops the run above
    --max_bad_image_fraction. A collective: every rank calls `end_epoch` at the same epochs."""

    def __init__(self, accelerator, max_bad_fraction: float):
        self.accelerator, self.max_bad_fraction = accelerator, max_bad_fraction
        self.images, self.bad, self.seen = 0, 0, 0

    def add(self, batch_size: int, replaced: int) -> None:
        self.images += batch_size * self.accelerator.num_processes
        self.bad, self.seen = self.bad + replaced, self.seen + batch_size

    def end_epoch(self, epoch: int) -> None:
        device = self.accelerator.device
        bad, seen = (int(self.accelerator.reduce(torch.tensor(count, device=device), "sum"))
                     for count in (self.bad, self.seen))  # fmt: skip
        if bad:
            logger.warning(f"Epoch {epoch}: replaced {bad} unreadable images of {seen}")
        check_bad_images(bad, seen, self.max_bad_fraction)
        self.bad = self.seen = 0
