"""Train and eval DataLoaders: decoding in workers (map-style and streaming splits), or from a decoded in-memory
copy of a small dataset."""

import logging

import torch

from ..image_processing import PreprocessSettings
from .decoding import ImageClassificationDataset, StreamingImageClassificationDataset, collate
from .in_memory import AugmentedImages, build_in_memory_loaders, plan_in_memory
from .sampling import EpochSampler, SeededSamples
from .transforms import EvalTransform, build_train_transform

logger = logging.getLogger(__name__)


def build_dataloaders(
    splits,
    settings: PreprocessSettings,
    aug_args,
    data_args,
    args,
    process_index: int = 0,
    num_processes: int = 1,
    device: str | torch.device = "cpu",
):
    """Train and eval DataLoaders for this process of `num_processes`, over a decoded copy held on `device` when
    `--data_in_memory` chooses it (`in_memory.plan_in_memory`), else decoding in workers; returns (train, eval, the
    object that takes set_epoch)."""
    if not data_args.streaming:
        plan = plan_in_memory(data_args, aug_args, splits, settings, device)
        logger.info("Data %s: %s", "decoded once into memory" if plan.use else "decoded in workers", plan.reason)
        if plan.use:
            return build_in_memory_loaders(splits, settings, aug_args, data_args, args, num_processes, device)
    train_transform = build_train_transform(settings, aug_args)
    eval_transform = EvalTransform(settings)
    workers = args.num_workers
    common = {
        "num_workers": workers,
        "collate_fn": collate,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
        "prefetch_factor": 4 if workers else None,
    }
    max_bad = data_args.max_bad_image_fraction
    if data_args.streaming:
        if aug_args.repeated_augmentation > 1:
            raise ValueError(
                "--repeated_augmentation with --streaming: expected a map-style dataset (the repeats are dealt out "
                "from a permutation of the whole split), got a stream"
            )
        rank, world = process_index, num_processes
        train = StreamingImageClassificationDataset(
            splits.train, train_transform, rank=rank, world_size=world, seed=args.seed, max_bad_fraction=max_bad
        )
        train.check_workers(workers)
        evaluation = StreamingImageClassificationDataset(
            splits.validation, eval_transform, rank=rank, world_size=world, shuffle=False, max_bad_fraction=max_bad
        )
        train_loader = torch.utils.data.DataLoader(
            train, batch_size=args.per_device_train_batch_size, drop_last=True, **common
        )
        epoch_source = train
    else:
        train = ImageClassificationDataset(splits.train, train_transform, max_bad_fraction=max_bad)
        evaluation = ImageClassificationDataset(splits.validation, eval_transform, max_bad_fraction=max_bad)
        epoch_source = EpochSampler.for_training(len(train), args, aug_args, num_processes)
        train_loader = torch.utils.data.DataLoader(
            SeededSamples(train, args.seed),
            batch_size=args.per_device_train_batch_size,
            sampler=epoch_source,
            drop_last=True,  # mixup and cutmix pair samples within a batch, and an odd last batch cannot be paired
            # Worker seeds come from this generator, not from the global RNG that dropout and mixup use.
            generator=torch.Generator().manual_seed(args.seed),
            **common,
        )
    eval_loader = torch.utils.data.DataLoader(evaluation, batch_size=args.per_device_eval_batch_size, **common)
    return train_loader, eval_loader, epoch_source


def batches_per_epoch(train_loader, splits, data_args, args, num_processes: int) -> int:
    """Per-process training batches in an epoch; refuses a split too small for one batch, and a stream whose length
    is unknown where epochs must be counted."""
    if not data_args.streaming:
        num_batches = len(train_loader)
    elif splits.train_size is not None:
        # Every process reads the same number of batches from its shards, so that their collectives pair up.
        num_batches = splits.train_size // (args.per_device_train_batch_size * num_processes)
    elif not args.max_train_steps or args.warmup_epochs:
        raise ValueError(
            "--streaming from a source that does not record its length: epochs cannot be counted, so expected "
            f"--max_train_steps and no --warmup_epochs, got max_train_steps={args.max_train_steps}, "
            f"warmup_epochs={args.warmup_epochs}; or stream parquet files (--train_file), whose footers record "
            "their length, or a dataset saved with save_to_disk (--dataset_path)"
        )
    else:  # one pass of max_train_steps
        num_batches = args.max_train_steps * args.gradient_accumulation_steps
    if num_batches == 0:
        raise ValueError(
            f"--per_device_train_batch_size {args.per_device_train_batch_size}: the training split has too few "
            f"samples for one batch on each of {num_processes} processes; lower the batch size"
        )
    return num_batches


def data_path(train_loader, streaming: bool) -> str:
    """How the training images reach the model, as the run records it: "stream", "memory" (decoded once, augmented
    in batches) or "workers" (decoded and augmented per sample in DataLoader workers)."""
    if streaming:
        return "stream"
    return "memory" if isinstance(train_loader.dataset, AugmentedImages) else "workers"
