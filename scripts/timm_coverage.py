"""Convert every ViT architecture of timm's vision_transformer.py (depth 1, random weights) to vit-custom and back;
write the table of which convert with the same logits and why the rest are refused (docs/timm_coverage.md)."""

import argparse
import logging
import platform
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.files import write_json, write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("docs/timm_coverage.md"), help="Markdown table to write.")
    parser.add_argument("--json", type=Path, default=Path("runs/timm_coverage.json"), help="The rows as JSON.")
    parser.add_argument("--small", action="store_true", help="A small width and image (as the test), not timm's.")
    parser.add_argument("--names", nargs="+", help="Only these architectures.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    import torch
    from tqdm import tqdm

    from modeling_vit_custom.interop.timm_coverage import architectures, as_dicts, check_architecture, coverage_table

    names = args.names or architectures()
    rows = [check_architecture(name, small=args.small) for name in tqdm(names, desc="architectures")]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    write_text(args.output, coverage_table(rows, machine, small=args.small))
    write_json(as_dicts(rows), args.json)
    converted = sum(row.status == "converted" for row in rows)
    logging.getLogger("timm_coverage").info("%d of %d converted; table in %s", converted, len(rows), args.output)
    return 0 if all(row.status != "wrong logits" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
