"""Images per second of the data pipelines on one core, on generated ImageNet-sized JPEGs, against the naive path.

Our pipelines run as a DataLoader worker runs them: one batch of rows read at once (`__getitems__`), each image decoded
and transformed to a uint8 tensor; normalization (and random erasing) runs once per batch on the training device
(`transforms.Normalize`). One row adds that step on this core, for the comparison where the device is this CPU."""

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable

import datasets
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from modeling_vit_custom.data import ImageClassificationDataset, collate
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.transforms import (
    AugmentArguments,
    Normalize,
    build_eval_transform,
    build_timm_eval_transform,
    build_train_transform,
)


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
    timm_eval = build_timm_eval_transform(settings, 3)
    eval_set = ImageClassificationDataset(hf_dataset, build_eval_transform(settings, 3))
    exact_set = ImageClassificationDataset(hf_dataset, build_eval_transform(settings, 3, exact=True))
    train_set = ImageClassificationDataset(hf_dataset, build_train_transform(settings, 3, AugmentArguments()))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=50, help="rows a worker reads at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument(
        "--sizes", nargs="+", default=["500x375", "1024x768"], help="WIDTHxHEIGHT of the generated JPEGs"
    )
    args = parser.parse_args()
    # One worker is one core: no intra-op threads.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            results = benchmark(width, height, args.num_images, args.batch_size, args.repeats, args.quality, workdir)
            naive_rate = results[0][1]
            print(f"\n{width}x{height} JPEG, quality {args.quality}, {args.num_images} images", end="")
            print(f" in batches of {args.batch_size}, one core, 224 output")
            print("| pipeline | images/s | vs naive |")
            print("|---|---:|---:|")
            for name, rate in results:
                print(f"| {name} | {rate:.0f} | {rate / naive_rate:.2f}x |")


if __name__ == "__main__":
    main()
