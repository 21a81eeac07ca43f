"""A saved model as one ONNX or torch.export file with dynamic batch, height and width, checked against the eager
model before it is written; an int8 ONNX variant and its measured speed and accuracy."""

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import check_model_folder, replacing

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
# Max abs difference of fp32 logits between the file and the eager model, at every checked size.
TOLERANCE = 1e-4
# The exporters specialise sizes 0 and 1: a grid has at least 2 tokens a side.
MIN_GRID, MAX_GRID = 2, 256


class ExportError(RuntimeError):
    """The model did not export, or the exported file does not reproduce the eager model."""


class LogitsOnly(nn.Module):
    """pixel_values (B, C, H, W), any size the model's token grid allows -> logits (B, num_labels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values, interpolate_pos_encoding=True).logits


def check_sizes(config) -> list[tuple[int, int, int]]:
    """(batch, height, width) checked after export: the model's own size, a larger non-square one and a smaller one
    (a convolutional stem also gets sizes it rounds up)."""
    size, unit = config.image_size, config.pixels_per_token
    odd = 1 if config.conv_stem_depth else 0
    small = max(size - unit, MIN_GRID * unit)
    return [(1, size, size), (3, size + 2 * unit, size + unit + odd), (2, small + odd, size + 3 * unit)]


def dynamic_shapes(config) -> dict:
    batch = torch.export.Dim("batch", min=1, max=4096)
    unit = config.pixels_per_token
    if config.conv_stem_depth:
        # The stem rounds each side up to whole tokens: any size in the range.
        height = torch.export.Dim("height", min=MIN_GRID * unit, max=MAX_GRID * unit)
        width = torch.export.Dim("width", min=MIN_GRID * unit, max=MAX_GRID * unit)
    else:
        height = unit * torch.export.Dim("grid_height", min=MIN_GRID, max=MAX_GRID)
        width = unit * torch.export.Dim("grid_width", min=MIN_GRID, max=MAX_GRID)
    return {"pixel_values": {0: batch, 2: height, 3: width}}


def _trace_input(config) -> torch.Tensor:
    # Not the model's own size: tracing at it would take the position embedding's no-resampling shortcut.
    unit = config.pixels_per_token
    size = config.image_size + unit
    return torch.randn(2, config.num_channels, size, size + unit)


def _export_onnx(wrapper: nn.Module, path: Path, config) -> None:
    program = torch.onnx.export(
        wrapper,
        (_trace_input(config),),
        dynamic_shapes=dynamic_shapes(config),
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))


def message_line(error: Exception, index: int) -> str:
    """Line `index` of an error's message, stripped (blank lines skipped), or its last line when the message is
    shorter, or the error's type for an empty message: one line for a one-line error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[min(index, len(lines) - 1)] if lines else type(error).__name__


def _export_torch(wrapper: nn.Module, path: Path, config) -> None:
    try:
        program = torch.export.export(wrapper, (_trace_input(config),), dynamic_shapes=dynamic_shapes(config))
    except torch._dynamo.exc.UserError as error:
        raise ExportError(
            f"torch.export could not keep height and width dynamic: {message_line(error, 1)} (the "
            "model's interpolate_pos_encoding returns the stored embedding unresampled at its own grid, a branch "
            "on the input size; see the README's Deploy section)"
        ) from error
    torch.export.save(program, str(path))


