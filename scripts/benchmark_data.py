"""Images per second of the data pipelines on one core, on generated ImageNet-sized JPEGs, against the naive path."""

import argparse
import sys
import tempfile


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 500x375, got {text!r}")
    return int(width), int(height)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=50, help="rows a worker reads at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(500, 375), (1024, 768)],
        help="WIDTHxHEIGHT of the generated JPEGs (default: 500x375 1024x768)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from modeling_vit_custom.bench.data_pipelines import benchmark

    # One worker is one core: no intra-op threads.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        for width, height in args.sizes:
            results = benchmark(width, height, args.num_images, args.batch_size, args.repeats, args.quality, workdir)
            naive_rate = results[0][1]
            print(f"\n{width}x{height} JPEG, quality {args.quality}, {args.num_images} images", end="")
            print(f" in batches of {args.batch_size}, one core, 224 output")
            print("| pipeline | images/s | vs naive |")
            print("|---|---:|---:|")
            for name, rate in results:
                print(f"| {name} | {rate:.0f} | {rate / naive_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
