"""Evaluate a saved model folder, a converted checkpoint or `timm:<name>` on a dataset split (timm's validate.py).

    accelerate launch scripts/evaluate.py --model_name_or_path runs/quickstart/final --dataset_name fashion_mnist
    accelerate launch scripts/evaluate.py --model timm:vit_base_patch16_224 --checkpoint weights.safetensors \
        --validation_dir /data/imagenet/val
"""

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

# The repository root instead of scripts/, where evaluate.py would shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from modeling_vit_custom.data import DataArguments, load_datasets  # noqa: E402
from modeling_vit_custom.training import ModelArguments, load_for_evaluation, parse_args, run_evaluation  # noqa: E402
from modeling_vit_custom.transforms import Normalize, build_eval_transform  # noqa: E402

logger = get_logger(__name__)


@dataclass
class EvalArguments:
    checkpoint: str | None = None  # weights for timm:<name> (.safetensors, .bin or .pth)
    per_device_eval_batch_size: int = 128
    num_workers: int = 4
    mixed_precision: str | None = None  # default bf16 on GPU, no on CPU
    output_json: str | None = None
    seed: int = 0  # with --val_split_fraction: the training run's seed, so the same validation carve is evaluated


def main(argv: list[str] | None = None):
    model_args, data_args, args = parse_args((ModelArguments, DataArguments, EvalArguments), argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no"))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from modeling_vit_custom.data import ImageClassificationDataset, collate

    if data_args.streaming:
        raise ValueError("--streaming: evaluate.py reads the split with random access; run it without --streaming")
    with accelerator.main_process_first():
        splits = load_datasets(data_args, seed=args.seed, split="validation")
    model, settings = load_for_evaluation(model_args, args.checkpoint)
    num_classes = model.config.num_labels if hasattr(model, "config") else model.num_classes
    if num_classes != len(splits.class_names):
        raise ValueError(
            f"The model predicts {num_classes} classes, the dataset has {len(splits.class_names)}: "
            "evaluate on the dataset the model was trained for"
        )
    num_channels = model.config.num_channels if hasattr(model, "config") else 3
    dataset = ImageClassificationDataset(
        splits.validation, build_eval_transform(settings, num_channels), data_args.max_bad_image_fraction
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
    model, loader = accelerator.prepare(model, loader)
    start = time.perf_counter()
    result = run_evaluation(model, loader, Normalize(settings), accelerator)
    result["images_per_second"] = result["eval_samples"] / (time.perf_counter() - start)
    if accelerator.is_main_process:
        print(json.dumps(result, indent=2))
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
