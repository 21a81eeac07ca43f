"""The check to run the day a GPU is lent (`scripts/gpu_check.py`): training-step images/s and MFU against timm, bf16
against fp32 on a short training run, DataLoader images/s, as one table; `tiny` runs the same code on a CPU."""

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial

import datasets
import numpy as np
import torch

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..data.arguments import AugmentArguments, DataArguments
from ..data.loaders import build_dataloaders
from ..data.sources import DatasetSplits
from ..image_processing import PreprocessSettings
from ..training.arguments import TrainingArguments
from .data_pipelines import photo_like_jpeg
from .harness import (
    MODELS,
    build_pair,
    example_batch,
    forward_flops_per_image,
    interleaved_throughput,
    machine_info,
    paired_ratio,
    peak_flops,
    training_step,
)

logger = logging.getLogger(__name__)

# The model of the bf16-against-fp32 run, in both modes: big enough to have every layer type, small enough that 200
# steps take seconds on a CPU.
PRECISION_MODEL = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_labels": 10,
}
# Per-pixel noise around each class's prototype image, twice the prototypes' scale: learnable, but not learned to a
# loss near 0 in 200 steps, where a relative difference of losses would blow up.
PRECISION_NOISE = 2.0
# Loss curves are compared after a trailing mean over this many steps, so that one batch that the two runs' slightly
# different weights happen to fit differently does not decide the verdict.
PRECISION_WINDOW = 10
# bf16 keeps 8 significant bits (a relative rounding of 2^-9 per operation); with fp32 weights, gradients, optimizer
# state and loss, the two runs drift apart far less than 1% in 200 steps at this learning rate. A smoothed curve more
# than 1% away from fp32's is a precision bug (bf16 master weights losing small updates, an overflow, a sum in bf16).
PRECISION_TOLERANCE = 0.01
# The fp32 run must also learn: its smoothed loss ends below this fraction of where it started.
PRECISION_LEARNED_FRACTION = 0.8
JPEG_QUALITY = 90


@dataclass(frozen=True)
class CheckSettings:
    """What one check measures: `FULL` on a GPU, or `TINY` (seconds on a CPU) that keeps the code tested."""

    model: str | dict  # a timm name or VisionTransformer keyword arguments, for `build_pair`
    batch_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    iters: int
    compile_backend: str
    precision_steps: int
    precision_batch_size: int
    jpeg_size: tuple[int, int]  # (width, height) of the generated JPEGs
    image_size: int  # what the transforms make of them
    distinct_images: int
    data_batch_size: int
    data_repeats: int


FULL = CheckSettings(
    model="vit_base_patch16_224",
    batch_sizes=(128, 256),
    warmup=3,  # the first call compiles; two more settle the allocator and cuDNN's choices
    repeats=5,
    iters=10,
    compile_backend="inductor",
    precision_steps=200,
    precision_batch_size=64,
    jpeg_size=(500, 375),  # ImageNet's most common size
    image_size=224,
    distinct_images=256,
    data_batch_size=64,
    data_repeats=3,
)
TINY = CheckSettings(
    model={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10},
    batch_sizes=(8, 16),
    warmup=1,
    repeats=3,
    iters=2,
    # Dynamo and AOTAutograd trace forward and backward as inductor's input; inductor's own C++ build of a cold cache
    # takes a minute on a small CPU, too long for the test suite.
    compile_backend="aot_eager",
    precision_steps=60,
    precision_batch_size=16,
    jpeg_size=(160, 120),
    image_size=32,
    distinct_images=16,
    data_batch_size=8,
    data_repeats=3,
)


def resolve_device(device: str, tiny: bool) -> torch.device:
    """The device the check runs on, refused by name when it cannot run there: no visible GPU, no bf16 on it, or the
    full check on a CPU."""
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: expected a visible CUDA GPU, got none (torch.cuda.is_available() is False); "
                "use --tiny --device cpu for the CPU check"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"--device {device}: expected an index below {count} (the visible GPUs), got {device!r}")
        if not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(resolved)
            raise ValueError(f"--device {device}: expected a GPU with bf16 (Ampere or newer), got {name}")
    elif resolved.type == "cpu":
        if not tiny:
            raise ValueError(
                "--device cpu: the full check (ViT-B/16 at batch 128 and 256, compiled) needs a GPU; expected "
                "--device cuda, or --tiny for the CPU check"
            )
    else:
        raise ValueError(f"--device: expected 'cpu' or 'cuda[:N]', got {device!r}")
    return resolved


