"""Small datasets decoded once into uint8 tensors held in memory (on the GPU when training on one) and augmented a
whole batch at a time there, so the training loop runs at the model's speed."""

import io
import logging
import random
from dataclasses import dataclass

import psutil
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from ..image_processing import PreprocessSettings
from .decoding import IMAGE_ERRORS, ImageClassificationDataset, check_bad_images, collate, undecoded
from .sampling import EpochSampler, sample_seed
from .transforms import TENSOR_INTERPOLATIONS, ConvertImage, EvalTransform, build_train_transform

logger = logging.getLogger(__name__)

# Augmentations that need a PIL image per sample: they keep the DataLoader-worker path.
PIL_ONLY_AUGMENTATIONS = ("randaugment", "color_jitter")
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


def common_image_size(hf_split) -> tuple[tuple[int, int] | None, str]:
    """The (width, height) that every image of a split shares, read from the file headers (no pixel is decoded), or
    None and the first two sizes that differ; the scan stops there. Undecodable files are left to the decoding."""
    size, first = None, None
    for row, encoded in enumerate(undecoded(hf_split)["image"]):
        try:
            source = io.BytesIO(encoded["bytes"]) if encoded.get("bytes") is not None else encoded["path"]
            with Image.open(source) as image:
                here = image.size
        except IMAGE_ERRORS:
            continue
        if size is None:
            size, first = here, row
        elif here != size:
            return None, f"{size[0]}x{size[1]} (row {first}) and {here[0]}x{here[1]} (row {row})"
    return size, "" if size is None else f"{size[0]}x{size[1]}"


