"""The check to run on a lent GPU (at most 10 minutes): ViT-B/16 training-step images/s and MFU against timm in bf16,
eager and compiled; bf16 against fp32 on a 200-step run; DataLoader images/s. Prints one table, writes the JSON;
exits 1 when bf16 fails against fp32, 2 when an option is refused."""

import argparse
import logging
import os
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.files import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu with --tiny.")
    parser.add_argument(
        "--tiny", action="store_true", help="A tiny ViT, small batches, few steps: the same check in seconds on a CPU."
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=len(os.sched_getaffinity(0)),  # all the cores this process may use
        help="DataLoader workers for the data part.",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        help="Peak dense bf16 TFLOP/s for MFU on a device the harness does not know (default: its table).",
    )
    parser.add_argument("--json", type=Path, default=Path("runs/gpu_check.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(timestamps=True)
    from modeling_vit_custom.bench.gpu_check import FULL, TINY, check_options, format_table, resolve_device, run_check

    try:
        device = resolve_device(args.device, args.tiny)
        check_options(args.num_workers, args.peak_tflops)
        taken = next((p for p in args.json.parents if p.exists()), None)
        if taken is not None and not taken.is_dir():
            raise ValueError(f"--json {args.json}: expected a file in a folder, got the file {taken} in its path")
        result = run_check(TINY if args.tiny else FULL, device, args.num_workers, args.peak_tflops)
    except ValueError as error:
        logging.getLogger("gpu_check").error("%s", error)
        return 2
    write_json(result, args.json)
    print(format_table(result))
    return 0 if result["precision"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
