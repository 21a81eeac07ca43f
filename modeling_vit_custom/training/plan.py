"""What a run will do, said before it does it (`scripts/train.py --dry_run`): batch, schedule, parameters, recipe,
FLOPs and the time it will take at the step speed measured here."""

import time

import torch


def lr_of_step(scheduler, step: int) -> float:
    """The learning rate optimizer step `step` (from 1) runs at: the schedule has stepped step - 1 times before it
    (LambdaLR: base lr x its factor)."""
    group = scheduler.optimizer.param_groups[0]
    return group["initial_lr"] * scheduler.lr_lambdas[0](step - 1)


def measure_step_seconds(step, warmup: int = 1, repeats: int = 2) -> float:
    """Median wall time of `step()` after `warmup` calls (synchronised on CUDA)."""
    timings = []
    for i in range(warmup + repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2]


def run_plan(
    *,
    model_args,
    aug_args,
    args,
    model_config,
    settings,
    optimizer,
    scheduler,
    num_processes: int,
    mixed_precision: str,
    global_batch_size: int,
    epoch_steps: int,
    max_train_steps: int,
    flops_per_image: float,
    step_seconds: float,
) -> list[tuple[str, str]]:
    """(setting, value) rows of the plan, in the order a reader checks a recipe."""
    warmup = args.num_warmup_steps + round(args.warmup_epochs * epoch_steps)
    groups = optimizer.param_groups
    decayed = sum(p.numel() for group in groups if group["weight_decay"] > 0 for p in group["params"])
    not_decayed = sum(p.numel() for group in groups if group["weight_decay"] == 0 for p in group["params"])
    lowest_scale = min(group.get("lr_scale", 1.0) for group in groups)
    drop_path = getattr(model_config, "drop_path_rate", None)
    augmentation = ", ".join(
        [
            f"RandAugment {aug_args.randaugment}" if aug_args.randaugment else "no RandAugment",
            f"crop scale {tuple(aug_args.train_crop_scale)}",
            f"flip {aug_args.hflip:g}",
            f"mixup {aug_args.mixup:g}",
            f"cutmix {aug_args.cutmix:g}",
            f"label smoothing {aug_args.label_smoothing:g}",
            f"random erasing {aug_args.random_erasing:g}",
            f"repeated augmentation {aug_args.repeated_augmentation}",
        ]
    )
    step_flops = 3 * flops_per_image * global_batch_size
    return [
        ("processes", str(num_processes)),
        ("precision", mixed_precision),
        (
            "global batch",
            f"{global_batch_size} ({args.per_device_train_batch_size} per process x {num_processes} x "
            f"{args.gradient_accumulation_steps} accumulation)",
        ),
        ("learning rate per 512", f"{args.learning_rate:g}"),
        ("learning rate", f"{optimizer.param_groups[0]['initial_lr']:.4g}"),
        ("schedule", f"{args.lr_scheduler_type} {args.lr_scheduler_kwargs or ''}".strip()),
        ("warm-up steps", str(warmup)),
        ("lr of step 1", f"{lr_of_step(scheduler, 1):.4g}"),
        ("lr of the last warm-up step", f"{lr_of_step(scheduler, max(warmup, 1)):.4g}"),
        ("lr of the middle step", f"{lr_of_step(scheduler, max(max_train_steps // 2, 1)):.4g}"),
        ("lr of the last step", f"{lr_of_step(scheduler, max_train_steps):.4g}"),
        ("steps per epoch", str(epoch_steps)),
        ("epochs", f"{max_train_steps / epoch_steps:g}"),
        ("total steps", str(max_train_steps)),
        ("weight decay", f"{args.weight_decay:g}"),
        (
            "layer-wise lr decay",
            "off" if args.layer_decay is None else f"{args.layer_decay:g} (the embeddings' lr x {lowest_scale:.3g})",
        ),
        ("parameters with weight decay", f"{decayed:,}"),
        ("parameters without weight decay", f"{not_decayed:,}"),
        ("augmentation", augmentation),
        ("drop-path", "n/a" if drop_path is None else f"{drop_path:g}"),
        ("EMA decay", "off" if args.ema_decay is None else f"{args.ema_decay:g}"),
        ("gradient clipping", "off" if args.max_grad_norm == 0 else f"{args.max_grad_norm:g}"),
        ("eval crop", f"{settings.image_size} px, crop_pct {settings.crop_pct:g}, {settings.interpolation}"),
        ("forward GFLOPs per image", f"{flops_per_image / 1e9:.4g}"),
        ("TFLOPs per optimizer step", f"{step_flops / 1e12:.4g}"),
        ("measured seconds per optimizer step", f"{step_seconds:.3g}"),
        ("estimated training time", f"{step_seconds * max_train_steps / 3600:.3g} h"),
    ]


def dry_run_plan(
    accelerator, model, optimizer, scheduler, batch: dict, normalize, *, model_args, aug_args, args, preprocess,
    global_batch_size: int, epoch_steps: int, max_train_steps: int, flops_per_image: float,
) -> str:  # fmt: skip
    """`--dry_run`'s plan as a Markdown table, with the step time measured on `batch` (one per-process micro-batch:
    forward and backward without the update, so the weights stay as they are)."""
    from .models import logits_of

    pixel_values = normalize(batch["pixel_values"].to(accelerator.device))

    def forward_backward():
        with accelerator.autocast():
            loss = logits_of(model, pixel_values).float().logsumexp(-1).mean()
        accelerator.backward(loss)
        optimizer.zero_grad(set_to_none=True)

    rows = run_plan(
        model_args=model_args,
        aug_args=aug_args,
        args=args,
        model_config=getattr(accelerator.unwrap_model(model), "config", None),
        settings=preprocess,
        optimizer=optimizer,
        scheduler=scheduler,
        num_processes=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision,
        global_batch_size=global_batch_size,
        epoch_steps=epoch_steps,
        max_train_steps=max_train_steps,
        flops_per_image=flops_per_image,
        # One optimizer step is accumulation x this micro-batch (the update itself is not timed).
        step_seconds=measure_step_seconds(forward_backward) * args.gradient_accumulation_steps,
    )
    return format_plan(rows)


def format_plan(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| setting | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])