def check_options(num_workers: int, peak_tflops: float | None) -> None:
    if num_workers < 1:
        raise ValueError(f"--num_workers: expected at least 1 DataLoader worker, got {num_workers}")
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise ValueError(f"--peak_tflops: expected a positive number of TFLOP/s, got {peak_tflops}")


def run_check(
    settings: CheckSettings, device: torch.device, num_workers: int, peak_tflops: float | None = None
) -> dict:
    """The three parts, in the order of the table; each records its wall time in seconds."""
    peak = peak_tflops * 1e12 if peak_tflops is not None else peak_flops(device)
    result = {
        "machine": machine_info(str(device)),
        "settings": asdict(settings),
        "peak_flops": peak,
        "peak_flops_source": "--peak_tflops" if peak_tflops is not None else ("harness.PEAK_FLOPS" if peak else None),
    }
    parts = (
        ("training", lambda: training_throughput(settings, device, peak)),
        ("precision", lambda: precision_check(settings, device)),
        ("data", lambda: dataloader_throughput(settings, num_workers)),
    )
    for name, part in parts:
        logger.info("%s ...", name)
        start = time.perf_counter()
        result[name] = part()
        result[name]["seconds"] = time.perf_counter() - start
        logger.info("%s done in %.1f s", name, result[name]["seconds"])
    return result


def training_throughput(settings: CheckSettings, device: torch.device, peak: float | None) -> dict:
    """Training-step images/s of ours and timm (same weights, interleaved) in bf16 autocast with SDPA and fused AdamW,
    eager and compiled, at each batch size; MFU = 3 x forward FLOPs per image x images/s / peak."""
    ours, timm_model = build_pair(settings.model, device)
    flops = {
        name: forward_flops_per_image(model, example_batch(model, 2, str(device))[0])
        for name, model in zip(MODELS, (ours, timm_model), strict=True)
    }
    attention = {
        "ours": ours.config._attn_implementation,
        "timm_fused_attn": bool(timm_model.blocks[0].attn.fused_attn),
    }
    del ours, timm_model
    rows = []
    for batch_size in settings.batch_sizes:
        for compiled in (False, True):
            row = {"batch_size": batch_size, "compiled": compiled}
            row["compile_backend"] = settings.compile_backend if compiled else None
            try:
                timing = _time_pair(settings, device, batch_size, compiled)
            except Exception as error:  # a compiler failure is a result of the check; eager failing is a bug
                if not compiled:
                    raise
                logger.warning(
                    "torch.compile (%s) failed at batch %d: %s", settings.compile_backend, batch_size, error
                )
                rows.append({**row, "error": f"{type(error).__name__}: {str(error)[:300]}"})
                continue
            for name in MODELS:
                row[f"{name}_images_per_s"] = timing[name].median
                row[f"{name}_runs"] = timing[name].images_per_s
                row[f"{name}_mfu"] = 3 * flops[name] * timing[name].median / peak if peak else None
            row["ratio"] = paired_ratio(timing)
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {
        "autocast": "bfloat16",
        "flops_per_image": flops,
        "attention": attention,
        "rows": rows,
    }


def _time_pair(settings: CheckSettings, device: torch.device, batch_size: int, compiled: bool) -> dict:
    ours, timm_model = build_pair(settings.model, device)
    pixel_values, labels = example_batch(ours, batch_size, str(device))
    # In place, as train.py's --torch_compile; static shapes, as a run with one batch size gets them (another model
    # of the same class compiled earlier at another batch size would otherwise make the batch dimension dynamic).
    if compiled:
        ours.compile(backend=settings.compile_backend, dynamic=False)
        timm_model.compile(backend=settings.compile_backend, dynamic=False)
    steps = {
        "ours": training_step(ours, pixel_values, labels, autocast=torch.bfloat16),
        "timm": training_step(timm_model, pixel_values, labels, autocast=torch.bfloat16),
    }
    return interleaved_throughput(steps, batch_size, settings.warmup, settings.repeats, settings.iters, str(device))


