"""Images per second of the data pipelines on one core, on generated ImageNet-sized JPEGs, against the naive path."""

import argparse
import tempfile

import torch

from modeling_vit_custom.bench.data_pipelines import benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=50, help="rows a worker reads at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument(
        "--sizes", nargs="+", default=["500x375", "1024x768"], help="WIDTHxHEIGHT of the generated JPEGs"
    )
    args = parser.parse_args()
    # One worker is one core: no intra-op threads.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            results = benchmark(width, height, args.num_images, args.batch_size, args.repeats, args.quality, workdir)
            naive_rate = results[0][1]
            print(f"\n{width}x{height} JPEG, quality {args.quality}, {args.num_images} images", end="")
            print(f" in batches of {args.batch_size}, one core, 224 output")
            print("| pipeline | images/s | vs naive |")
            print("|---|---:|---:|")
            for name, rate in results:
                print(f"| {name} | {rate:.0f} | {rate / naive_rate:.2f}x |")


if __name__ == "__main__":
    main()
