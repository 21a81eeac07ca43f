"""Write a resized copy of a dataset (shorter side 320, JPEG quality 90) as parquet shards, for faster epochs."""

import logging
import sys
from dataclasses import dataclass

from modeling_vit_custom.cli import run_cli, setup_logging
from modeling_vit_custom.data.arguments import DataArguments
from modeling_vit_custom.training.arguments import FlagParser


@dataclass
class PrepareArguments:
    output_dir: str
    shorter_side: int = 320
    quality: int = 90
    # A multiple of processes x DataLoader workers, so streaming splits by shard (8 GPUs x 8 workers for ImageNet).
    train_shards: int = 64
    validation_shards: int = 8
    num_proc: int | None = None
    overwrite: bool = False

    def __post_init__(self):
        for name in ("shorter_side", "train_shards", "validation_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality: expected a JPEG quality in [1, 100], got {self.quality!r}")


def parse_args(argv: list[str] | None = None) -> tuple[DataArguments, PrepareArguments]:
    parser = FlagParser((DataArguments, PrepareArguments), description=__doc__)
    try:
        data_args, prepare_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # a value the dataclasses refuse: one line, exit code 2
        parser.error(str(error))
    if data_args.streaming:
        parser.error("--streaming: expected off; the copy is written from a map-style dataset")
    return data_args, prepare_args


def main(argv: list[str] | None = None) -> None:
    data_args, prepare_args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.data.prepare import write_prepared_copy
    from modeling_vit_custom.data.sources import load_datasets

    splits = load_datasets(data_args)
    written = write_prepared_copy(
        {
            "train": (splits.train, prepare_args.train_shards),
            "validation": (splits.validation, prepare_args.validation_shards),
        },
        prepare_args.output_dir,
        overwrite=prepare_args.overwrite,
        shorter_side=prepare_args.shorter_side,
        quality=prepare_args.quality,
        num_proc=prepare_args.num_proc,
    )
    for split, paths in written.items():
        logging.info("Wrote %s in %d shards to %s", split, len(paths), prepare_args.output_dir)
    print(
        f"Train with --train_file '{prepare_args.output_dir}/train-*.parquet' "
        f"--validation_file '{prepare_args.output_dir}/validation-*.parquet'"
    )


if __name__ == "__main__":
    sys.exit(run_cli("prepare_dataset.py", main))