def plan_in_memory(data_args, aug_args, splits, settings: PreprocessSettings, device) -> InMemoryPlan:
    """Decide `--data_in_memory auto|true|false` for `splits` at `settings`' size.

    The training images are kept whole at their own resolution, so that the crops are drawn on the original image as
    in the workers; they must share one size (read from the file headers). Evaluation keeps its centre crop at
    image_size, as in the workers. "auto" takes the path when the flags allow it (`in_memory_refusal`), the
    interpolation is one that tensors resize (bilinear, bicubic), the training images share one size and the cache
    fits both `--data_in_memory_max_gb` and half the free memory of `device`; "true" raises ValueError saying which
    of these fails (before anything is decoded)."""
    mode = data_args.data_in_memory
    if mode == "false":
        return InMemoryPlan(False, 0, "--data_in_memory false")
    check_in_memory_flags(data_args, aug_args)
    refusal, cache_bytes, size = in_memory_refusal(data_args, aug_args), 0, ""
    if refusal is None and settings.interpolation not in TENSOR_INTERPOLATIONS:
        refusal = (
            f"--interpolation {settings.interpolation}: the workers resize with Pillow's filter, the in-memory path "
            f"resizes tensors ({', '.join(TENSOR_INTERPOLATIONS)})"
        )
    if refusal is None:
        train_size, sizes = common_image_size(splits.train)
        if train_size is None:
            refusal = (
                f"the training images are of more than one size ({sizes}): the in-memory path keeps them whole, at "
                "their own resolution, in one tensor"
            )
    if refusal is None:
        channels, side = settings.num_channels, settings.image_size
        num_train, num_eval = len(splits.train), len(splits.validation)
        cache_bytes = channels * (num_train * train_size[0] * train_size[1] + num_eval * side * side)
        size = (
            f"{num_train:,} training images of {sizes} and {num_eval:,} evaluation images of {side}x{side} need "
            f"{cache_bytes / GIB:.2f} GiB"
        )
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
    hf_split, transform, max_bad_fraction: float, num_workers: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a split decoded once through `transform` (to a (C, H, W) uint8 tensor of one shape for all),
    undecodable images replaced by the next good one, counted and checked against `max_bad_fraction`, as the worker
    path decodes them -> (N, C, H, W) uint8 images and the labels as `collate` gives them ((N,) class indices, or
    (N, num_classes) multi-hot) on `device`."""
    dataset = ImageClassificationDataset(hf_split, transform, max_bad_fraction)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=collate)
    images, labels, start, replaced = None, [], 0, 0
    for batch in loader:
        end = start + len(batch["labels"])
        if images is None:
            images = torch.empty(len(dataset), *batch["pixel_values"].shape[1:], dtype=torch.uint8)
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


def crop_and_flip(settings: PreprocessSettings, aug_args) -> tuple[RandomResizedCropAndInterpolation, float]:
    """The random resized crop and the flip probability of the worker path's training transform (the very objects
    `build_train_transform` builds, so both paths crop with the same scale, ratio, size and interpolation)."""
    crop, hflip = None, 0.0
    for op in build_train_transform(settings, aug_args).transforms[-1].transforms:
        if isinstance(op, RandomResizedCropAndInterpolation):
            crop = op
        elif isinstance(op, T.RandomHorizontalFlip):
            hflip = op.p
    return crop, hflip


class AugmentedImages(DecodedImages):
    """
    Decoded training images at their own resolution (N, C, H, W), augmented a batch at a time: keys (epoch, index[,
    copy]) from `EpochSampler` -> one batch {"pixel_values": (B, C, S, S) uint8, "labels", "replaced": 0}.

    Each sample draws what the worker path draws for it under the same seed (`sampling.sample_seed`): the crop box
    from timm's `RandomResizedCropAndInterpolation.get_params` on the whole original image with Python's `random`
    seeded, then the flip as torchvision's `RandomHorizontalFlip` draws it, `torch.rand(1) < hflip` from a generator
    seeded alike. So both paths take the same boxes of the same images and flip the same samples; the box is resized
    to S x S with the crop's interpolation by torch's antialiased kernel (within an intensity level or two of
    Pillow's). A batch whose boxes are all whole S x S images is not resampled at all.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        crop: RandomResizedCropAndInterpolation,
        hflip: float = 0.5,
    ):
        super().__init__(images, labels)
        self.seed, self.crop, self.hflip = seed, crop, hflip
        self.generator = torch.Generator()

    def __getitems__(self, keys: list[tuple[int, ...]]) -> dict:
        indices = [key[1] for key in keys]
        draws = self.draw(keys)
        batch = super().__getitems__(indices)
        height, width = self.images.shape[-2:]
        size = list(self.crop.size)
        if any(box != (0, 0, height, width) for box, _ in draws) or [height, width] != size:
            pixels = torch.stack(
                [
                    F.resized_crop(self.images[i], *box, size, interpolation=self.crop.interpolation, antialias=True)
                    for i, (box, _) in zip(indices, draws, strict=True)
                ]
            )
        else:
            pixels = batch["pixel_values"]
        flip = torch.tensor([flipped for _, flipped in draws], device=pixels.device).view(-1, 1, 1, 1)
        batch["pixel_values"] = torch.where(flip, pixels.flip(-1), pixels)
        return batch

    def draw(self, keys: list[tuple[int, ...]]) -> list[tuple[tuple[int, int, int, int], bool]]:
        """Each key's crop box (top, left, height, width) in the original image's pixels and its flip. Python's global
        `random`, which timm's get_params draws from, is put back afterwards."""
        state = random.getstate()
        draws = []
        try:
            for key in keys:
                seed = sample_seed(self.seed, key)
                random.seed(seed)
                box = self.crop.get_params(self.images[key[1]], self.crop.scale, self.crop.ratio)
                flipped = self.hflip > 0 and bool(
                    torch.rand(1, generator=self.generator.manual_seed(seed)) < self.hflip
                )
                draws.append((box, flipped))
        finally:
            random.setstate(state)
        return draws


def batch_collate(batch: dict) -> dict:
    """The collate of a dataset whose `__getitems__` already returns the batch."""
    return batch


def build_in_memory_loaders(splits, settings, aug_args, data_args, args, num_processes: int, device):
    """(train DataLoader, eval DataLoader, the sampler that takes set_epoch) over decoded splits held on `device`; the
    train order is `EpochSampler`'s, as on the worker path, so resuming and repeated augmentation work the same."""
    max_bad = data_args.max_bad_image_fraction
    # The whole image at its own resolution is kept for training (its random crops); evaluation keeps its centre crop.
    whole = T.Compose([ConvertImage(settings.num_channels), T.PILToTensor()])
    train_images, train_labels = decode_all(splits.train, whole, max_bad, args.num_workers, device)
    eval_images, eval_labels = decode_all(
        splits.validation, EvalTransform(settings), max_bad, args.num_workers, device
    )
    sampler = EpochSampler.for_training(len(train_labels), args, aug_args, num_processes)
    train = AugmentedImages(train_images, train_labels, args.seed, *crop_and_flip(settings, aug_args))
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