def precision_check(settings: CheckSettings, device: torch.device) -> dict:
    """The same seeded training run (our model, learnable synthetic data, AdamW) in fp32 and in bf16 autocast: the
    largest relative difference of the smoothed loss curves, against PRECISION_TOLERANCE."""
    with _true_fp32():
        losses = {
            name: _training_losses(settings, device, dtype)
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
        }
    smoothed = {name: trailing_mean(curve, PRECISION_WINDOW) for name, curve in losses.items()}
    differences = [abs(b - f) / abs(f) for f, b in zip(smoothed["fp32"], smoothed["bf16"], strict=True)]
    worst = max(range(len(differences)), key=differences.__getitem__)
    learned = smoothed["fp32"][-1] < PRECISION_LEARNED_FRACTION * smoothed["fp32"][0]
    return {
        "steps": settings.precision_steps,
        "batch_size": settings.precision_batch_size,
        "model": PRECISION_MODEL,
        "smoothing_window": PRECISION_WINDOW,
        "tolerance": PRECISION_TOLERANCE,
        "max_relative_difference": differences[worst],
        "at_step": worst + 1,
        "fp32_learned": learned,
        "passed": learned and differences[worst] <= PRECISION_TOLERANCE,
        "fp32_smoothed_first_last": [smoothed["fp32"][0], smoothed["fp32"][-1]],
        "bf16_smoothed_first_last": [smoothed["bf16"][0], smoothed["bf16"][-1]],
        "fp32_losses": losses["fp32"],
        "bf16_losses": losses["bf16"],
    }


