"""The training order and the per-sample randomness that make any epoch replayable from any batch."""

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) in a permutation fixed by (seed, epoch), so any epoch can be replayed from any batch.

    The epoch travels with each index to the workers, where `SeededSamples` seeds the augmentation of that sample:
    with persistent workers there is no other way for them to know the epoch.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        return ((self.epoch, i) for i in order)


class SeededSamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by (epoch, index) whose random augmentation is a function of (seed, epoch, index),
    so that a resumed run sees exactly the samples of an uninterrupted one, whatever the worker layout."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        with self._seeded(epoch, index):
            return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict]:
        """A batch, from one Arrow read where the dataset offers one (`ImageClassificationDataset.items`), each sample
        augmented under its seed."""
        indices = [index for _, index in keys]
        items = (
            self.dataset.items(indices) if hasattr(self.dataset, "items") else map(self.dataset.__getitem__, indices)
        )
        batch = []
        for epoch, index in keys:
            with self._seeded(epoch, index):
                batch.append(next(items))
        return batch

    @contextmanager
    def _seeded(self, epoch: int, index: int):
        sample_seed = hash((self.seed, epoch, index)) % 2**32
        # timm's transforms draw from all three generators. In the training process (num_workers=0, where the loader
        # prefetches a batch ahead of the step) their global states are put back afterwards, so that the dropout /
        # mixup randomness a checkpoint restores is not shifted; a worker process has no other use for them.
        in_worker = torch.utils.data.get_worker_info() is not None
        states = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.default_generator.manual_seed(sample_seed)  # torch.manual_seed also seeds CUDA: 100x slower
        try:
            yield
        finally:
            if states is not None:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])
