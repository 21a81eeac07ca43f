"""Small datasets decoded once into uint8 tensors held in memory (on the GPU when training on one) and augmented a
whole batch at a time there, so the training loop runs at the model's speed."""

import logging
import math
import random
from dataclasses import dataclass, replace

import psutil
import torch
from torchvision.ops import roi_align

from ..image_processing import PreprocessSettings
from .decoding import ImageClassificationDataset, check_bad_images, collate
from .sampling import EpochSampler, sample_seed
from .transforms import EvalTransform

logger = logging.getLogger(__name__)

# Augmentations that need a PIL image per sample: they keep the DataLoader-worker path.
PIL_ONLY_AUGMENTATIONS = ("randaugment", "color_jitter")
# timm's and torchvision's RandomResizedCrop: aspect ratios and the number of tries before the center crop.
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# The share of the free memory a cache may take (the rest is for the model, its activations and the loaders).
MEMORY_SHARE = 0.5
GIB = 2**30


@dataclass
class InMemoryPlan:
    """Whether the in-memory path is taken, the bytes its cache needs and why."""

    use: bool
    cache_bytes: int
    reason: str


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def in_memory_refusal(data_args, aug_args) -> str | None:
    """Why the flags rule the in-memory path out, or None."""
    if data_args.streaming:
        return "--streaming reads the data as it trains; the in-memory path decodes a map-style dataset first"
    for name in PIL_ONLY_AUGMENTATIONS:
        if getattr(aug_args, name):
            return f"--{name} {getattr(aug_args, name)!r} works on PIL images one at a time, in the DataLoader workers"
    return None


def check_in_memory_flags(data_args, aug_args) -> None:
    """Refuse `--data_in_memory true` with flags it cannot serve, before any data is read."""
    refusal = in_memory_refusal(data_args, aug_args)
    if data_args.data_in_memory == "true" and refusal is not None:
        raise ValueError(f"--data_in_memory true: {refusal}")


def plan_in_memory(data_args, aug_args, num_images: int, settings: PreprocessSettings, device) -> InMemoryPlan:
    """Decide `--data_in_memory auto|true|false` for `num_images` (train + eval) images of `settings`' size.

    "auto" takes the path when the flags allow it (`in_memory_refusal`) and the cache fits both
    `--data_in_memory_max_gb` and half the free memory of `device`; "true" raises ValueError, naming the size the
    cache would need, when it does not fit the memory (before anything is decoded)."""
    image_bytes = settings.num_channels * settings.image_size**2
    cache_bytes = num_images * image_bytes
    mode = data_args.data_in_memory
    if mode == "false":
        return InMemoryPlan(False, cache_bytes, "--data_in_memory false")
    check_in_memory_flags(data_args, aug_args)
    refusal = in_memory_refusal(data_args, aug_args)
    size = f"{num_images:,} images of {image_bytes:,} bytes need {cache_bytes / GIB:.2f} GiB"
    if refusal is None:
        available = free_memory_bytes(torch.device(device))
        if cache_bytes > MEMORY_SHARE * available:
            refusal = f"{size}, more than half of the {available / GIB:.1f} GiB free on {device}"
    if mode == "true":
        if refusal is not None:
            raise ValueError(f"--data_in_memory true: {refusal}")
        return InMemoryPlan(True, cache_bytes, f"{size}: --data_in_memory true")
    if refusal is not None:
        return InMemoryPlan(False, cache_bytes, refusal)
    if cache_bytes > data_args.data_in_memory_max_gb * GIB:
        max_gb = data_args.data_in_memory_max_gb
        return InMemoryPlan(False, cache_bytes, f"{size}, more than --data_in_memory_max_gb {max_gb:g}")
    return InMemoryPlan(True, cache_bytes, f"{size}, within --data_in_memory_max_gb")


