"""Same-weights comparison of vit-custom with timm: interleaved timing, FLOPs, peak memory, logits and accuracy."""

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .conversion import from_timm, max_abs_logit_diff
from .modeling_vit_custom import ViTCustomForImageClassification

logger = logging.getLogger(__name__)

MODELS = ("ours", "timm")
# AdamW as training.py builds it (fused, on CPU too); identical for both models, so the step compares the networks.
OPTIMIZER_SETTINGS = {"lr": 1e-4, "weight_decay": 0.05, "betas": (0.9, 0.999), "fused": True}
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
# A fixed mmap threshold makes glibc return every freed tensor above 64 KiB to the OS at once, so resident memory
# follows live tensors instead of what the allocator happens to keep cached.
MEMORY_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def machine_info(device: str = "cpu") -> dict:
    """CPU, thread count, library versions and the accelerator, as a flat dict of strings and numbers."""
    info = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_timm(spec: str | dict) -> VisionTransformer:
    """timm model by name (random weights, nothing downloaded) or from VisionTransformer keyword arguments."""
    torch.manual_seed(0)
    model = timm.create_model(spec, pretrained=False) if isinstance(spec, str) else VisionTransformer(**spec)
    return model.eval()


def build_pair(spec: str | dict, device: str = "cpu") -> tuple[ViTCustomForImageClassification, VisionTransformer]:
    """(ours, timm) with the same weights, fp32, eval mode, on `device`."""
    timm_model = build_timm(spec)
    ours = from_timm(timm_model)
    return ours.to(device).eval(), timm_model.to(device).eval()


def example_batch(model: nn.Module, batch_size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixel_values (B, C, H, W) and labels (B,) at the model's own resolution, seeded."""
    if isinstance(model, ViTCustomForImageClassification):
        channels, size, classes = model.config.num_channels, model.config.image_size, model.config.num_labels
    else:
        channels, size, classes = model.in_chans, model.patch_embed.img_size[0], model.num_classes
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, channels, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch_size,), generator=generator)
    return pixel_values.to(device), labels.to(device)


def _logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values)
    return out.logits if hasattr(out, "logits") else out


def inference_step(model: nn.Module, pixel_values: torch.Tensor) -> Callable[[], None]:
    """A callable running one eval-mode forward under `torch.inference_mode`."""
    model.eval()

    def step():
        with torch.inference_mode():
            _logits(model, pixel_values)

    return step


