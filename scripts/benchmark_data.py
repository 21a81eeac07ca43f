"""Images per second of the data pipelines on one core, on generated ImageNet-sized JPEGs, against the naive path.

Our pipelines stop at a uint8 tensor, as a DataLoader worker does: normalization (and random erasing) runs once per
batch on the training device (`transforms.Normalize`). One row adds that step on this core, per image, for the
comparison where the device is this CPU."""

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

from modeling_vit_custom.data import ImageClassificationDataset
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


def images_per_second(pipelines: list[tuple[str, Callable[[int], object]]], count: int, repeats: int) -> list[float]:
    """Best of `repeats` passes over `count` images for each pipeline, the pipelines interleaved in every repeat, so
    load from other processes on the machine hits them alike (the best pass is the least disturbed)."""
    best = [float("inf")] * len(pipelines)
    for _ in range(repeats):
        for k, (_, run_one) in enumerate(pipelines):
            run_one(0)
            start = time.perf_counter()
            for i in range(count):
                run_one(i)
            best[k] = min(best[k], time.perf_counter() - start)
    return [count / seconds for seconds in best]


def benchmark(
    width: int, height: int, count: int, repeats: int, quality: int, workdir: str
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
        ("naive: PIL open -> RandomResizedCrop -> ToTensor", lambda i: naive(Image.open(paths[i]).convert("RGB"))),
        ("timm eval transform (reference)", lambda i: timm_eval(Image.open(paths[i]))),
        ("ours eval, exact=True (normalized: timm's, bit for bit)", lambda i: exact_set[i]),
        ("**ours eval** (uint8 torch resize, JPEG draft)", lambda i: eval_set[i]),
        ("ours eval + Normalize on this core, per image", lambda i: normalize(eval_set[i]["pixel_values"][None])),
        ("ours train (RRC, flip, RandAugment m9)", lambda i: train_set[i]),
    ]
    rates = images_per_second(pipelines, count, repeats)
    return [(name, rate) for (name, _), rate in zip(pipelines, rates, strict=True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
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
            results = benchmark(width, height, args.num_images, args.repeats, args.quality, workdir)
            naive_rate = results[0][1]
            print(f"\n{width}x{height} JPEG, quality {args.quality}, {args.num_images} images, one core, 224 output")
            print("| pipeline | images/s | vs naive |")
            print("|---|---:|---:|")
            for name, rate in results:
                print(f"| {name} | {rate:.0f} | {rate / naive_rate:.2f}x |")


if __name__ == "__main__":
    main()