def decode_all(
    hf_split, settings: PreprocessSettings, max_bad_fraction: float, num_workers: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a split decoded once, as the worker path decodes it (`EvalTransform`: the short side resized to
    image_size / crop_pct, the center crop kept; undecodable images replaced by the next good one, counted and
    checked against `max_bad_fraction`) -> (N, C, S, S) uint8 images and the labels as `collate` gives them ((N,)
    class indices, or (N, num_classes) multi-hot) on `device`."""
    dataset = ImageClassificationDataset(hf_split, EvalTransform(settings), max_bad_fraction)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=collate)
    images = torch.empty(
        len(dataset), settings.num_channels, settings.image_size, settings.image_size, dtype=torch.uint8
    )
    labels, start, replaced = [], 0, 0
    for batch in loader:
        end = start + len(batch["labels"])
        images[start:end] = batch["pixel_values"]
        labels.append(batch["labels"])
        replaced, start = replaced + batch["replaced"], end
    if replaced:
        logger.warning("Replaced %d undecodable images of %d", replaced, len(dataset))
    check_bad_images(replaced, len(dataset), max_bad_fraction)
    return images.to(device), torch.cat(labels).to(device)


class DecodedImages(torch.utils.data.Dataset):
    """Decoded images held as one tensor; a list of indices -> one batch {"pixel_values": (B, C, S, S) uint8,
    "labels": (B,), "replaced": 0}, sliced at once (with `batch_collate`, a DataLoader batch is one indexing)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> dict:
        index = torch.tensor(indices, device=self.images.device)
        return {"pixel_values": self.images[index], "labels": self.labels[index], "replaced": 0}


class AugmentedImages(DecodedImages):
    """
    Decoded training images, augmented a batch at a time: keys (epoch, index[, copy]) from `EpochSampler` -> one
    batch as `DecodedImages` gives it.

    Each sample's crop (timm's RandomResizedCrop parameters: a box of `scale` of the area and aspect ratio in 3/4..4/3,
    else the center crop) and horizontal flip are drawn from its own generator seeded by (seed, epoch, index[, copy]),
    as the worker path seeds each sample, so an epoch replays identically from any batch. The crops of the whole
    batch are then resampled in one bilinear `roi_align` on the images' device and the flips applied with one
    `torch.where`; a batch of whole-image crops is not resampled at all. The crop is taken from the stored image, the
    center crop that evaluation uses (all of the image at crop_pct 1.0).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int, crop_scale=(0.08, 1.0), hflip=0.5):
        super().__init__(images, labels)
        self.seed, self.crop_scale, self.hflip = seed, tuple(crop_scale), hflip

    def __getitems__(self, keys: list[tuple[int, ...]]) -> dict:
        size = self.images.shape[-1]
        boxes, flips = zip(*(self._draw(key, size) for key in keys), strict=True)
        batch = super().__getitems__([key[1] for key in keys])
        pixels = batch["pixel_values"]
        device = pixels.device
        if any(box != (0, 0, size, size) for box in boxes):
            rois = torch.tensor([(i, *box) for i, box in enumerate(boxes)], dtype=torch.float32, device=device)
            resampled = roi_align(pixels.float(), rois, output_size=size, sampling_ratio=0, aligned=True)
            pixels = resampled.round_().clamp_(0, 255).to(torch.uint8)
        flip = torch.tensor(flips, device=device).view(-1, 1, 1, 1)
        batch["pixel_values"] = torch.where(flip, pixels.flip(-1), pixels)
        return batch

    def _draw(self, key: tuple[int, ...], size: int) -> tuple[tuple[float, float, float, float], bool]:
        """Sample `key`'s crop box (x0, y0, x1, y1) in pixels and its flip."""
        rng = random.Random(sample_seed(self.seed, key))
        area = size * size
        box = (0, 0, size, size)
        if self.crop_scale != (1.0, 1.0):
            log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
            for _ in range(CROP_TRIES):
                target = area * rng.uniform(*self.crop_scale)
                ratio = math.exp(rng.uniform(*log_ratio))
                width, height = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
                if 0 < width <= size and 0 < height <= size:
                    x0, y0 = rng.randint(0, size - width), rng.randint(0, size - height)
                    box = (x0, y0, x0 + width, y0 + height)
                    break
        return box, rng.random() < self.hflip


def batch_collate(batch: dict) -> dict:
    """The collate of a dataset whose `__getitems__` already returns the batch."""
    return batch


def build_in_memory_loaders(splits, settings, aug_args, data_args, args, num_processes: int, device):
    """(train DataLoader, eval DataLoader, the sampler that takes set_epoch) over decoded splits held on `device`; the
    train order is `EpochSampler`'s, as on the worker path, so resuming and repeated augmentation work the same."""
    max_bad = data_args.max_bad_image_fraction
    # The whole image is kept for training (its random crops); evaluation keeps its center crop.
    train_images, train_labels = decode_all(
        splits.train, replace(settings, crop_pct=1.0), max_bad, args.num_workers, device
    )
    eval_images, eval_labels = decode_all(splits.validation, settings, max_bad, args.num_workers, device)
    sampler = EpochSampler.for_training(len(train_labels), args, aug_args, num_processes)
    train = AugmentedImages(train_images, train_labels, args.seed, aug_args.train_crop_scale, aug_args.hflip)
    train_loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=batch_collate,
        # The loader draws its base seed from this generator, not from the global RNG that erasing and mixup use.
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = torch.utils.data.DataLoader(
        DecodedImages(eval_images, eval_labels), batch_size=args.per_device_eval_batch_size, collate_fn=batch_collate
    )
    return train_loader, eval_loader, sampler
