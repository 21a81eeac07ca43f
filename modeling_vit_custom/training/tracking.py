"""What the training loop carries from step to step besides the weights: the best evaluation so far, and the losses
not yet checked for being finite."""

from pathlib import Path

import torch


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
