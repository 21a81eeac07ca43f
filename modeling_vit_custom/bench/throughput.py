"""Throughput and peak memory of vit-custom against timm for several model sizes (`scripts/benchmark.py`), eager and
under torch.compile."""

import json
import logging

import torch

from .harness import (
    MODELS,
    build_pair,
    example_batch,
    inference_step,
    interleaved_throughput,
    machine_info,
    paired_ratio,
    peak_memory_mb,
    training_step,
)

logger = logging.getLogger(__name__)


def benchmark(
    models: list[tuple[str | dict, int]],
    warmup: int = 2,
    repeats: int = 5,
    iters: int = 1,
    device: str = "cpu",
    num_threads: int | None = None,
    compile: bool = False,
    measure_memory: bool = True,
) -> dict:
    """For each (model, batch), inference and training-step images/s of ours and timm (interleaved,
    median), their ratio and peak memory; with `compile`, the same throughput for both under `torch.compile`."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    rows = []
    for spec, batch_size in models:
        name = spec if isinstance(spec, str) else "VisionTransformer(" + json.dumps(spec, sort_keys=True) + ")"
        variants = [False, True] if compile else [False]
        for compiled in variants:
            for mode in ("inference", "train"):
                ours, timm_model = build_pair(spec, device)
                pixel_values, labels = example_batch(ours, batch_size, device)
                if compiled:
                    ours, timm_model = torch.compile(ours), torch.compile(timm_model)
                make = inference_step if mode == "inference" else training_step
                args = (pixel_values,) if mode == "inference" else (pixel_values, labels)
                row = {"model": name, "batch_size": batch_size, "mode": mode, "compiled": compiled}
                try:
                    timing = interleaved_throughput(
                        {"ours": make(ours, *args), "timm": make(timm_model, *args)},
                        batch_size,
                        warmup,
                        repeats,
                        iters,
                        device,
                    )
                except Exception as error:  # torch.compile needs a working C++ toolchain on CPU; report, go on
                    if not compiled:
                        raise
                    logger.warning("torch.compile failed for %s: %s", name, error)
                    rows.append({**row, "error": f"{type(error).__name__}: {str(error)[:200]}"})
                    continue
                row.update(
                    ours_images_per_s=timing["ours"].median,
                    timm_images_per_s=timing["timm"].median,
                    ratio=paired_ratio(timing),
                    ours_runs=timing["ours"].images_per_s,
                    timm_runs=timing["timm"].images_per_s,
                )
                if compiled:
                    # Against the eager row just measured: separate timing runs, so a coarser number than the ratio.
                    eager = next(r for r in rows if r["model"] == name and r["mode"] == mode and not r["compiled"])
                    for side in MODELS:
                        row[f"{side}_compile_speedup"] = row[f"{side}_images_per_s"] / eager[f"{side}_images_per_s"]
                if measure_memory and not compiled:
                    memory = peak_memory_mb(spec, batch_size, mode, device=device, num_threads=torch.get_num_threads())
                    row.update(ours_peak_memory_mb=memory["ours"], timm_peak_memory_mb=memory["timm"])
                rows.append(row)
    return {
        "machine": machine_info(device),
        "timing": {
            "warmup": warmup,
            "repeats": repeats,
            "iters_per_repeat": iters,
            "statistic": "images/s: median of repeats; ratio: median of per-repeat ours/timm; interleaved turns",
        },
        "memory_method": "peak of a step above resident weights, optimizer state and inputs (see measure_step_memory)",
        "rows": rows,
    }


def format_benchmark(result: dict) -> str:
    """The benchmark as a Markdown table, then the machine."""
    lines = [
        "| model | batch | step | compiled | ours img/s | timm img/s | ours/timm | ours peak MiB | timm peak MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['batch_size']} | {row['mode']} | yes | {row['error']} | | | | |")
            continue
        memory = [f"{row[k]:.0f}" if k in row else "" for k in ("ours_peak_memory_mb", "timm_peak_memory_mb")]
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['mode']} | {'yes' if row['compiled'] else 'no'} | "
            f"{row['ours_images_per_s']:.2f} | {row['timm_images_per_s']:.2f} | {row['ratio']:.3f} | "
            f"{memory[0]} | {memory[1]} |"
        )
    speedups = [
        f"torch.compile speed-up, {row['model']} {row['mode']}: ours {row['ours_compile_speedup']:.3f}x, "
        f"timm {row['timm_compile_speedup']:.3f}x"
        for row in result["rows"]
        if row["compiled"] and "error" not in row
    ]
    if speedups:
        lines += [""] + speedups
    lines.append("")
    lines.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in result["machine"].items()))
    return "\n".join(lines)
