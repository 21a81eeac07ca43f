"""Evaluate a saved model folder, a converted checkpoint or `timm:<name>` on a dataset split (timm's validate.py):
loss, top-1 and top-5, or for a multi-label model and split (Sequence(ClassLabel) labels) loss, mAP and F1 at 0.5.

    accelerate launch scripts/evaluate_model.py --model_name_or_path runs/quickstart/final --dataset_name fashion_mnist
    accelerate launch scripts/evaluate_model.py --model timm:vit_base_patch16_224 --checkpoint weights.safetensors \
        --validation_dir /data/imagenet/val
"""

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from modeling_vit_custom.cli import run_cli, setup_logging
from modeling_vit_custom.data.arguments import DataArguments
from modeling_vit_custom.files import write_json
from modeling_vit_custom.training.arguments import ModelArguments, parse_args

logger = logging.getLogger(__name__)


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
    if data_args.streaming:
        raise ValueError(
            "--streaming: evaluate_model.py reads the split with random access; run it without --streaming"
        )
    import torch
    from accelerate import Accelerator

    from modeling_vit_custom.data.decoding import ImageClassificationDataset, check_bad_images, collate
    from modeling_vit_custom.data.sources import load_datasets
    from modeling_vit_custom.data.transforms import EvalTransform, Normalize
    from modeling_vit_custom.interop.loading import load_for_evaluation, split_for
    from modeling_vit_custom.training.evaluation import run_evaluation
    from modeling_vit_custom.training.models import num_classes_of

    accelerator = Accelerator(mixed_precision=args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no"))
    setup_logging(timestamps=True)
    with accelerator.main_process_first():
        splits = load_datasets(data_args, seed=args.seed, split="validation")
    model, settings = load_for_evaluation(model_args, args.checkpoint)
    validation = split_for(model, splits)
    num_classes = num_classes_of(model)  # read before accelerate wraps the model
    max_bad = data_args.max_bad_image_fraction
    dataset = ImageClassificationDataset(validation, EvalTransform(settings), max_bad, skip_bad=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
    model, loader = accelerator.prepare(model, loader)
    start = time.perf_counter()
    result = run_evaluation(
        model, loader, Normalize(settings), accelerator, num_classes, multi_label=splits.multi_label
    )
    result["images_per_second"] = result["eval_samples"] / (time.perf_counter() - start)
    skipped, total = result["eval_skipped"], result["eval_samples"] + result["eval_skipped"]
    if skipped:
        logger.warning(
            "Skipped %d of %d images that could not be read; scored the %d read", skipped, total, total - skipped
        )
    check_bad_images(skipped, total, max_bad)
    if accelerator.is_main_process:
        print(json.dumps(result, indent=2))
        if args.output_json:
            write_json(result, Path(args.output_json))


if __name__ == "__main__":
    sys.exit(run_cli("evaluate_model.py", main))
