"""Throughput and peak memory of vit-custom against timm (same weights, interleaved timing); prints a table."""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.files import write_json


def parse_model(text: str) -> tuple[str, int]:
    name, sep, batch = text.rpartition(":")
    if not sep or not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:BATCH such as vit_tiny_patch16_224:32, got {text!r}")
    return name, int(batch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog="Absolute numbers vary by machine; compare ratios.")
    parser.add_argument(
        "--models",
        nargs="+",
        type=parse_model,
        # ViT-B/16 at batch 8 and ViT-Ti/16 at batch 32: the sizes the README's speed table reports.
        default=[("vit_base_patch16_224", 8), ("vit_tiny_patch16_224", 32)],
        help="timm names with batch sizes, NAME:BATCH.",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--num_threads", type=int, help="torch threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="Also time both under torch.compile.")
    parser.add_argument("--no_memory", action="store_true", help="Skip the peak-memory measurement.")
    parser.add_argument("--json", type=Path, default=Path("runs/benchmark.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.bench.throughput import benchmark, format_benchmark

    try:
        result = benchmark(
            args.models,
            warmup=args.warmup,
            repeats=args.repeats,
            iters=args.iters,
            device=args.device,
            num_threads=args.num_threads,
            compile=args.compile,
            measure_memory=not args.no_memory,
        )
    except (OSError, ValueError, RuntimeError) as error:
        logging.getLogger("benchmark").error("%s", error)
        return 1
    write_json(result, args.json)
    print(format_benchmark(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