def training_step(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """A callable running forward, cross-entropy, backward, AdamW.step and zero_grad, in train mode."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIMIZER_SETTINGS)

    def step():
        loss = F.cross_entropy(_logits(model, pixel_values).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Images/s of each repeat, in the order run, and their median."""

    images_per_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


def paired_ratio(timings: dict[str, Timing], numerator: str = "ours", denominator: str = "timm") -> float:
    """Median over repeats of the ratio of the two turns of that repeat: the turns ran back to back, so on a shared
    machine each pair saw nearly the same load, and a burst of load spoils one pair rather than a whole median."""
    pairs = zip(timings[numerator].images_per_s, timings[denominator].images_per_s, strict=True)
    return statistics.median(a / b for a, b in pairs)


def interleaved_throughput(
    steps: dict[str, Callable[[], None]],
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
    iters: int = 1,
    device: str = "cpu",
) -> dict[str, Timing]:
    """Images/s of each step function, measured in turns within one process.

    Each repeat times `iters` calls of every function back to back, reversing the order on every repeat, so a
    load change on a shared machine or a thermal drift hits both sides alike; `paired_ratio` is the result.
    """
    if warmup < 0 or repeats < 1 or iters < 1:
        raise ValueError(f"warmup, repeats, iters: expected >= 0, >= 1, >= 1, got {warmup}, {repeats}, {iters}")
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    timings = {name: Timing() for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[name]()
            _sync(device)
            timings[name].images_per_s.append(batch_size * iters / (time.perf_counter() - start))
    return timings


def count_gflops(model: nn.Module, pixel_values: torch.Tensor) -> float:
    """Forward GFLOPs per image, counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2)."""
    model.eval()
    # FlopCounterMode has no formula for the CPU flash-attention kernel; the math backend runs the same attention as
    # matmuls it does count.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _logits(model, pixel_values)
    return counter.get_total_flops() / pixel_values.shape[0] / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status: expected a VmHWM line, found none")


def measure_step_memory(
    which: str, spec: str | dict, batch_size: int, mode: str = "train", steps: int = 2, device: str = "cpu"
) -> float:
    """Peak memory (MiB) of a step (`mode` "train" or "inference") above what is resident before it: weights,
    AdamW state, inputs.

    On CUDA: `torch.cuda.max_memory_allocated` minus the allocated bytes before the steps. On CPU, the rise of this
    process's peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs) over its resident memory after a
    warm-up step; call it through `peak_memory_mb`, which gives each model a fresh process and an allocator that
    returns freed tensors to the OS.
    """
    if which not in MODELS or mode not in ("train", "inference"):
        raise ValueError(f"which, mode: expected one of {MODELS} and 'train' or 'inference', got {which!r}, {mode!r}")
    ours, timm_model = build_pair(spec, device)
    model = ours if which == "ours" else timm_model
    del ours, timm_model
    pixel_values, labels = example_batch(model, batch_size, device)
    step = training_step(model, pixel_values, labels) if mode == "train" else inference_step(model, pixel_values)
    step()  # the first step allocates what later steps keep resident (the AdamW state when training)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    for _ in range(steps):
        step()
    return (_peak_rss_bytes() - before) / 2**20


def peak_memory_mb(
    spec: str | dict,
    batch_size: int,
    mode: str = "train",
    steps: int = 2,
    device: str = "cpu",
    num_threads: int | None = None,
) -> dict[str, float]:
    """{"ours": MiB, "timm": MiB} from `measure_step_memory`, each model in its own fresh Python process so neither
    inherits the other's allocator state."""
    result = {}
    env = {**os.environ, **MEMORY_CHILD_ENV}
    code = (
        "import json, sys, torch; from modeling_vit_custom.benchmarking import measure_step_memory as m; "
        "a = json.loads(sys.argv[1]); a['threads'] and torch.set_num_threads(a['threads']); "
        "print(json.dumps(m(a['which'], a['spec'], a['batch_size'], a['mode'], a['steps'], a['device'])))"
    )
    for which in MODELS:
        args = {"which": which, "spec": spec, "batch_size": batch_size, "mode": mode, "steps": steps}
        args.update(device=device, threads=num_threads)
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, timeout=1800
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory measurement of {which} failed:\n{done.stderr[-2000:]}")
        result[which] = float(done.stdout.strip().splitlines()[-1])
    return result


@torch.no_grad()
def top_k_accuracy(
    models: dict[str, nn.Module], dataset, transform, batch_size: int = 32, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """{"ours": {"top1", "top5"}, "timm": {...}} on a `datasets` split with "image" and "label" columns, every model
    seeing the same tensors from the same transform."""
    correct = {name: {"top1": 0, "top5": 0} for name in models}
    total = 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        pixel_values = torch.stack([transform(image.convert("RGB")) for image in rows["image"]]).to(device)
        labels = torch.as_tensor(rows["label"], device=device)
        total += len(labels)
        for name, model in models.items():
            logits = _logits(model.eval(), pixel_values)
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            correct[name]["top1"] += (top[:, 0] == labels).sum().item()
            correct[name]["top5"] += (top == labels[:, None]).any(dim=-1).sum().item()
    if total == 0:
        raise ValueError("dataset: expected at least one image, got none")
    return {name: {k: v / total for k, v in counts.items()} for name, counts in correct.items()}


def load_eval_dataset(path: str | os.PathLike, max_samples: int | None = None, split: str | None = None):
    """A local image folder (imagefolder layout) or parquet file as a `datasets` split with image and label."""
    import datasets

    path = Path(path)
    if path.is_dir():
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    elif path.suffix == ".parquet" and path.is_file():
        loaded = datasets.load_dataset("parquet", data_files=str(path))
    else:
        raise ValueError(f"dataset: expected an image folder or a .parquet file, got {path}")
    split = split or ("validation" if "validation" in loaded else "test" if "test" in loaded else "train")
    if split not in loaded:
        raise ValueError(f"dataset {path}: expected split {split!r}, got {sorted(loaded)}")
    ds = loaded[split]
    for column in ("image", "label"):
        if column not in ds.column_names:
            raise ValueError(f"dataset {path}: expected a {column!r} column, got {ds.column_names}")
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


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


def write_json(data: dict, path: str | os.PathLike) -> None:
    """JSON written under a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def plot_ratios(result: dict, path: str | os.PathLike) -> None:
    """Bar chart of ours/timm per metric (1.0 = parity) as a PNG, written under a temporary name and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["metric"] != "max_abs_logit_diff"]
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh([row["metric"] for row in rows], [row["ratio"] for row in rows], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("ours / timm")
    ax.set_title(f"vit-custom vs timm {result['timm_model']}, batch {result['batch_size']}")
    for i, row in enumerate(rows):
        ax.text(row["ratio"], i, f" {row['ratio']:.3f}", va="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


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
    """Issue 7's table: for each (model, batch), inference and training-step images/s of ours and timm (interleaved,
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
