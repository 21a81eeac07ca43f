"""Training and evaluation transforms built from the model's preprocessing settings (timm's), and mixup/cutmix."""

import io
import math
from collections.abc import Callable

import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment, posterize
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torchcodec.decoders import decode_jpeg
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from ..image_processing import PreprocessSettings
from .arguments import AugmentArguments

# A JPEG is decoded at a reduced DCT scale only down to twice the resize size, so the bicubic filter, not the DCT
# scaling, does most of the downsampling (the reducing_gap that Pillow's thumbnail() uses).
DRAFT_MARGIN = 2.0
# Interpolations that torch resizes natively on uint8 images (antialiased, SIMD); others go through Pillow.
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic")


def _image_mode(num_channels: int) -> str:
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: expected 1 or 3, got {num_channels}")
    return "L" if num_channels == 1 else "RGB"


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
    timm's evaluation transform up to normalization: image (any mode, any size) -> (C, S, S) uint8 tensor.

    The short side is resized to floor(S / crop_pct) and the center S x S is cropped, as
    `timm.data.create_transform(is_training=False, ...)` does; `Normalize` then turns a batch of these into the model's
    input on the batch's device. With `exact=True` decoding and resizing are Pillow's, as in timm, and the normalized
    result is bit-identical to timm's. By default three steps are cheaper. `decode` hands a JPEG from libjpeg straight
    to a uint8 tensor (TorchCodec's decoder: the same pixels as Pillow's, without Pillow's image and its copy into a
    tensor), or, when it is at least 2 * DRAFT_MARGIN times the resize size, decodes it at a reduced DCT scale (1/2,
    1/4, 1/8) with Pillow. A bilinear or bicubic resize runs on the uint8 tensor with torch's antialiased SIMD kernel
    (4x faster than Pillow's on one core, within one intensity level of it). The crop is a view, copied once into the
    batch.
    """

    def __init__(self, settings: PreprocessSettings, exact: bool = False):
        self.mode = _image_mode(settings.num_channels)
        self.size = settings.image_size
        self.scale_size = math.floor(settings.image_size / settings.crop_pct)
        self.interpolation = T.InterpolationMode(settings.interpolation)
        self.exact = exact
        self.resize_tensor = not exact and settings.interpolation in TENSOR_INTERPOLATIONS

    def _draft(self, image: Image.Image) -> bool:
        """Ask Pillow to decode a large JPEG at a reduced scale (no effect once loaded); True if it will."""
        if self.exact or image.format != "JPEG":
            return False
        width, height = image.size
        factor = DRAFT_MARGIN * self.scale_size / min(width, height)
        image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))
        return image.size != (width, height)

    def decode(self, data: bytes) -> Image.Image | torch.Tensor:
        """Encoded image -> a loaded PIL image, or a (C, H, W) uint8 tensor in the model's mode for a JPEG that libjpeg
        turns into the same pixels as Pillow's decoding and conversion (any JPEG for RGB, grayscale ones for L)."""
        image = Image.open(io.BytesIO(data))  # reads the header only
        if not self._draft(image) and self.resize_tensor and image.format == "JPEG":
            if self.mode == "RGB" or image.mode == "L":
                try:
                    return decode_jpeg(data, mode="RGB" if self.mode == "RGB" else "GRAY")
                except RuntimeError:
                    pass  # what libjpeg refuses (a truncated file): Pillow below decodes it or raises its own error
        image.load()
        return image

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            self._draft(image)
            image = convert_image(image, self.mode)
            if self.resize_tensor:
                image = F.pil_to_tensor(image)
        image = F.resize(image, self.scale_size, interpolation=self.interpolation, antialias=True)
        image = F.center_crop(image, self.size)
        return image if self.resize_tensor else F.pil_to_tensor(image)

    def blank(self) -> torch.Tensor:
        """A black (C, S, S) uint8 image: the place of an image that could not be read, masked out of the results."""
        return torch.zeros(len(self.mode), self.size, self.size, dtype=torch.uint8)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(size={self.size}, scale_size={self.scale_size}, mode={self.mode!r}, "
            f"interpolation={self.interpolation.value}, exact={self.exact})"
        )


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout `--channels_last` gives the model's convolution weights and its input batches."""
    return torch.channels_last if channels_last else torch.contiguous_format


class Normalize:
    """
    Batch of uint8 images (B, C, H, W) -> the model's float input on the same device: x / 255, then (x - mean) / std,
    the operations of torchvision's ToTensor + Normalize (so bit-identical to timm's per-image transform), once per
    batch on the device instead of once per image in the data workers, as timm's PrefetchLoader does. Training adds
    timm's per-pixel random erasing, which works on normalized values. With `channels_last`, the batch is laid out
    channels-last, as a model converted with `--channels_last` takes it.
    """

    def __init__(self, settings: PreprocessSettings, random_erasing: float = 0.0, channels_last: bool = False):
        self.mean = torch.tensor(settings.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(settings.std).view(1, -1, 1, 1)
        self.random_erasing = random_erasing
        self.memory_format = memory_format(channels_last)
        self.eraser = None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"pixels: expected a uint8 batch (B, {self.mean.shape[1]}, H, W) from the data transforms, got "
                f"{pixels.dtype} {tuple(pixels.shape)}"
            )
        if self.mean.device != pixels.device:
            self.mean, self.std = self.mean.to(pixels.device), self.std.to(pixels.device)
        batch = pixels.to(torch.float32, memory_format=self.memory_format).div_(255).sub_(self.mean).div_(self.std)
        if self.random_erasing == 0:
            return batch
        if self.eraser is None:  # per-pixel normal noise, as DeiT erases, drawn on the batch's device
            self.eraser = RandomErasing(self.random_erasing, mode="pixel", device=pixels.device)
        return self.eraser(batch)


def build_timm_eval_transform(settings: PreprocessSettings) -> Callable[[Image.Image], torch.Tensor]:
    """The reference: timm's own eval transform after the mode conversion, normalized float output (slower, used by
    tests and benchmarks)."""
    num_channels = settings.num_channels
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
    settings: PreprocessSettings, aug: AugmentArguments
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, S, S) uint8 tensor: timm's RandomResizedCrop, flip, RandAugment and color jitter, built with
    timm's `use_prefetcher=True`: normalization and random erasing happen per batch in `Normalize`."""
    num_channels = settings.num_channels
    timm_transform = create_transform(
        input_size=(num_channels, settings.image_size, settings.image_size),
        is_training=True,
        scale=aug.train_crop_scale,
        hflip=aug.hflip,
        auto_augment=aug.randaugment or None,
        color_jitter=aug.color_jitter,
        interpolation=settings.interpolation,
        # RandAugment fills with the mean color.
        mean=settings.mean,
        std=settings.std,
        use_prefetcher=True,
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


def check_multi_label_augmentation(aug: AugmentArguments) -> None:
    """Mixup, cutmix and label smoothing are refused for multi-hot targets: timm's Mixup and smoothing build soft
    single-label targets from class indices, which a multi-label sample does not have."""
    used = [f"--{name} {getattr(aug, name)}" for name in ("mixup", "cutmix", "label_smoothing") if getattr(aug, name)]
    if used:
        raise ValueError(
            f"{', '.join(used)}: expected 0 for a multi-label dataset (its labels are lists of classes, trained with "
            "binary cross-entropy on multi-hot targets, which mixup, cutmix and label smoothing do not make)"
        )
