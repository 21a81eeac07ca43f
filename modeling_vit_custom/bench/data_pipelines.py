"""Images per second of the data pipelines on one core (`scripts/benchmark_data.py`), on generated ImageNet-sized
JPEGs, against the naive path.

Our pipelines run as a DataLoader worker runs them: one batch of rows read at once (`__getitems__`), each image decoded
and transformed to a uint8 tensor; normalization (and random erasing) runs once per batch on the training device
(`data.transforms.Normalize`). One row adds that step on this core, for the comparison where the device is this CPU."""

import io
import os
import time
from collections.abc import Callable

import datasets
import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..data.arguments import AugmentArguments
from ..data.decoding import ImageClassificationDataset, collate
from ..data.transforms import EvalTransform, Normalize, build_timm_eval_transform, build_train_transform
from ..image_processing import PreprocessSettings


def photo_like_jpeg(width: int, height: int, rng: np.random.Generator, quality: int) -> bytes:
    """Smooth random shapes plus sensor-like noise: compresses like a photograph (~100 KB at 500x375, quality 90)."""
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-16, 17, (height, width, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def images_per_second(
    pipelines: list[tuple[str, Callable[[list[int]], object]]], count: int, batch_size: int, repeats: int
) -> list[float]:
    """Best of `repeats` passes over `count` images, in batches of indices, for each pipeline, the pipelines
    interleaved in every repeat, so load from other processes on the machine hits them alike (the best pass is the
    least disturbed)."""
    batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    best = [float("inf")] * len(pipelines)
    for _ in range(repeats):
        for k, (_, run_batch) in enumerate(pipelines):
            run_batch(batches[0])
            start = time.perf_counter()
            for batch in batches:
                run_batch(batch)
            best[k] = min(best[k], time.perf_counter() - start)
    return [count / seconds for seconds in best]


def benchmark(
    width: int, height: int, count: int, batch_size: int, repeats: int, quality: int, workdir: str
) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    images = [photo_like_jpeg(width, height, rng, quality) for _ in range(count)]
    paths = []
    for i, data in enumerate(images):
        paths.append(os.path.join(workdir, f"{width}x{height}_{i}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x"])})
    table = {"image": [{"bytes": data, "path": None} for data in images], "label": [0] * count}
    hf_dataset = datasets.Dataset.from_dict(table, features=features)

    settings = PreprocessSettings()  # 224, crop_pct 0.9, bicubic: ViT-B/16
    naive = T.Compose([T.RandomResizedCrop(224), T.ToTensor()])
    timm_eval = build_timm_eval_transform(settings)
    eval_set = ImageClassificationDataset(hf_dataset, EvalTransform(settings))
    exact_set = ImageClassificationDataset(hf_dataset, EvalTransform(settings, exact=True))
    train_set = ImageClassificationDataset(hf_dataset, build_train_transform(settings, AugmentArguments()))
    normalize = Normalize(settings)
    pipelines = [
        (
            "naive: PIL open -> RandomResizedCrop -> ToTensor",
            lambda b: [naive(Image.open(paths[i]).convert("RGB")) for i in b],
        ),
        ("timm eval transform (reference)", lambda b: [timm_eval(Image.open(paths[i])) for i in b]),
        ("ours eval, exact=True (normalized: timm's, bit for bit)", exact_set.__getitems__),
        ("**ours eval** (TorchCodec JPEG decode, uint8 torch resize)", eval_set.__getitems__),
        ("ours eval + Normalize on this core", lambda b: normalize(collate(eval_set.__getitems__(b))["pixel_values"])),
        ("ours train (RRC, flip, RandAugment m9)", train_set.__getitems__),
    ]
    rates = images_per_second(pipelines, count, batch_size, repeats)
    return [(name, rate) for (name, _), rate in zip(pipelines, rates, strict=True)]
