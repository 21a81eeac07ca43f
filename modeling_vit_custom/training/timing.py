"""Where a training run's time goes: wall-clock seconds per phase of the loop, recorded in the run summary."""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# The phases of a step, then those outside the steps. "data" is the wait for the loader's next batch (with the
# in-memory path, its crops and flips); "augment" turns it into the model's input (normalization, erasing, mixup,
# smoothing). "compile" is, under --torch_compile, the forward and backward of the first training step and the first
# evaluation, which compile their graphs (and run once).
STEP_PHASES = ("data", "augment", "forward_backward", "optimizer", "logging")
PHASES = (*STEP_PHASES, "compile", "evaluation", "checkpoint")


class PhaseTimer:
    """Adds the wall-clock seconds of each `with timer("phase"):` block (and of each batch `iterate` waits for).

    On CPU the operations have finished when a block ends, so the split is exact. A GPU runs them asynchronously:
    with `synchronize` the device is synchronised at every boundary, which makes the split exact but costs the overlap
    of consecutive steps; without it, the time of a GPU operation lands in whichever phase first waits for it.
    """

    def __init__(self, device: torch.device, synchronize: bool = False):
        self.synchronize = synchronize and device.type == "cuda"
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def _now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        if phase not in self.seconds:
            raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
        start = self._now()
        try:
            yield
        finally:
            self.seconds[phase] += self._now() - start

    def iterate(self, batches: Iterable) -> Iterator:
        """The batches of `batches`, the wait for each counted as "data"."""
        iterator = iter(batches)
        while True:
            with self("data"):
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch

    def step_seconds(self) -> float:
        """The seconds spent in training steps (everything but compilation, evaluation and checkpoints)."""
        return sum(self.seconds[phase] for phase in STEP_PHASES)