@contextmanager
def _true_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 (cuDNN allows it by default), so the reference is fp32; put back
    afterwards."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _training_losses(settings: CheckSettings, device: torch.device, autocast: torch.dtype | None) -> list[float]:
    """Per-step losses of our tiny model trained on class prototypes plus noise; everything seeded, so the fp32 and
    bf16 runs start from the same weights and see the same batches."""
    torch.manual_seed(0)
    model = ViTCustomForImageClassification(ViTCustomConfig(**PRECISION_MODEL)).to(device)
    size, classes, batch_size = (
        PRECISION_MODEL["image_size"],
        PRECISION_MODEL["num_labels"],
        settings.precision_batch_size,
    )
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.randn(classes, 3, size, size, generator=generator)
    pixel_values = torch.empty(batch_size, 3, size, size, device=device)
    labels = torch.empty(batch_size, dtype=torch.long, device=device)
    step = training_step(model, pixel_values, labels, autocast=autocast)
    losses = []
    for _ in range(settings.precision_steps):
        batch_labels = torch.randint(0, classes, (batch_size,), generator=generator)
        noise = torch.randn(batch_size, 3, size, size, generator=generator)
        labels.copy_(batch_labels)
        pixel_values.copy_(prototypes[batch_labels] + PRECISION_NOISE * noise)
        losses.append(step())
    return torch.stack(losses).tolist()


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (of all values so far for the first window - 1)."""
    sums = np.cumsum([0.0, *values])
    return [float(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def dataloader_throughput(settings: CheckSettings, num_workers: int) -> dict:
    """Images/s of the training script's own DataLoaders (`data.loaders.build_dataloaders`: decoding in
    `num_workers` workers, uint8 out) over generated JPEGs, eval and train transforms; timed in steady state after
    every worker has handed over a batch."""
    width, height = settings.jpeg_size
    rng = np.random.default_rng(0)
    images = [photo_like_jpeg(width, height, rng, JPEG_QUALITY) for _ in range(settings.distinct_images)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x"])})
    table = {"image": [{"bytes": data, "path": None} for data in images], "label": [0] * len(images)}
    distinct = datasets.Dataset.from_dict(table, features=features)
    warmup, iters = num_workers, 2 * num_workers  # batches: one per worker, then two per worker per repeat
    # Enough rows for every timed batch and for what the workers still prefetch (build_dataloaders: 4 per worker).
    batches = warmup + settings.data_repeats * iters + 4 * num_workers
    rows = np.arange(batches * settings.data_batch_size) % len(images)
    split = distinct.select(rows)
    splits = DatasetSplits(train=split, validation=split, class_names=["x"])
    preprocess = PreprocessSettings(image_size=settings.image_size)
    args = TrainingArguments(
        num_workers=num_workers,
        per_device_train_batch_size=settings.data_batch_size,
        per_device_eval_batch_size=settings.data_batch_size,
    )
    train_loader, eval_loader, _ = build_dataloaders(splits, preprocess, AugmentArguments(), DataArguments(), args)
    loaders = {"eval": eval_loader, "train": train_loader}
    del train_loader, eval_loader
    result = {
        "jpeg_size": [width, height],
        "image_size": settings.image_size,
        "num_workers": num_workers,
        "batch_size": settings.data_batch_size,
        "rows": [],
    }
    for name in ("eval", "train"):
        loader = loaders.pop(name)
        iterator = iter(loader)
        timing = interleaved_throughput(
            {name: partial(next, iterator)}, settings.data_batch_size, warmup, settings.data_repeats, iters
        )
        result["rows"].append(
            {"transform": name, "images_per_s": timing[name].median, "runs": timing[name].images_per_s}
        )
        del loader, iterator  # the persistent workers exit before the next loader's start
    return result


def format_table(result: dict) -> str:
    """The check as one Markdown table, then the machine."""
    training, precision, data = result["training"], result["precision"], result["data"]
    model = result["settings"]["model"]
    model = model if isinstance(model, str) else "tiny ViT"
    lines = [
        "| check | setting | ours | timm | ours/timm | MFU ours | MFU timm | result |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in training["rows"]:
        mode = f"compiled ({row['compile_backend']})" if row["compiled"] else "eager"
        setting = f"{model}, batch {row['batch_size']}, bf16 autocast, {mode}"
        if "error" in row:
            lines.append(f"| train step img/s | {setting} | | | | | | failed: {row['error']} |")
            continue
        mfu = [f"{100 * row[f'{name}_mfu']:.1f}%" if row[f"{name}_mfu"] is not None else "n/a" for name in MODELS]
        lines.append(
            f"| train step img/s | {setting} | {row['ours_images_per_s']:.1f} | {row['timm_images_per_s']:.1f} | "
            f"{row['ratio']:.3f} | {mfu[0]} | {mfu[1]} | |"
        )
    verdict = (
        "pass" if precision["passed"] else "FAIL" + ("" if precision["fp32_learned"] else " (fp32 did not learn)")
    )
    first, last = precision["fp32_smoothed_first_last"]
    lines.append(
        f"| bf16 vs fp32 loss | {precision['steps']} steps, tiny ViT, mean of {precision['smoothing_window']} steps, "
        f"fp32 loss {first:.3f} -> {last:.3f} | {100 * precision['max_relative_difference']:.2f}% max rel. diff "
        f"(step {precision['at_step']}) | | | | | {verdict} (tolerance {100 * precision['tolerance']:.0f}%) |"
    )
    fastest = max((row["ours_images_per_s"] for row in training["rows"] if "error" not in row), default=None)
    width, height = data["jpeg_size"]
    for row in data["rows"]:
        setting = (
            f"{row['transform']} transform, {data['num_workers']} workers, {width}x{height} JPEG -> "
            f"{data['image_size']}, batch {data['batch_size']}"
        )
        share = f"{row['images_per_s'] / fastest:.0%} of ours' fastest train step" if fastest else ""
        lines.append(f"| DataLoader img/s | {setting} | {row['images_per_s']:.1f} | | | | | {share} |")
    machine = result["machine"]
    peak = f", peak {result['peak_flops'] / 1e12:g} TFLOP/s" if result["peak_flops"] else ", MFU n/a (unknown peak)"
    lines += ["", "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items()) + peak]
    return "\n".join(lines)
