"""The training order and the per-sample randomness that make any epoch replayable from any batch."""

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def sample_seed(seed: int, key: tuple[int, ...]) -> int:
    """The seed of one sample's augmentation: `key` is (epoch, index) or, for a repeated image, (epoch, index, copy),
    each copy its own augmentation. Python hashes tuples of ints the same in every process and run."""
    return hash((seed, *key)) % 2**32


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) in a permutation fixed by (seed, epoch), so any epoch can be replayed from any batch.

    The epoch travels with each index to the workers, where `SeededSamples` seeds the augmentation of that sample:
    with persistent workers there is no other way for them to know the epoch.

    With `repeats` > 1 it is DeiT's repeated augmentation (`RASampler` in DeiT's samplers.py): each image of the
    permutation is taken `repeats` times in a row, the list is dealt out to the `num_replicas` processes in turn (so
    the copies of an image go to different processes, each augmenting its own), and every process keeps
    num_samples // num_replicas of its share: an epoch has as many samples as without repetition. Items are then
    (epoch, index, copy), each copy augmented differently, and the order is laid out batch by batch as accelerate
    deals batches to processes (batch k of process r is the global batch k * num_replicas + r).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        repeats: int = 1,
        num_replicas: int = 1,
        batch_size: int = 1,
    ):
        if repeats < 1:
            raise ValueError(f"repeats: expected a positive integer, got {repeats}")
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0
        self.repeats, self.num_replicas, self.batch_size = repeats, num_replicas, batch_size

    @classmethod
    def for_training(cls, num_samples: int, args, aug_args, num_processes: int) -> "EpochSampler":
        """The training order of a run: its seed, repeated augmentation, process count and per-process batch."""
        return cls(
            num_samples,
            seed=args.seed,
            repeats=aug_args.repeated_augmentation,
            num_replicas=num_processes,
            batch_size=args.per_device_train_batch_size,
        )

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        if self.repeats == 1:
            return self.num_samples
        per_replica = self.num_samples // self.num_replicas // self.batch_size * self.batch_size
        return per_replica * self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.repeats == 1:
            return ((self.epoch, i) for i in order)
        repeated = [(self.epoch, i, copy) for i in order for copy in range(self.repeats)]
        shares = [repeated[r :: self.num_replicas] for r in range(self.num_replicas)]
        per_replica, size = len(self) // self.num_replicas, self.batch_size
        return (
            item for start in range(0, per_replica, size) for share in shares for item in share[start : start + size]
        )


class SeededSamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by (epoch, index) whose random augmentation is a function of (seed, epoch, index),
    so that a resumed run sees exactly the samples of an uninterrupted one, whatever the worker layout."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        with self._seeded(key):
            return self.dataset[key[1]]

    def __getitems__(self, keys: list[tuple[int, ...]]) -> list[dict]:
        """A batch, from one Arrow read where the dataset offers one (`ImageClassificationDataset.items`), each sample
        augmented under its seed."""
        indices = [key[1] for key in keys]
        items = (
            self.dataset.items(indices) if hasattr(self.dataset, "items") else map(self.dataset.__getitem__, indices)
        )
        batch = []
        for key in keys:
            with self._seeded(key):
                batch.append(next(items))
        return batch

    @contextmanager
    def _seeded(self, key: tuple[int, ...]):
        seed = sample_seed(self.seed, key)
        # timm's transforms draw from all three generators. In the training process (num_workers=0, where the loader
        # prefetches a batch ahead of the step) their global states are put back afterwards, so that the dropout /
        # mixup randomness a checkpoint restores is not shifted; a worker process has no other use for them.
        in_worker = torch.utils.data.get_worker_info() is not None
        states = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds CUDA: 100x slower
        try:
            yield
        finally:
            if states is not None:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])
