"""A Gradio page for a saved model or a Hub model: upload an image (or pick an example) and see the top classes, the
class token's last-layer attention and the attention rollout over the image, and the model's time.

    python scripts/demo.py runs/quickstart/final
    python scripts/demo.py user/vit-custom-fashion-mnist --revision v1 --port 7861
"""

import argparse
import logging
import sys

from modeling_vit_custom.cli import setup_logging

logger = logging.getLogger("demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", metavar="MODEL", help="A saved model folder, or a Hub model id (cached when offline)."
    )
    parser.add_argument("--revision", help="The Hub model's revision (tag, branch or commit hash).")
    parser.add_argument(
        "--examples", nargs="+", help="Example images: files, folders or globs (default: matplotlib's sample photo)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="Also serve through a public gradio.live link.")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="A multi-label model shows the classes above this probability."
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu).")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port: expected a port number in 1-65535, got {args.port}")
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold: expected a probability in (0, 1), got {args.threshold}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.inference.demo import Classifier, build_app, sample_photos
    from modeling_vit_custom.inference.images import device_of, find_images

    try:
        examples = find_images(args.examples, flag="--examples") if args.examples else sample_photos()
        classifier = Classifier.load(args.model, args.revision, device_of(args.device), args.threshold)
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    build_app(classifier, examples).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
