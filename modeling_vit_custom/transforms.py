"""Training and evaluation transforms built from the model's preprocessing settings (timm's), and mixup/cutmix."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment, posterize
from timm.data.mixup import mixup_target
from torchvision import transforms as T

from .image_processing import INTERPOLATIONS, PreprocessSettings

# A JPEG is decoded at a reduced DCT scale only down to twice the resize size, so the bicubic filter, not the DCT
# scaling, does most of the downsampling (the reducing_gap that Pillow's thumbnail() uses).
DRAFT_MARGIN = 2.0


@dataclass
class AugmentArguments:
    """Training augmentation (timm's `create_transform` and `Mixup`); every piece is off at 0 / None / ""."""

    # A list so that it parses as a command-line flag (`--train_crop_scale 0.08 1.0`); stored as a tuple.
    train_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    # timm ignores color jitter when RandAugment is on, as DeiT does.
    color_jitter: float | None = None
    random_erasing: float = 0.25
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        self.train_crop_scale = tuple(float(s) for s in self.train_crop_scale)
        low_high = self.train_crop_scale
        if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] <= 1.0:
            raise ValueError(f"train_crop_scale: expected (low, high) with 0 < low <= high <= 1, got {low_high}")
        for name in ("hflip", "random_erasing", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name}: expected a non-negative Beta alpha (0 disables), got {getattr(self, name)!r}"
                )
        if self.randaugment and not self.randaugment.startswith("rand"):
            raise ValueError(
                f"randaugment: expected a timm RandAugment string such as 'rand-m9-mstd0.5-inc1', got "
                f"{self.randaugment!r}"
            )


def _image_mode(num_channels: int) -> str:
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: expected 1 or 3, got {num_channels}")
    return "L" if num_channels == 1 else "RGB"


def _check_settings(settings: PreprocessSettings, num_channels: int) -> None:
    if len(settings.mean) != num_channels:
        raise ValueError(
            f"PreprocessSettings.mean/std: expected {num_channels} values (the model's num_channels), "
            f"got {len(settings.mean)}"
        )


def convert_image(image: Image.Image, mode: str) -> Image.Image:
    """Decode and convert to `mode` ("RGB" or "L"): ImageNet holds CMYK, grayscale and palette images."""
    if image.mode == mode:
        image.load()
        return image
    if image.mode == "P":
        # Pillow asks for palette transparency to go through RGBA; the alpha is then dropped like any other.
        image = image.convert("RGBA")
    return image.convert(mode)


class ConvertImage:
    """PIL image of any mode -> PIL image in "RGB" (3 channels) or "L" (1 channel)."""

    def __init__(self, num_channels: int):
        self.mode = _image_mode(num_channels)

    def __call__(self, image: Image.Image) -> Image.Image:
        return convert_image(image, self.mode)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mode={self.mode!r})"


