"""Draw where a saved model looks: per image, the class token's last-layer attention (mean and per head) and
attention rollout over the image, as one PNG.

    python scripts/visualize_attention.py --model runs/quickstart/final shoe.png "photos/**/*.jpg" --output_dir maps
"""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files, folders (searched recursively) or glob patterns.")
    parser.add_argument("--model", required=True, type=Path, help="A saved model folder (training's final/ or best/).")
    parser.add_argument("--output_dir", required=True, type=Path, help="Folder for one <image name>.png per image.")
    parser.add_argument(
        "--image_size", type=int, help="Crop to this size instead of the model's (interpolated position embeddings)."
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.inference.attention_maps import write_attention_figures
    from modeling_vit_custom.inference.images import device_of

    try:
        written = write_attention_figures(
            args.model, args.images, args.output_dir, image_size=args.image_size, device=device_of(args.device)
        )
    except (OSError, ValueError) as error:
        logging.getLogger("visualize_attention").error("%s", error)
        return 1
    print("\n".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
