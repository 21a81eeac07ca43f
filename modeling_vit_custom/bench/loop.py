"""How close the training loop runs to the model's own speed (`scripts/benchmark_loop.py`): a short real run of
`scripts/train.py` against the model-only step (forward, backward and the loop's optimizer step on tensors already in
memory), on the same machine with the same threads, and where the loop's time goes. The run is a repository
checkout's (`recipes.py`)."""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.arguments import AugmentArguments, DataArguments
from ..data.transforms import memory_format
from ..training.arguments import ModelArguments, TrainingArguments, parse_args
from ..training.models import build_model, classification_loss, create_optimizer, logits_of
from ..training.run_log import read_run
from ..training.timing import STEP_PHASES
from .harness import machine_info
from .recipes import ACCELERATE_CONFIG, TRAIN_SCRIPT, check_checkout, recipe_argv

NUM_CLASSES = 10  # Fashion-MNIST's, and the generated folder's


def write_generated_images(root: Path, num_classes: int = NUM_CLASSES, per_class: int = 24, size: int = 256) -> Path:
    """An image folder of random-noise JPEGs (train/ and validation/, `per_class` and a quarter of that per class)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("validation", max(1, per_class // 4))):
        for label in range(num_classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def model_only_images_per_s(argv: list[str], num_classes: int, steps: int, warmup: int = 3) -> tuple[float, int]:
    """Images/s of the recipe's model doing forward, the loop's loss, backward and the loop's optimizer step on one
    batch held in memory (already normalized), in this process with torch's current threads, denormal floats flushed
    to zero; compiled first if the recipe says --torch_compile."""
    model_args, _, _, args = parse_args((ModelArguments, DataArguments, AugmentArguments, TrainingArguments), argv)
    model, settings = build_model(model_args, [str(i) for i in range(num_classes)])
    layout = memory_format(args.channels_last)
    model.to(memory_format=layout).train()
    if args.torch_compile:  # as train.py: in place; the warm-up steps compile it
        model.compile()
    optimizer = create_optimizer(model, args, args.learning_rate)
    batch = args.per_device_train_batch_size
    pixel_values = torch.randn(batch, settings.num_channels, settings.image_size, settings.image_size)
    pixel_values = pixel_values.contiguous(memory_format=layout)
    labels = torch.randint(0, num_classes, (batch,))

    def step():
        loss = classification_loss(logits_of(model, pixel_values), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Trained on one batch step after step, the model's values can fall below float32's normal range (denormals),
    # which a CPU computes many times slower, and the measurement sinks while it runs; a real run's images/s stay
    # flat. Flushing them to zero while timing keeps the model-only step the model's own speed.
    torch.set_flush_denormal(True)
    try:
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
    finally:
        torch.set_flush_denormal(False)
    return steps * batch / seconds, batch


def run_loop(argv: list[str], checkout: Path, output_dir: Path, num_threads: int, max_train_steps: int) -> dict:
    """A real `accelerate launch scripts/train.py` run (the checkout's) of `max_train_steps` steps; returns its
    summary."""
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch",
        "--config_file", str(checkout / ACCELERATE_CONFIG), "--num_cpu_threads_per_process", str(num_threads),
        str(checkout / TRAIN_SCRIPT), *argv, "--output_dir", str(output_dir), "--max_train_steps",
        str(max_train_steps), "--report_to", "none",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"the training run failed ({result.returncode}): {result.stderr[-2000:]}")
    record = read_run(output_dir)
    return {
        "wall_s": wall,
        "summary": record.summary,
        "compiled": record.config["torch_compile"],
        "in_memory": "Data decoded once into memory" in result.stderr,
    }


def loop_efficiency(recipes: list[str], num_threads: int, max_train_steps: dict[str, int], checkout: Path) -> dict:
    """For each recipe: the model-only step's images/s (a quarter of the run's steps timed before the run and as many
    after, averaged), the loop's images/s over its training steps, their ratio, and the loop's seconds per phase;
    `checkout` is the repository whose train script and recipes run."""
    check_checkout(checkout, recipes)
    torch.set_num_threads(num_threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data_root = write_generated_images(scratch / "generated") if "vit_s16_generated" in recipes else None
        for name in recipes:
            argv = recipe_argv(name, checkout, data_root)
            model_steps = max(3, max_train_steps[name] // 4)
            before, batch_size = model_only_images_per_s(argv, NUM_CLASSES, model_steps)
            loop = run_loop(argv, checkout, scratch / name, num_threads, max_train_steps[name])
            after, _ = model_only_images_per_s(argv, NUM_CLASSES, model_steps)
            summary = loop["summary"]
            seconds = summary.phase_seconds
            step_seconds = sum(seconds[phase] for phase in STEP_PHASES)
            # A compiled run's first step is timed as "compile": its batch is not in the steps' seconds either.
            loop_images = summary.train_images - (batch_size if loop["compiled"] else 0)
            loop_images_per_s = loop_images / step_seconds
            model_images_per_s = (before + after) / 2
            rows.append(
                {
                    "recipe": name,
                    "batch_size": batch_size,
                    "in_memory": loop["in_memory"],
                    "train_images": summary.train_images,
                    "model_only_images_per_s": model_images_per_s,
                    "model_only_runs": [before, after],
                    "loop_images_per_s": loop_images_per_s,
                    "ratio": loop_images_per_s / model_images_per_s,
                    "phase_seconds": seconds,
                    "wall_s": loop["wall_s"],
                    "final_eval_top1": summary.final_eval_top1,
                }
            )
    return {"machine": machine_info("cpu"), "num_threads": num_threads, "rows": rows}


def format_loop_efficiency(result: dict) -> str:
    """The benchmark as a Markdown table (the step phases as shares of the training steps' time), then the machine."""
    lines = [
        "| recipe | batch | data path | images | model-only img/s | loop img/s | loop / model | "
        + " | ".join(STEP_PHASES)
        + " | compile s | evaluation s | checkpoint s | wall s |",
        "|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(STEP_PHASES) + "---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        seconds = row["phase_seconds"]
        step_seconds = sum(seconds[phase] for phase in STEP_PHASES)
        shares = " | ".join(f"{100 * seconds[phase] / step_seconds:.1f}%" for phase in STEP_PHASES)
        lines.append(
            f"| {row['recipe']} | {row['batch_size']} | {'in memory' if row['in_memory'] else 'workers'} | "
            f"{row['train_images']} | "
            f"{row['model_only_images_per_s']:.4g} | {row['loop_images_per_s']:.4g} | {row['ratio']:.3f} | {shares} | "
            + " | ".join(f"{seconds[phase]:.2f}" for phase in ("compile", "evaluation", "checkpoint"))
            + f" | {row['wall_s']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"{result['num_threads']} torch threads for both. Model-only: forward, loss, backward and optimizer step on "
        "one batch in memory (the mean of a measurement before and one after the run). Loop: the run's training "
        "images over the seconds of its training steps (compilation, evaluation and checkpoints excluded, listed "
        "apart)."
    )
    lines.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in result["machine"].items()))
    return "\n".join(lines)
