"""The side-by-side comparison of vit-custom with timm on the same weights (`scripts/compare_timm.py`): parameters,
FLOPs, interleaved inference and training speed, peak memory, logits and, on a dataset, accuracy."""

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..data.arguments import DataArguments
from ..data.sources import load_datasets
from ..files import replacing
from ..interop.timm_conversion import max_abs_logit_diff
from ..metrics import TOP_K_ACCURACY
from ..training.models import logits_of
from .harness import (
    build_pair,
    count_gflops,
    count_parameters,
    example_batch,
    inference_step,
    interleaved_throughput,
    machine_info,
    paired_ratio,
    peak_memory_mb,
    training_step,
)

METRIC_UNITS = {
    "parameters": "count",
    "gflops": "GFLOPs per image (forward)",
    "inference_images_per_s": "images/s",
    "train_images_per_s": "images/s",
    "train_peak_memory_mb": "MiB",
    "max_abs_logit_diff": "logit",
    "top1": "fraction",
    "top5": "fraction",
}


@torch.no_grad()
def top_k_accuracy(
    models: dict[str, nn.Module], dataset, transform, batch_size: int = 32, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """{"ours": {"top1", "top5"}, "timm": {...}} on a `datasets` split with "image" and "label" columns, every model
    seeing the same tensors from the same transform, counted by the evaluate module training uses."""
    import evaluate

    if len(dataset) == 0:
        raise ValueError("dataset: expected at least one image, got none")
    metrics = {name: evaluate.load(TOP_K_ACCURACY, keep_in_memory=True) for name in models}
    num_ranked = 5
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        pixel_values = torch.stack([transform(image.convert("RGB")) for image in rows["image"]]).to(device)
        for name, model in models.items():
            logits = logits_of(model.eval(), pixel_values)
            num_ranked = min(5, logits.shape[-1])
            ranked = logits.topk(num_ranked, dim=-1).indices
            metrics[name].add_batch(predictions=ranked.cpu().numpy(), references=rows["label"])
    results = {name: metric.compute(k=[1, num_ranked]) for name, metric in metrics.items()}
    return {name: {"top1": result["top1"], "top5": result[f"top{num_ranked}"]} for name, result in results.items()}


def load_eval_dataset(path: str | os.PathLike, max_samples: int | None = None):
    """A local image folder (imagefolder layout) or parquet file, read as training reads a validation source."""
    path = Path(path)
    if path.is_dir():
        args = DataArguments(validation_dir=str(path), max_eval_samples=max_samples)
    elif path.suffix == ".parquet" and path.is_file():
        args = DataArguments(validation_file=str(path), max_eval_samples=max_samples)
    else:
        raise ValueError(f"dataset: expected an image folder or a .parquet file, got {path}")
    return load_datasets(args, split="validation").validation


def _row(metric: str, ours: float, timm_value: float, ratio: float | None = None) -> dict:
    if ratio is None:
        ratio = 1.0 if metric == "max_abs_logit_diff" else (ours / timm_value if timm_value else float("nan"))
    return {
        "metric": metric,
        "ours": float(ours),
        "timm": float(timm_value),
        "ratio": ratio,
        "unit": METRIC_UNITS[metric],
    }


def compare(
    spec: str | dict,
    batch_size: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    iters: int = 1,
    device: str = "cpu",
    num_threads: int | None = None,
    dataset_path: str | os.PathLike | None = None,
    max_eval_samples: int | None = None,
    measure_memory: bool = True,
) -> dict:
    """The side-by-side comparison as the JSON schema compare_timm.py writes (and the model card reads).

    Inference and training throughput are interleaved (`interleaved_throughput`); their ratio is `paired_ratio`,
    the other ratios ours / timm.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    ours, timm_model = build_pair(spec, device)
    pixel_values, labels = example_batch(ours, batch_size, device)
    rows = [
        _row("parameters", count_parameters(ours), count_parameters(timm_model)),
        _row("gflops", count_gflops(ours, pixel_values[:1]), count_gflops(timm_model, pixel_values[:1])),
    ]
    inference = interleaved_throughput(
        {"ours": inference_step(ours, pixel_values), "timm": inference_step(timm_model, pixel_values)},
        batch_size,
        warmup,
        repeats,
        iters,
        device,
    )
    rows.append(
        _row("inference_images_per_s", inference["ours"].median, inference["timm"].median, paired_ratio(inference))
    )
    diff = max_abs_logit_diff(ours, timm_model, pixel_values)
    # Training changes the weights; the logit check above ran on the identical starting weights.
    train = interleaved_throughput(
        {"ours": training_step(ours, pixel_values, labels), "timm": training_step(timm_model, pixel_values, labels)},
        batch_size,
        warmup,
        repeats,
        iters,
        device,
    )
    rows.append(_row("train_images_per_s", train["ours"].median, train["timm"].median, paired_ratio(train)))
    if measure_memory:
        memory = peak_memory_mb(spec, batch_size, "train", device=device, num_threads=torch.get_num_threads())
        rows.append(_row("train_peak_memory_mb", memory["ours"], memory["timm"]))
    rows.append(_row("max_abs_logit_diff", diff, diff))
    if dataset_path is not None:
        from timm.data import create_transform, resolve_data_config

        ours, timm_model = build_pair(spec, device)
        # timm's pretrained eval transform, at the model's own resolution (a model built from kwargs has no config).
        input_size = (timm_model.in_chans, *timm_model.patch_embed.img_size)
        transform = create_transform(**resolve_data_config({"input_size": input_size}, model=timm_model))
        dataset = load_eval_dataset(dataset_path, max_eval_samples)
        accuracy = top_k_accuracy({"ours": ours, "timm": timm_model}, dataset, transform, batch_size, device)
        rows += [_row(k, accuracy["ours"][k], accuracy["timm"][k]) for k in ("top1", "top5")]
    return {
        "timm_model": spec if isinstance(spec, str) else "VisionTransformer(" + json.dumps(spec, sort_keys=True) + ")",
        "batch_size": batch_size,
        "machine": machine_info(device),
        "rows": rows,
        "timing": {
            "warmup": warmup,
            "repeats": repeats,
            "iters_per_repeat": iters,
            "statistic": "images/s: median of repeats; ratio: median of per-repeat ours/timm; interleaved turns",
            "inference_images_per_s": {k: v.images_per_s for k, v in inference.items()},
            "train_images_per_s": {k: v.images_per_s for k, v in train.items()},
        },
        "memory_method": (
            "peak of a training step above resident weights, AdamW state and inputs: "
            + ("torch.cuda.max_memory_allocated" if device.startswith("cuda") else "Linux VmHWM rise, fresh process")
        ),
    }


def format_rows(result: dict) -> str:
    """The comparison as a Markdown table."""
    lines = ["| metric | ours | timm | ours/timm | unit |", "|---|---:|---:|---:|---|"]
    for row in result["rows"]:
        values = [f"{row[k]:.4g}" if abs(row[k]) < 1e6 else f"{row[k]:,.0f}" for k in ("ours", "timm")]
        lines.append(f"| {row['metric']} | {values[0]} | {values[1]} | {row['ratio']:.3f} | {row['unit']} |")
    return "\n".join(lines)


def plot_ratios(result: dict, path: str | os.PathLike) -> None:
    """Bar chart of ours/timm per metric (1.0 = parity) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["metric"] != "max_abs_logit_diff"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh([row["metric"] for row in rows], [row["ratio"] for row in rows], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("ours / timm")
    ax.set_title(f"vit-custom vs timm {result['timm_model']}, batch {result['batch_size']}")
    for i, row in enumerate(rows):
        ax.text(row["ratio"], i, f" {row['ratio']:.3f}", va="center")
    fig.tight_layout()
    with replacing(path) as staging:
        fig.savefig(staging, dpi=100, format="png")
    plt.close(fig)
