"""The measuring tools of the benchmarks: interleaved timing, FLOPs, peak memory, machine description, and the same
network as ours and as timm's with the same weights."""

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

from .. import ViTCustomForImageClassification
from ..interop.timm_conversion import from_timm
from ..training.models import logits_of

logger = logging.getLogger(__name__)

MODELS = ("ours", "timm")
# Dense bf16 / fp16 tensor throughput of the accelerators MFU is reported for (FLOP/s).
# Dense bf16 FLOP/s by the words of the device name, most specific first: "H100" alone is the SXM part.
PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
}
# AdamW as training.py builds it (fused, on CPU too); identical for both models, so the step compares the networks.
OPTIMIZER_SETTINGS = {"lr": 1e-4, "weight_decay": 0.05, "betas": (0.9, 0.999), "fused": True}
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


def inference_step(model: nn.Module, pixel_values: torch.Tensor) -> Callable[[], None]:
    """A callable running one eval-mode forward under `torch.inference_mode`."""
    model.eval()

    def step():
        with torch.inference_mode():
            logits_of(model, pixel_values)

    return step


def training_step(
    model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, autocast: torch.dtype | None = None
) -> Callable[[], torch.Tensor]:
    """A callable running forward, cross-entropy, backward, AdamW.step and zero_grad, in train mode, and returning
    the loss (detached, not read: no host sync). With `autocast` (torch.bfloat16), the forward runs under
    `torch.autocast` on the inputs' device, as accelerate's mixed precision runs it; weights, gradients and the AdamW
    state stay fp32 and the loss is computed in fp32. The step reads `pixel_values` and `labels` on every call, so a
    caller can refill them in place."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIMIZER_SETTINGS)

    def step() -> torch.Tensor:
        with torch.autocast(pixel_values.device.type, dtype=autocast, enabled=autocast is not None):
            logits = logits_of(model, pixel_values)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

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


def forward_flops_per_image(model: nn.Module, pixel_values: torch.Tensor) -> float:
    """Forward FLOPs per image of any model, counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add
    is 2), in eval mode (no dropout draws from the RNG a resumed run has just restored); the mode is put back."""
    was_training = model.training
    model.eval()
    # FlopCounterMode has no formula for the CPU flash-attention kernel; the math backend runs the same attention as
    # matmuls it does count.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits_of(model, pixel_values)
    model.train(was_training)
    return counter.get_total_flops() / pixel_values.shape[0]


def count_gflops(model: nn.Module, pixel_values: torch.Tensor) -> float:
    return forward_flops_per_image(model, pixel_values) / 1e9


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 throughput of the accelerator (FLOP/s) that MFU is reported against, when it is a known one."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(name: str) -> float | None:
    """The PEAK_FLOPS entry whose words appear, in order, among the words of a device name ("NVIDIA L40S" is the
    L40S, not the L4), or None for a device not in the table."""
    words = name.replace("-", " ").split()
    for key, flops in PEAK_FLOPS.items():
        wanted = key.split()
        if any(words[i : i + len(wanted)] == wanted for i in range(len(words))):
            return flops
    return None


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
        "import json, sys, torch; from modeling_vit_custom.bench.harness import measure_step_memory as m; "
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
