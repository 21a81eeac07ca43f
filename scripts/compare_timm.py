"""Side by side: vit-custom and a timm ViT with the same weights; prints a table, writes JSON and a PNG chart."""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.files import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timm_model", default="vit_base_patch16_224", help="Any plain timm ViT name.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps of each model before timing.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed, interleaved repeats; the median is reported.")
    parser.add_argument("--iters", type=int, default=1, help="Steps per timed repeat.")
    parser.add_argument("--num_threads", type=int, help="torch threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--dataset", type=Path, help="Image folder or .parquet file for top-1/top-5 of both.")
    parser.add_argument("--max_eval_samples", type=int, help="Evaluate on at most this many images.")
    parser.add_argument("--no_memory", action="store_true", help="Skip the peak-memory measurement.")
    parser.add_argument("--json", type=Path, default=Path("runs/comparison.json"), help="Where to write the JSON.")
    parser.add_argument("--plot", type=Path, help="Where to write the PNG chart (default: the JSON's name, .png).")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size: expected a positive integer, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.bench.compare import compare, format_rows, plot_ratios

    try:
        result = compare(
            args.timm_model,
            batch_size=args.batch_size,
            warmup=args.warmup,
            repeats=args.repeats,
            iters=args.iters,
            device=args.device,
            num_threads=args.num_threads,
            dataset_path=args.dataset,
            max_eval_samples=args.max_eval_samples,
            measure_memory=not args.no_memory,
        )
    except (OSError, ValueError, RuntimeError) as error:
        logging.getLogger("compare_timm").error("%s", error)
        return 1
    write_json(result, args.json)
    plot_ratios(result, args.plot or args.json.with_suffix(".png"))
    print(f"{result['timm_model']}, batch {result['batch_size']}, {result['machine']}")
    print(format_rows(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
