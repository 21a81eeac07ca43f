"""Tests of the eval/train transforms against timm's, and of mixup and label smoothing."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.v2 import functional as F

from modeling_vit_custom.data.arguments import AugmentArguments
from modeling_vit_custom.data.transforms import (
    EvalTransform,
    Normalize,
    build_mixup,
    build_timm_eval_transform,
    build_train_transform,
    smooth_labels,
)
from modeling_vit_custom.image_processing import PreprocessSettings

ONE_LEVEL = 2 / 255  # one intensity level after normalizing with std 0.5


def normalized(transform, image: Image.Image, settings: PreprocessSettings) -> torch.Tensor:
    """One image through a uint8 transform and `Normalize`: what the model sees."""
    return Normalize(settings)(transform(image)[None])[0]


def natural_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random image with some noise: closer to a photograph than white noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


SETTINGS = [
    PreprocessSettings(),
    PreprocessSettings(image_size=32, crop_pct=0.875, interpolation="bilinear", mean=(0.1, 0.2, 0.3)),
    PreprocessSettings(image_size=48, crop_pct=1.0, interpolation="bicubic"),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["b16-224", "32-bilinear", "48-crop1"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (37, 91)])
def test_exact_eval_transform_equals_timm(settings, size):
    image = natural_image(*size)
    exact = EvalTransform(settings, exact=True)
    ours = exact(image.copy())
    assert ours.shape == (3, settings.image_size, settings.image_size) and ours.dtype == torch.uint8
    assert torch.equal(normalized(exact, image.copy(), settings), build_timm_eval_transform(settings)(image.copy()))
    # A JPEG goes through the same decode on both sides when exact.
    assert torch.equal(normalized(exact, jpeg(image), settings), build_timm_eval_transform(settings)(jpeg(image)))


@pytest.mark.parametrize("settings", SETTINGS, ids=["b16-224", "32-bilinear", "48-crop1"])
def test_fast_eval_transform_within_one_level_of_timm(settings):
    image = natural_image(500, 375, seed=1)
    fast = normalized(EvalTransform(settings), image.copy(), settings)
    reference = build_timm_eval_transform(settings)(image.copy())
    # torch's uint8 resize rounds differently from Pillow's: a few pixels one intensity level apart.
    difference = (fast - reference).abs()
    assert difference.max().item() <= ONE_LEVEL / min(settings.std) * 0.5 + 1e-6
    assert (difference > 1e-6).float().mean().item() < 0.005
    # Interpolations torch cannot resize on uint8 go through Pillow, as in timm.
    lanczos = PreprocessSettings(image_size=32, interpolation="lanczos")
    assert torch.equal(
        normalized(EvalTransform(lanczos), image.copy(), lanczos),
        build_timm_eval_transform(lanczos)(image.copy()),
    )


def test_jpeg_draft_only_for_large_images_and_close_to_timm():
    settings = PreprocessSettings()
    transform = EvalTransform(settings)
    # 500x375 is below twice the resize size (248): decoded at full scale, so only resize rounding differs.
    small = jpeg(natural_image(500, 375))
    reference = build_timm_eval_transform(settings)(jpeg(natural_image(500, 375)))
    assert (normalized(transform, small, settings) - reference).abs().max() <= ONE_LEVEL + 1e-6
    large_image = natural_image(2048, 1536, seed=2)
    large = jpeg(large_image)
    transform(large)
    assert large.size == (1024, 768)  # decoded at scale 1/2, still >= 2 x 248 on the short side
    difference = (
        normalized(transform, jpeg(large_image), settings) - build_timm_eval_transform(settings)(jpeg(large_image))
    ).abs()
    assert difference.mean().item() < 0.01
    assert difference.max().item() < 0.1


def encoded(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"subsampling": 0}], ids=["420", "progressive", "444"])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_decode_gives_pillows_pixels(mode, options, num_channels):
    settings = PreprocessSettings(mean=(0.5,) * num_channels, std=(0.5,) * num_channels)
    transform = EvalTransform(settings)
    data = encoded(natural_image(203, 151).convert(mode), quality=90, **options)
    decoded = transform.decode(data)
    # libjpeg's conversions match Pillow's except RGB -> L (luma from YCbCr, not from rounded RGB): Pillow does that.
    assert isinstance(decoded, torch.Tensor) == (num_channels == 3 or mode == "L")
    target = "RGB" if num_channels == 3 else "L"
    if isinstance(decoded, Image.Image):
        decoded = F.pil_to_tensor(decoded.convert(target))  # what the transform does with it
    assert torch.equal(decoded, F.pil_to_tensor(Image.open(io.BytesIO(data)).convert(target)))
    assert torch.equal(transform(transform.decode(data)), transform(Image.open(io.BytesIO(data))))


def test_decode_falls_back_to_pillow():
    settings = PreprocessSettings()
    transform = EvalTransform(settings)
    image = natural_image(203, 151)
    png = transform.decode(encoded(image, "PNG"))
    assert isinstance(png, Image.Image) and png.tobytes() == image.tobytes()
    large = transform.decode(encoded(natural_image(2048, 1536)))
    assert isinstance(large, Image.Image) and large.size == (1024, 768)  # Pillow's reduced DCT scale
    exact = EvalTransform(settings, exact=True).decode(encoded(image))
    assert isinstance(exact, Image.Image) and exact.size == (203, 151)
    # A truncated JPEG is refused by libjpeg through TorchCodec, then Pillow names the error.
    with pytest.raises(OSError, match="truncated"):
        transform.decode(encoded(image)[:3000])


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_transforms_accept_every_mode(mode, num_channels):
    settings = PreprocessSettings(image_size=32, mean=(0.5,) * num_channels, std=(0.5,) * num_channels)
    image = natural_image(40, 30).convert(mode)
    aug = AugmentArguments()
    for transform in (
        EvalTransform(settings),
        build_train_transform(settings, aug),
    ):
        out = transform(image.copy())
        assert out.shape == (num_channels, 32, 32) and out.dtype == torch.uint8


def test_grayscale_model_gets_luma():
    settings = PreprocessSettings(image_size=32, crop_pct=1.0, mean=(0.0,), std=(1.0,))
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    out = EvalTransform(settings)(image)
    # ITU-R 601-2 luma of pure red: 299/1000 * 255 = 76.
    assert torch.equal(out, torch.full((1, 32, 32), 76, dtype=torch.uint8))


def test_channel_count_other_than_1_or_3_is_an_error():
    with pytest.raises(ValueError, match="num_channels: expected 1 or 3, got 4"):
        EvalTransform(PreprocessSettings(mean=(0.5,) * 4, std=(0.5,) * 4))


def test_train_transform_pieces_switch():
    settings = PreprocessSettings(image_size=32)
    full = build_train_transform(settings, AugmentArguments())
    kinds = [type(t) for t in full.transforms[1].transforms]
    # Random erasing works on normalized values: `Normalize` applies it per batch.
    assert RandAugment in kinds and RandomErasing not in kinds
    bare = build_train_transform(settings, AugmentArguments(randaugment="", random_erasing=0.0, hflip=0.0))
    kinds = [type(t).__name__ for t in bare.transforms[1].transforms]
    assert kinds == ["RandomResizedCropAndInterpolation", "MaybePILToTensor"]
    jitter = build_train_transform(settings, AugmentArguments(randaugment=None, color_jitter=0.4))
    assert "ColorJitter" in [type(t).__name__ for t in jitter.transforms[1].transforms]


def test_train_crop_scale_one_with_no_aug_is_a_resize_of_a_centered_square():
    settings = PreprocessSettings(image_size=32, interpolation="bilinear")
    aug = AugmentArguments(train_crop_scale=(1.0, 1.0), randaugment=None, random_erasing=0.0, hflip=0.0)
    image = natural_image(64, 64)
    torch.manual_seed(0)
    outs = [normalized(build_train_transform(settings, aug), image.copy(), settings) for _ in range(3)]
    # Scale 1 on a square image leaves only the aspect ratio random, and a full-area crop of a square is the square.
    expected = build_timm_eval_transform(PreprocessSettings(image_size=32, crop_pct=1.0, interpolation="bilinear"))(
        image.copy()
    )
    for out in outs:
        assert torch.allclose(out, expected, atol=1e-6)


def test_train_transform_is_random():
    settings = PreprocessSettings(image_size=32)
    transform = build_train_transform(settings, AugmentArguments())
    image = natural_image(64, 48)
    torch.manual_seed(0)
    a, b = transform(image.copy()).float(), transform(image.copy()).float()
    assert (a - b).abs().mean().item() > 5  # intensity levels


def test_augment_arguments_errors():
    with pytest.raises(ValueError, match="train_crop_scale"):
        AugmentArguments(train_crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="hflip: expected a probability in \\[0, 1\\], got 1.5"):
        AugmentArguments(hflip=1.5)
    with pytest.raises(ValueError, match="mixup"):
        AugmentArguments(mixup=-1.0)
    with pytest.raises(ValueError, match="randaugment"):
        AugmentArguments(randaugment="m9")


def test_mixup_and_label_smoothing():
    assert build_mixup(AugmentArguments(label_smoothing=0.1), num_classes=5) is None
    mixup = build_mixup(AugmentArguments(mixup=0.8, cutmix=1.0, label_smoothing=0.1), num_classes=5)
    assert isinstance(mixup, Mixup)
    torch.manual_seed(0)
    np.random.seed(0)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = mixup(images.clone(), labels)
    assert targets.shape == (4, 5)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    # Every row keeps at least the smoothing floor on every class, and mass on its own and its partner's class.
    assert (targets >= 0.1 / 5 - 1e-6).all()
    assert not torch.equal(mixed, images)
    smoothed = smooth_labels(torch.tensor([2, 0]), num_classes=5, smoothing=0.1)
    assert torch.allclose(smoothed[0], torch.tensor([0.02, 0.02, 0.92, 0.02, 0.02]))
    assert torch.allclose(smoothed.sum(dim=1), torch.ones(2))


def test_randaugment_posterize_to_zero_bits_gives_black():
    transform = build_train_transform(PreprocessSettings(image_size=32), AugmentArguments())
    randaugment = next(t for t in transform.transforms[1].transforms if isinstance(t, RandAugment))
    posterize_ops = [op for op in randaugment.ops if op.name.startswith("Posterize")]
    assert posterize_ops
    image = natural_image(32, 32)
    for op in posterize_ops:
        # Magnitude 10 of PosterizeIncreasing keeps 0 bits; Pillow 13's own posterize raises for it.
        assert np.asarray(op.aug_fn(image, 0)).max() == 0
        assert np.array_equal(np.asarray(op.aug_fn(image, 4)), np.asarray(image) & 0xF0)
        op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
        assert np.asarray(op(image)).max() == 0


def test_normalize_batches_and_erases():
    settings = PreprocessSettings(image_size=8, mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 0.125))
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    expected = (pixels.float() / 255 - torch.tensor(settings.mean).view(3, 1, 1)) / torch.tensor(settings.std).view(
        3, 1, 1
    )
    torch.testing.assert_close(Normalize(settings)(pixels), expected, atol=1e-6, rtol=0)
    # --channels_last: the same values, laid out channels-last; the default stays contiguous.
    channels_last = Normalize(settings, channels_last=True)(pixels)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    assert torch.equal(channels_last, Normalize(settings)(pixels)) and Normalize(settings)(pixels).is_contiguous()
    torch.manual_seed(0)
    erased = Normalize(settings, random_erasing=1.0)(pixels)
    changed = (erased != Normalize(settings)(pixels)).flatten(1).float().mean(dim=1)
    # Every image gets one erased box of 2% to 1/3 of its area, filled with per-pixel normal noise.
    assert ((changed >= 0.01) & (changed <= 0.34)).all() and torch.isfinite(erased).all()
    with pytest.raises(ValueError, match=r"expected a uint8 batch \(B, 3, H, W\) from the data transforms, got "
                                         r"torch.float32 \(3, 8, 8\)"):  # fmt: skip
        Normalize(settings)(expected[0])