class EvalTransform:
    """
    timm's evaluation transform: PIL image (any mode, any size) -> (C, S, S) float tensor, normalized.

    The short side is resized to floor(S / crop_pct) and the center S x S is cropped, as
    `timm.data.create_transform(is_training=False, ...)` does. With `exact=True` the result is bit-identical to timm's.
    By default two steps are cheaper: only the box that survives the crop is resized (Pillow's `resize(box=...)` keeps
    the full image's filter taps; float rounding moves up to ~0.3% of the values by one intensity level), and a JPEG at
    least 2 * DRAFT_MARGIN times the resize size is decoded at a reduced DCT scale (1/2, 1/4, 1/8).
    """

    def __init__(self, settings: PreprocessSettings, num_channels: int, exact: bool = False):
        _check_settings(settings, num_channels)
        self.mode = _image_mode(num_channels)
        self.size = settings.image_size
        self.scale_size = math.floor(settings.image_size / settings.crop_pct)
        self.resample = INTERPOLATIONS[settings.interpolation]
        self.mean = torch.tensor(settings.mean).view(-1, 1, 1)
        self.std = torch.tensor(settings.std).view(-1, 1, 1)
        self.exact = exact

    def resize_and_crop_geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(resized width, height) and (left, top) of the crop, with torchvision's Resize and CenterCrop rounding."""
        if width <= height:
            new_width, new_height = self.scale_size, int(self.scale_size * height / width)
        else:
            new_width, new_height = int(self.scale_size * width / height), self.scale_size
        left = int(round((new_width - self.size) / 2.0))
        top = int(round((new_height - self.size) / 2.0))
        return (new_width, new_height), (left, top)

    def prepare(self, image: Image.Image) -> None:
        """Before decoding: ask Pillow to decode a large JPEG at a reduced scale (no effect once loaded)."""
        if not self.exact and image.format == "JPEG":
            width, height = image.size
            factor = DRAFT_MARGIN * self.scale_size / min(width, height)
            image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.prepare(image)
        image = convert_image(image, self.mode)
        width, height = image.size
        (new_width, new_height), (left, top) = self.resize_and_crop_geometry(width, height)
        if self.exact:
            image = image.resize((new_width, new_height), self.resample)
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            scale_x, scale_y = width / new_width, height / new_height
            box = (left * scale_x, top * scale_y, (left + self.size) * scale_x, (top + self.size) * scale_y)
            image = image.resize((self.size, self.size), self.resample, box=box)
        return self.to_tensor(image)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        # The same operations as ToTensor + Normalize, so the result is bit-identical to timm's.
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        pixels = pixels.unsqueeze(-1) if pixels.ndim == 2 else pixels
        tensor = pixels.permute(2, 0, 1).contiguous().float().div(255)
        return tensor.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(size={self.size}, scale_size={self.scale_size}, mode={self.mode!r}, "
            f"resample={self.resample.name}, exact={self.exact})"
        )


def build_eval_transform(
    settings: PreprocessSettings, num_channels: int, exact: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, S, S) tensor: timm's eval transform for the same settings (see `EvalTransform`)."""
    return EvalTransform(settings, num_channels, exact=exact)


def build_timm_eval_transform(
    settings: PreprocessSettings, num_channels: int
) -> Callable[[Image.Image], torch.Tensor]:
    """The reference: timm's own eval transform after the mode conversion (slower, used by tests and benchmarks)."""
    _check_settings(settings, num_channels)
    timm_transform = create_transform(
        input_size=(num_channels, settings.image_size, settings.image_size),
        is_training=False,
        interpolation=settings.interpolation,
        mean=settings.mean,
        std=settings.std,
        crop_pct=settings.crop_pct,
    )
    return T.Compose([ConvertImage(num_channels), timm_transform])


def build_train_transform(
    settings: PreprocessSettings, num_channels: int, aug: AugmentArguments
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, S, S) tensor: timm's RandomResizedCrop, flip, RandAugment, color jitter, random erasing."""
    _check_settings(settings, num_channels)
    timm_transform = create_transform(
        input_size=(num_channels, settings.image_size, settings.image_size),
        is_training=True,
        scale=aug.train_crop_scale,
        hflip=aug.hflip,
        auto_augment=aug.randaugment or None,
        color_jitter=aug.color_jitter,
        interpolation=settings.interpolation,
        mean=settings.mean,
        std=settings.std,
        re_prob=aug.random_erasing,
        # Per-pixel normal noise, as DeiT erases.
        re_mode="pixel",
    )
    for op in timm_transform.transforms:
        if isinstance(op, RandAugment):
            for augment_op in op.ops:
                if augment_op.name.startswith("Posterize"):
                    augment_op.aug_fn = _posterize
    return T.Compose([ConvertImage(num_channels), timm_transform])


def _posterize(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, where keeping 0 bits (PosterizeIncreasing at magnitude 10, which "mstd0.5" samples) gives a
    black image as Pillow used to, instead of the ValueError Pillow 13 raises for bits outside 1..8."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return posterize(image, bits_to_keep, **kwargs)


def build_mixup(aug: AugmentArguments, num_classes: int) -> Mixup | None:
    """timm's batch Mixup/CutMix with label smoothing, or None when both alphas are 0.

    It returns soft targets (B, num_classes), which the model's loss takes, and needs an even batch size (drop the
    last batch). Label smoothing without mixing is `smooth_labels`.
    """
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        label_smoothing=aug.label_smoothing,
        num_classes=num_classes,
    )


def smooth_labels(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices (B,) -> smoothed one-hot targets (B, num_classes), as timm's Mixup computes them."""
    return mixup_target(labels, num_classes, lam=1.0, smoothing=smoothing)