def runner(path: Path, fmt: str):
    """A function pixel_values (B, C, H, W) float32 tensor -> logits numpy array, running the exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda pixel_values: session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]
    module = torch.export.load(str(path)).module()

    def run(pixel_values: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(pixel_values).numpy()

    return run


def verify(path: Path, fmt: str, model: nn.Module, tolerance: float = TOLERANCE) -> list[dict]:
    """Runs the file at `check_sizes` and compares its logits with the eager model's; raises ExportError beyond
    `tolerance` or when the file refuses a size. Returns one {"batch", "height", "width", "max_abs_diff"} per size."""
    run = runner(path, fmt)
    config = model.config
    generator = torch.Generator().manual_seed(0)
    results = []
    for batch, height, width in check_sizes(config):
        pixel_values = torch.randn(batch, config.num_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = LogitsOnly(model)(pixel_values).float().numpy()
        try:
            logits = run(pixel_values)
        except Exception as error:  # each runtime raises its own types; the message is what the user needs
            raise ExportError(
                f"{fmt}: expected the file to run at batch {batch}, {height} x {width}, got "
                f"{type(error).__name__}: {message_line(error, 0)}"
            ) from error
        difference = float(np.abs(logits - expected).max())
        results.append({"batch": batch, "height": height, "width": width, "max_abs_diff": difference})
        if not difference <= tolerance:
            raise ExportError(
                f"{fmt}: expected logits within {tolerance:g} of the eager model at batch {batch}, {height} x "
                f"{width}, got max abs difference {difference:.3g}"
            )
    return results


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights of the matrix multiplications, activations quantized per
    call (for CPUs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def check_output(output: str | Path, fmt: str, int8: bool) -> Path:
    """Refuses, before any work, a format, suffix or int8 request that does not fit."""
    output = Path(output)
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    if output.suffix != FORMATS[fmt]:
        raise ValueError(f"--output: expected a {FORMATS[fmt]} file for --format {fmt}, got {output}")
    if output.is_dir():
        raise ValueError(f"--output: expected a file, got the folder {output}")
    if int8 and fmt != "onnx":
        raise ValueError(f"--int8: expected --format onnx (onnxruntime quantizes), got {fmt}")
    return output


def export_model(
    model_dir: str | Path,
    fmt: str,
    output: str | Path,
    int8: bool = False,
    measure: list[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """Exports the model in `model_dir` to `output` (written only once verified; with `int8`, the quantized file of
    the verified fp32 one); with `measure` (images, folders or globs), also times both ONNX files on those images and
    compares their predictions. Returns {"checks": [...], "int8": {...}, "measurement": [...]} as far as done."""
    from .. import ViTCustomForImageClassification

    output = check_output(output, fmt, int8)
    if measure and fmt != "onnx":
        raise ValueError(f"--measure: expected --format onnx (it compares fp32 and int8 ONNX files), got {fmt}")
    model_dir = Path(model_dir)
    check_model_folder(model_dir, "model_dir")
    model = ViTCustomForImageClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    wrapper = LogitsOnly(model).eval()
    report = {}
    with tempfile.TemporaryDirectory(prefix="vit-custom-export-") as tmp, replacing(output) as staging:
        fp32 = Path(tmp) / f"model{FORMATS[fmt]}" if int8 else staging
        (_export_onnx if fmt == "onnx" else _export_torch)(wrapper, fp32, model.config)
        report["checks"] = verify(fp32, fmt, model)
        logger.info("%s matches the eager model within %g at %s", fmt, TOLERANCE, _sizes(report["checks"]))
        if int8:
            quantize_int8(fp32, staging)
            report["int8"] = verify(staging, fmt, model, tolerance=float("inf"))
            logger.info("int8: max abs logit difference %s", _sizes(report["int8"], "max_abs_diff"))
        if measure:
            int8_path = staging if int8 else Path(tmp) / "model.int8.onnx"
            if not int8:
                quantize_int8(fp32, int8_path)
            report["measurement"] = measure_int8(fp32, int8_path, model_dir, measure, batch_size)
    return report


def _sizes(checks: list[dict], key: str | None = None) -> str:
    return ", ".join(
        f"{c['batch']} x {c['height']} x {c['width']}" + (f": {c[key]:.3g}" if key else "") for c in checks
    )


def measure_int8(
    fp32: Path, int8: Path, model_dir: Path, patterns: list[str], batch_size: int = 32, repeats: int = 5
) -> list[dict]:
    """Times the fp32 and int8 ONNX files on the images of `patterns` (preprocessed by the model folder's image
    processor; median of `repeats` passes after one warm-up) and compares their predictions: top-1 against the
    images' folder names where every one is a label of the model, and agreement with fp32. One row per file."""
    import onnxruntime
    from torch.utils.data import DataLoader

    from ..inference.images import find_images, load_classifier
    from ..inference.predict import ImageFiles, collate

    paths = find_images(patterns, flag="measure")
    model, processor = load_classifier(model_dir, flag="model_dir")
    label2id = {label: int(index) for index, label in model.config.id2label.items()}
    multi_label = model.config.problem_type == "multi_label_classification"
    files = ImageFiles(paths, processor, model.config.num_channels)
    batches, labels = [], []
    for indices, pixel_values, errors in DataLoader(files, batch_size, collate_fn=collate):
        for index, error in errors:
            logger.warning("--measure: skipping unreadable %s (%s)", paths[index], error)
        if pixel_values is not None:
            batches.append(pixel_values.numpy())
            labels += [label2id.get(paths[index].parent.name) for index in indices]
    if not batches:
        raise ValueError(f"--measure: expected readable images in {patterns}, got none")
    rows = []
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = np.concatenate([session.run(["logits"], {"pixel_values": batch})[0] for batch in batches])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                session.run(["logits"], {"pixel_values": batch})
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "file": name,
                "megabytes": path.stat().st_size / 2**20,
                "images_per_s": len(labels) / statistics.median(times),
                "top1": (
                    float(np.mean(logits.argmax(-1) == np.array(labels)))
                    if None not in labels and not multi_label
                    else None
                ),
                "logits": logits,
            }
        )

    def decisions(logits: np.ndarray) -> np.ndarray:
        return logits > 0 if multi_label else logits.argmax(-1)

    reference = rows[0].pop("logits")
    for row in rows[1:]:
        logits = row.pop("logits")
        row["agreement"] = float(np.mean(decisions(logits) == decisions(reference)))
        row["max_abs_diff"] = float(np.abs(logits - reference).max())
    rows[0].update(agreement=1.0, max_abs_diff=0.0)
    for row in rows:
        row["speedup"] = row["images_per_s"] / rows[0]["images_per_s"]
        row["images"] = len(labels)
        row["agreement_of"] = "per-class (p > 0.5)" if multi_label else "top-1"
    return rows


def format_measurement(rows: list[dict]) -> str:
    """The measurement as a Markdown table."""
    agreement = f"{rows[0]['agreement_of']} agreement with fp32"
    lines = [
        f"| file | MB | images/s | speed-up | top-1 | {agreement} | max abs logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        top1 = "n/a" if row["top1"] is None else f"{100 * row['top1']:.2f}%"
        lines.append(
            f"| {row['file']} | {row['megabytes']:.2f} | {row['images_per_s']:.1f} | {row['speedup']:.2f}x | "
            f"{top1} | {100 * row['agreement']:.2f}% | {row['max_abs_diff']:.3g} |"
        )
    return "\n".join(lines) + f"\n\n{rows[0]['images']} images."
