"""The training loop's speed against the model's own (forward, backward, optimizer step on tensors in memory), same
machine and threads, with the loop's time split by phase; prints a table."""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.bench.recipes import RECIPES
from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.files import write_json

CHECKOUT = Path(__file__).resolve().parents[1]  # the train script and recipes the benchmark runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog="Absolute numbers vary by machine; compare ratios.")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument(
        "--num_threads", type=int, default=2, help="torch threads of the run and of the model-only step."
    )
    parser.add_argument("--quickstart_steps", type=int, default=600, help="Training steps of the quickstart run.")
    parser.add_argument("--vit_s16_steps", type=int, default=16, help="Training steps of the ViT-S/16 run.")
    parser.add_argument("--json", type=Path, default=Path("runs/benchmark_loop.json"))
    args = parser.parse_args(argv)
    for name in ("num_threads", "quickstart_steps", "vit_s16_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.bench.loop import format_loop_efficiency, loop_efficiency

    steps = {"quickstart": args.quickstart_steps, "vit_s16_generated": args.vit_s16_steps}
    try:
        result = loop_efficiency(args.recipes, args.num_threads, steps, CHECKOUT)
    except (OSError, ValueError, RuntimeError) as error:
        logging.getLogger("benchmark_loop").error("%s", error)
        return 1
    write_json(result, args.json)
    print(format_loop_efficiency(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
