"""Convert a timm ViT (by name, or a local checkpoint) or a transformers ViT or DINOv2 folder to vit-custom."""

import argparse
import json
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--timm_model", help="timm architecture, e.g. vit_base_patch16_224 or a tag name.")
    source.add_argument("--hf_model", type=Path, help="Local transformers ViT or DINOv2 (with registers) folder.")
    parser.add_argument("--checkpoint", type=Path, help="Weights file (.safetensors/.bin/.pth) for --timm_model.")
    parser.add_argument("--pretrained", action="store_true", help="Download timm's weights (needs the Hub).")
    parser.add_argument("--num_labels", type=int, help="Classes of the new model; another count leaves the head new.")
    parser.add_argument("--output_dir", type=Path, required=True, help="Folder to write (empty or new).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty output_dir.")
    args = parser.parse_args(argv)
    if args.hf_model is not None and (args.checkpoint or args.pretrained):
        parser.error("--checkpoint and --pretrained go with --timm_model, not --hf_model")
    if args.checkpoint is not None and args.pretrained:
        parser.error("expected --checkpoint or --pretrained, got both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.interop.timm_conversion import convert_timm
    from modeling_vit_custom.interop.transformers_conversion import convert_hf_vit

    try:
        if args.hf_model is not None:
            record = convert_hf_vit(
                args.hf_model, args.output_dir, overwrite=args.overwrite, num_labels=args.num_labels
            )
        else:
            record = convert_timm(
                args.timm_model,
                args.output_dir,
                checkpoint=args.checkpoint,
                pretrained=args.pretrained,
                num_labels=args.num_labels,
                overwrite=args.overwrite,
            )
    except (OSError, ValueError, RuntimeError) as error:
        # Bad input (a file, a key, a feature we lack): the message says which; a traceback adds nothing.
        logging.getLogger("convert_timm").error("%s", error)
        return 1
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
