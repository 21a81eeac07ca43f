"""Export a saved model to ONNX or torch.export with dynamic batch, height and width; the file is written only when
its logits match the eager model's within 1e-4 at three sizes. `--int8` writes onnxruntime's dynamic int8
quantization of the verified file; `--measure` times fp32 and int8 on images and compares their top-1.

    python scripts/export.py runs/quickstart/final --format onnx --output exports/quickstart.onnx
    python scripts/export.py runs/quickstart/final --format onnx --int8 --output exports/quickstart.int8.onnx \
        --measure data/fashion_mnist_test/
"""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="A saved model folder (training's final/ or best/).")
    parser.add_argument("--format", required=True, choices=["onnx", "torch_export"])
    parser.add_argument("--output", required=True, type=Path, help="The file: .onnx, or .pt2 for torch_export.")
    parser.add_argument("--int8", action="store_true", help="Write the int8 (dynamic quantization) ONNX file.")
    parser.add_argument(
        "--measure",
        nargs="+",
        metavar="IMAGES",
        help="Images, folders or globs to time fp32 and int8 on; top-1 is counted when each image's folder is named "
        "after its label (an imagefolder).",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Batch of the --measure timing.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.interop.export import ExportError, export_model, format_measurement

    try:
        report = export_model(
            args.model_dir, args.format, args.output, int8=args.int8, measure=args.measure, batch_size=args.batch_size
        )
    except (OSError, ValueError, ExportError) as error:
        logger.error("%s", error)
        return 1
    if "measurement" in report:
        print(format_measurement(report["measurement"]))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
