"""Write a resized copy of a dataset (shorter side 320, JPEG quality 90) as parquet shards, for faster epochs."""

import logging
from dataclasses import dataclass

from transformers import HfArgumentParser

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.data.arguments import DataArguments
from modeling_vit_custom.data.prepare import write_shrunk_parquet
from modeling_vit_custom.data.sources import load_datasets


@dataclass
class PrepareArguments:
    output_dir: str
    shorter_side: int = 320
    quality: int = 90
    # A multiple of processes x DataLoader workers, so streaming splits by shard (8 GPUs x 8 workers for ImageNet).
    train_shards: int = 64
    validation_shards: int = 8
    num_proc: int | None = None


def main():
    setup_logging()
    parser = HfArgumentParser((DataArguments, PrepareArguments), description=__doc__)
    data_args, prepare_args = parser.parse_args_into_dataclasses()
    if data_args.streaming:
        raise ValueError("--streaming: expected off; the copy is written from a map-style dataset")
    splits = load_datasets(data_args)
    for split, dataset, num_shards in (
        ("train", splits.train, prepare_args.train_shards),
        ("validation", splits.validation, prepare_args.validation_shards),
    ):
        paths = write_shrunk_parquet(
            dataset,
            prepare_args.output_dir,
            split,
            num_shards,
            shorter_side=prepare_args.shorter_side,
            quality=prepare_args.quality,
            num_proc=prepare_args.num_proc,
        )
        logging.info(
            "Wrote %s (%d images) in %d shards to %s", split, len(dataset), len(paths), prepare_args.output_dir
        )
    print(
        f"Train with --train_file '{prepare_args.output_dir}/train-*.parquet' "
        f"--validation_file '{prepare_args.output_dir}/validation-*.parquet'"
    )


if __name__ == "__main__":
    main()
