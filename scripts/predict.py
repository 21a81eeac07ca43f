"""Predict the top-k labels of many images with a saved model, with the preprocessing saved beside it (as
`pipeline("image-classification")`), into JSON lines or CSV; unreadable files are listed, not fatal.

    python scripts/predict.py --model runs/quickstart/final "photos/**/*.jpg" more/ --output preds.jsonl
"""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files, folders (searched recursively) or glob patterns.")
    parser.add_argument("--model", required=True, type=Path, help="A saved model folder (training's final/ or best/).")
    parser.add_argument("--output", required=True, type=Path, help="preds.jsonl (one JSON object a line) or .csv.")
    parser.add_argument("--top_k", type=int, default=5, help="Labels per image (at most the model's).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader processes decoding the images.")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.inference.images import device_of
    from modeling_vit_custom.inference.predict import check_output_path, predict, write_predictions

    try:
        check_output_path(args.output)
        rows = list(
            predict(
                args.model,
                args.images,
                top_k=args.top_k,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                device=device_of(args.device),
            )
        )
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    write_predictions(rows, args.output)
    unreadable = [row for row in rows if "error" in row]
    for row in unreadable:
        logger.warning("unreadable: %s (%s)", row["path"], row["error"])
    logger.info("%d images predicted, %d unreadable -> %s", len(rows) - len(unreadable), len(unreadable), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
