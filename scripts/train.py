"""Train a ViT (ours, or timm's for comparison) on ImageNet-1k or any image-classification dataset.

One script for one CPU, one GPU, many GPUs or many machines:

    accelerate launch [--config_file accelerate_config.yaml] scripts/train.py --config configs/quickstart.yaml \
        [--key value ...]

The run directory holds checkpoints/step_N/, metrics.jsonl, best/ and final/ (self-contained model folders) and
training_curves.png.
"""

import itertools
import json
import math
import time
from datetime import timedelta
from pathlib import Path

from modeling_vit_custom.cli import setup_logging
from modeling_vit_custom.data.arguments import AugmentArguments, DataArguments
from modeling_vit_custom.training.arguments import (
    ModelArguments,
    TrainingArguments,
    check_environment,
    parse_args,
    parse_config_overrides,
    to_jsonable,
)


def main(argv: list[str] | None = None):
    model_args, data_args, aug_args, args = parse_args(
        (ModelArguments, DataArguments, AugmentArguments, TrainingArguments), argv
    )
    # Imported once the flags are read, so that --help and a bad flag answer before torch and timm load.
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.logging import get_logger
    from accelerate.utils import InitProcessGroupKwargs, set_seed
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm

    from modeling_vit_custom.bench.harness import forward_flops_per_image, peak_flops
    from modeling_vit_custom.data.decoding import check_bad_images
    from modeling_vit_custom.data.in_memory import check_in_memory_flags
    from modeling_vit_custom.data.loaders import build_dataloaders
    from modeling_vit_custom.data.sources import load_datasets
    from modeling_vit_custom.data.transforms import (
        Normalize,
        build_mixup,
        check_multi_label_augmentation,
        memory_format,
        smooth_labels,
    )
    from modeling_vit_custom.training.checkpoints import (
        check_same_optimizer,
        group_sizes,
        read_training_state,
        resolve_checkpoint,
        resume_batches,
        save_checkpoint,
    )
    from modeling_vit_custom.training.evaluation import main_metric, ranks_in_sync, run_evaluation
    from modeling_vit_custom.training.models import (
        build_model,
        classification_loss,
        create_optimizer,
        create_scheduler,
        logits_of,
        save_model_folder,
        scaled_learning_rate,
        steps_per_epoch,
    )
    from modeling_vit_custom.training.plan import format_plan, measure_step_seconds, run_plan
    from modeling_vit_custom.training.pretrained import fit_checkpoint
    from modeling_vit_custom.training.run_log import (
        CURVES_FILE,
        EVAL_EVENT,
        METRICS_FILE,
        RUN_CONFIG_FILE,
        TRAIN_EVENT,
        MetricsLog,
        RunSummary,
        check_output_dir,
        clear_previous_run,
        plot_metrics,
        truncate_metrics,
    )
    from modeling_vit_custom.training.sharding import (
        check_fsdp_arguments,
        checkpoint_sharded,
        enable_fsdp_on_cpu,
        local_parameter_count,
        shard_like_model,
    )
    from modeling_vit_custom.training.timing import PhaseTimer

    logger = get_logger(__name__)
    # Everything that can be refused is refused here, before any data is read or a process group is formed.
    check_environment(args)
    check_in_memory_flags(data_args, aug_args)
    if model_args.model_name_or_path and model_args.model == "vit_custom":  # the checkpoint's shapes, from its headers
        fit_checkpoint(model_args.model_name_or_path, parse_config_overrides(model_args.model_config_overrides))
    if not args.dry_run:  # a dry run writes nothing
        check_output_dir(
            args.output_dir, resume=bool(args.resume_from_checkpoint), overwrite=args.overwrite_output_dir
        )
    resume_from = (
        resolve_checkpoint(args.output_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # bf16 on GPU (no loss scaling needed); on CPU autocast is slower than fp32.
        mixed_precision=args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no"),
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        # A process whose peer died fails its next collective after this long, instead of waiting 30 minutes.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))],
    )
    enable_fsdp_on_cpu(accelerator)
    fsdp = accelerator.is_fsdp2
    if fsdp:
        check_fsdp_arguments(data_args.streaming, model_args.model, args.channels_last, args.optim)
    setup_logging(timestamps=True)
    # Every process draws its own dropout, drop-path, mixup / cutmix and erasing randomness (DeiT seeds seed + rank);
    # each sample's augmentation is seeded by (seed, epoch, index) whatever the process.
    set_seed(args.seed, device_specific=True)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process and not args.dry_run:
        if args.overwrite_output_dir:
            clear_previous_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # Data: the main process prepares it first (download, Fashion-MNIST conversion), then the others read the cache.
    with accelerator.main_process_first():
        splits = load_datasets(data_args, seed=args.seed)
    num_classes, multi_label = len(splits.class_names), splits.multi_label
    if multi_label:
        check_multi_label_augmentation(aug_args)
    # mAP chooses best/ in a multi-label run, top-1 otherwise.
    best_metric = main_metric(multi_label)
    model, settings = build_model(model_args, splits.class_names, multi_label=multi_label)
    train_loader, eval_loader, train_sampler = build_dataloaders(
        splits,
        settings,
        aug_args,
        data_args,
        args,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
    )
    mixup = build_mixup(aug_args, num_classes)
    # The loaders hand over uint8 images: normalized (and erased, in training) per batch on the device.
    train_normalize = Normalize(settings, aug_args.random_erasing, args.channels_last)
    eval_normalize = Normalize(settings, channels_last=args.channels_last)

    if args.gradient_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):  # timm
            model.set_grad_checkpointing()
        else:
            model.activation_checkpointing_enable()
    model.to(accelerator.device, memory_format=memory_format(args.channels_last))
    global_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = scaled_learning_rate(args.learning_rate, global_batch_size)
    optimizer = create_optimizer(model, args, lr)
    ema = None
    if args.ema_decay:
        # As timm and DeiT: copied before the distributed wrapper. Its first update (step 0) copies the weights.
        ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=args.ema_warmup)

    streaming = data_args.streaming
    if streaming:
        # Streaming loaders are already sharded by split_dataset_by_node; preparing them would shard them twice.
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if not streaming:
        num_batches = len(train_loader)
    elif splits.train_size is not None:
        # Every process reads the same number of batches from its shards, so that their collectives pair up.
        num_batches = splits.train_size // (args.per_device_train_batch_size * accelerator.num_processes)
    elif not args.max_train_steps or args.warmup_epochs:
        raise ValueError(
            "--streaming from a source that does not record its length: epochs cannot be counted, so expected "
            f"--max_train_steps and no --warmup_epochs, got max_train_steps={args.max_train_steps}, "
            f"warmup_epochs={args.warmup_epochs}; or stream a saved dataset (--dataset_path), which knows its length"
        )
    else:  # one pass of max_train_steps
        num_batches = args.max_train_steps * args.gradient_accumulation_steps
    if num_batches == 0:
        raise ValueError(
            f"The training split has too few samples for one batch of {args.per_device_train_batch_size} "
            f"on each of {accelerator.num_processes} processes"
        )
    epoch_steps = steps_per_epoch(num_batches, args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or math.ceil(args.num_train_epochs * epoch_steps)
    num_epochs = math.ceil(max_train_steps / epoch_steps)
    # The schedule is defined in optimizer steps and stepped once per optimizer step below. It is not passed to
    # accelerator.prepare(), whose wrapper would step it num_processes times per optimizer step; it is registered so
    # that save_state / load_state still checkpoint it.
    scheduler = create_scheduler(optimizer, args, epoch_steps, max_train_steps)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None and fsdp:
        # Sharded like the model and updated shard by shard: each process averages only the parameters it holds,
        # as it steps only their optimizer state; evaluated and saved (final_ema/) gathered, as the model is.
        ema.module = shard_like_model(accelerator, ema.module)
        checkpoint_sharded(accelerator, ema.module, index=1)
    elif ema is not None:
        accelerator.register_for_checkpointing(ema)
    if args.torch_compile:
        # Compiled in place (nn.Module.compile): the module keeps its class and its parameter names, so saving,
        # checkpoints, the EMA copy made above and resuming with or without compile all see the plain model.
        accelerator.unwrap_model(model).compile()

    run_config = {
        **to_jsonable(model_args, data_args, aug_args, args),
        "dataset_name": data_args.hub_dataset_name,
        "num_processes": accelerator.num_processes,
        "global_batch_size": global_batch_size,
        "effective_learning_rate": lr,
        "max_train_steps": max_train_steps,
        "mixed_precision": accelerator.mixed_precision,
        # What was read and where it ran, for the model card: the split evaluated on (None: held out of train).
        "evaluation_split": splits.validation_split,
        "device": torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "CPU",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "distributed_type": accelerator.distributed_type.value,
        # Under FSDP each holds its shards, about num_parameters / num_processes; otherwise all of them.
        "parameters_per_process": accelerator.gather(
            torch.tensor([local_parameter_count(model)], device=accelerator.device)
        ).tolist(),
    }
    if accelerator.is_main_process and not args.dry_run:
        (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2))
    if not args.dry_run:
        accelerator.init_trackers(
            "vit_custom",
            config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run_config.items()},
        )
    metrics = MetricsLog(output_dir / METRICS_FILE, accelerator.is_main_process)

    image = torch.zeros(1, settings.num_channels, settings.image_size, settings.image_size, device=accelerator.device)
    flops_per_image = forward_flops_per_image(accelerator.unwrap_model(model), image)
    device_peak = peak_flops(accelerator.device)

    if args.dry_run:
        batch = next(iter(train_loader))
        pixel_values = train_normalize(batch["pixel_values"].to(accelerator.device))

        def forward_backward():  # the step's compute without the update: the weights stay as they are
            with accelerator.autocast():
                loss = logits_of(model, pixel_values).float().logsumexp(-1).mean()
            accelerator.backward(loss)
            optimizer.zero_grad(set_to_none=True)

        # One optimizer step is accumulation x this per-process micro-batch (the update itself is not timed).
        step_seconds = measure_step_seconds(forward_backward) * args.gradient_accumulation_steps
        plan = run_plan(
            model_args=model_args,
            aug_args=aug_args,
            args=args,
            model_config=getattr(accelerator.unwrap_model(model), "config", None),
            settings=settings,
            optimizer=optimizer,
            scheduler=scheduler,
            num_processes=accelerator.num_processes,
            mixed_precision=accelerator.mixed_precision,
            global_batch_size=global_batch_size,
            epoch_steps=epoch_steps,
            max_train_steps=max_train_steps,
            flops_per_image=flops_per_image,
            step_seconds=step_seconds,
        )
        if accelerator.is_main_process:
            print(format_plan(plan))
        accelerator.end_training()
        return

    global_step, start_epoch, skip_batches, best_score, best_step = 0, 0, 0, -1.0, 0
    if resume_from is not None:
        state = read_training_state(resume_from)
        if aug_args.repeated_augmentation > 1 and state["num_processes"] != accelerator.num_processes:
            raise ValueError(
                "--resume_from_checkpoint with --repeated_augmentation: the checkpoint ran on "
                f"{state['num_processes']} processes, this run on {accelerator.num_processes}; the repeats are dealt "
                "out per process, so the "
                "samples would differ: resume on the same number of processes"
            )
        # Refused before the weights load: another optimizer, another global batch, or a position this process
        # count cannot reach.
        check_same_optimizer(state, args.optim, group_sizes(optimizer))
        skip_batches = resume_batches(
            state, args.per_device_train_batch_size, accelerator.num_processes, global_batch_size
        )
        accelerator.load_state(str(resume_from))
        # accelerate counts micro-batches within the epoch to know when to synchronise; count this run's, not the
        # checkpoint's (another process count or accumulation gives another count for the same position).
        accelerator.step = skip_batches
        global_step, start_epoch = state["step"], state["epoch"]
        # best_top1: what checkpoints written before multi-label runs call it.
        best_score, best_step = state.get("best_score", state.get("best_top1")), state["best_step"]
        if accelerator.is_main_process:
            truncate_metrics(output_dir / METRICS_FILE, global_step)
        if global_step >= max_train_steps and (output_dir / "final").is_dir():
            logger.info(
                f"The run in {output_dir} is complete: {resume_from.name} is step {global_step} of "
                f"{max_train_steps} and final/ is saved. Nothing to do; pass a larger --max_train_steps or "
                "--num_train_epochs to extend it.",
                main_process_only=True,
            )
            accelerator.end_training()
            return
        logger.info(
            f"Resumed from {resume_from} at step {global_step} (epoch {start_epoch}, batch {skip_batches})",
            main_process_only=True,
        )
        if streaming and skip_batches:
            logger.info(
                f"The stream is read again from the start of epoch {start_epoch} and its first {skip_batches} "
                "batches skipped: its order is fixed by (seed, epoch) and --num_workers, so the run continues with "
                "the same samples if --num_workers is unchanged",
                main_process_only=True,
            )
        if state["max_train_steps"] != max_train_steps:
            logger.info(
                f"Extending the run from {state['max_train_steps']} to {max_train_steps} optimizer steps: the "
                f"learning-rate schedule is recomputed for {max_train_steps}",
                main_process_only=True,
            )

    logger.info(
        f"{run_config['num_parameters']:,} parameters, {flops_per_image / 1e9:.3g} GFLOPs/image; "
        f"{max_train_steps} optimizer steps over {num_epochs} epochs of {epoch_steps}; global batch "
        f"{global_batch_size}, lr {lr:.3g} ({args.learning_rate:g} per 512)",
        main_process_only=True,
    )

    last_eval = {}

    def evaluate_and_keep_best(epoch: float) -> dict:
        nonlocal best_score, best_step
        if last_eval.get("step") == global_step:  # the step's evaluation is also the epoch's
            return last_eval["result"]
        # As DeiT: the raw model is measured and chooses best/; the EMA model is measured beside it.
        result = run_evaluation(
            model, eval_loader, eval_normalize, accelerator, num_classes, not streaming, multi_label
        )
        if multi_label:
            summary = f"mAP {100 * result['eval_map']:.2f}%, F1 {100 * result['eval_f1']:.2f}% at 0.5"
        else:
            summary = f"top-1 {100 * result['eval_top1']:.2f}%, top-5 {100 * result['eval_top5']:.2f}%"
        if ema is not None:
            ema_result = run_evaluation(
                ema.module, eval_loader, eval_normalize, accelerator, num_classes, not streaming, multi_label
            )
            result.update({key.replace("eval_", "eval_ema_"): value for key, value in ema_result.items()})
            ema_metric = best_metric.replace("eval_", "eval_ema_")
            summary += f" (EMA: {ema_metric} {100 * result[ema_metric]:.2f}%)"
        metrics.write(EVAL_EVENT, step=global_step, epoch=epoch, **result)
        accelerator.log(result, step=global_step)
        logger.info(
            f"step {global_step}: eval loss {result['eval_loss']:.4f}, {summary} on {result['eval_samples']} samples",
            main_process_only=True,
        )
        if result[best_metric] > best_score:
            check_finite()
            best_score, best_step = result[best_metric], global_step
            save_model_folder(accelerator, model, settings, output_dir / "best")
        last_eval.update(step=global_step, result=result)
        return result

    saved_step = None

    def checkpoint(epoch: int, batches_in_epoch: int):
        nonlocal saved_step
        if saved_step == global_step:  # the step's checkpoint is also the epoch's (same weights, same RNG)
            return
        check_finite()
        saved_step = global_step
        state = {
            "step": global_step,
            "epoch": epoch,
            # A count of samples in the global order, which any process count can continue from.
            "samples_in_epoch": batches_in_epoch * args.per_device_train_batch_size * accelerator.num_processes,
            "global_batch_size": global_batch_size,
            "num_processes": accelerator.num_processes,
            "optim": args.optim,
            "optimizer_groups": group_sizes(optimizer),
            "max_train_steps": max_train_steps,
            "best_score": best_score,
            "best_step": best_step,
        }
        path = save_checkpoint(accelerator, args.output_dir, global_step, state, args.checkpoints_total_limit)
        logger.info(f"Saved checkpoint {path}", main_process_only=True)

    # Per-step values stay on the device and are read only when logging: no host sync per step.
    step_losses, step_finite = [], []

    def check_finite():
        """Every rank checks the losses of the steps since the last check, before anything is saved or logged: a
        non-finite one on any rank stops all of them, and no non-finite step reaches disk."""
        nonlocal step_finite
        if not step_finite:
            return
        finite = accelerator.reduce(torch.stack(step_finite).float(), "sum").cpu()
        step_finite, bad = [], (finite < accelerator.num_processes).nonzero()
        if len(bad):
            bad_step = global_step - len(finite) + 1 + int(bad[0])
            raise FloatingPointError(
                f"Non-finite loss at step {bad_step}; stopping. The last checkpoint in {output_dir / 'checkpoints'} "
                "is intact: lower --learning_rate or raise --num_warmup_steps"
            )

    progress = tqdm(
        total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, unit="step"
    )
    bad_images, seen_images, trained_images, result = 0, 0, 0, None
    log_start, log_images, start_time = time.perf_counter(), 0, time.perf_counter()
    timer = PhaseTimer(accelerator.device, args.synchronize_timing)
    # Under --torch_compile the first training step and the first evaluation compile their graphs: timed apart.
    compile_train, compile_eval = args.torch_compile, args.torch_compile
    model.train()
    for epoch in range(start_epoch, num_epochs):
        if global_step >= max_train_steps:  # resumed at the last step
            break
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        # accelerate's loaders hand their own iteration count to the sampler when iterated: make it ours.
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        train_sampler.set_epoch(epoch)
        if streaming:
            loader = itertools.islice(loader, num_batches - skip_batches)
        batches_in_epoch, skip_batches = skip_batches, 0
        micro_losses = []
        for batch in timer.iterate(loader):
            with timer("augment"):
                if streaming:
                    batch = {
                        k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v
                        for k, v in batch.items()
                    }
                pixel_values, labels = train_normalize(batch["pixel_values"]), batch["labels"]
                if mixup is not None:
                    pixel_values, labels = mixup(pixel_values, labels)
                elif aug_args.label_smoothing > 0:
                    labels = smooth_labels(labels, num_classes, aug_args.label_smoothing)
            with accelerator.accumulate(model):
                with timer("compile" if compile_train else "forward_backward"):
                    loss = classification_loss(logits_of(model, pixel_values), labels, multi_label)
                    accelerator.backward(loss)
                compile_train = False
                with timer("optimizer"):
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
            batches_in_epoch += 1
            bad_images += int(batch["replaced"])
            seen_images += len(pixel_values)
            log_images += len(pixel_values) * accelerator.num_processes
            trained_images += len(pixel_values) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue

            with timer("optimizer"):
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model), step=global_step)
            global_step += 1
            step_loss = torch.stack(micro_losses).mean()
            step_losses.append(step_loss)
            step_finite.append(torch.isfinite(step_loss))
            micro_losses = []
            progress.update(1)

            at_log = global_step % args.logging_steps == 0 or global_step == max_train_steps
            at_eval = bool(args.eval_steps) and global_step % args.eval_steps == 0
            at_checkpoint = bool(args.checkpointing_steps) and global_step % args.checkpointing_steps == 0
            with timer("logging"):
                if at_log or at_eval or at_checkpoint:
                    check_finite()
                if at_log:
                    loss_value = accelerator.reduce(torch.stack(step_losses).mean(), "mean").item()
                    images_per_second = log_images / (time.perf_counter() - log_start)
                    values = {
                        "loss": loss_value,
                        "lr": scheduler.get_last_lr()[0],
                        "images_per_second": images_per_second,
                    }
                    if device_peak:
                        values["mfu"] = (
                            3 * flops_per_image * images_per_second / (device_peak * accelerator.num_processes)
                        )
                    metrics.write(TRAIN_EVENT, step=global_step, epoch=global_step / epoch_steps, **values)
                    accelerator.log(values, step=global_step)
                    progress.set_postfix(
                        loss=f"{loss_value:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{images_per_second:.0f}"
                    )
                    step_losses, log_start, log_images = [], time.perf_counter(), 0
            if at_eval:
                with timer("compile" if compile_eval else "evaluation"):
                    evaluate_and_keep_best(global_step / epoch_steps)
                compile_eval = False
                model.train()
            if at_checkpoint:
                with timer("checkpoint"):
                    checkpoint(epoch, batches_in_epoch)
            if global_step >= max_train_steps:
                break

        total_bad = int(accelerator.reduce(torch.tensor(bad_images, device=accelerator.device), "sum"))
        total_seen = int(accelerator.reduce(torch.tensor(seen_images, device=accelerator.device), "sum"))
        if total_bad:
            logger.warning(f"Epoch {epoch}: replaced {total_bad} unreadable images of {total_seen}")
        check_bad_images(total_bad, total_seen, data_args.max_bad_image_fraction)
        bad_images = seen_images = 0
        if streaming and batches_in_epoch < num_batches and global_step < max_train_steps:
            raise RuntimeError(
                f"Process {accelerator.process_index}'s shards of the stream ended after {batches_in_epoch} of the "
                f"epoch's {num_batches} batches: the shards hold unequal numbers of images. Write equal shards (e.g. "
                "scripts/prepare_dataset.py) in a number that is a multiple of processes x workers"
            )
        check_finite()
        with timer("compile" if compile_eval else "evaluation"):
            result = evaluate_and_keep_best(global_step / epoch_steps)
        compile_eval = False
        model.train()
        # An epoch cut short by max_train_steps is checkpointed where it stopped, so that extending continues there.
        epoch_done = batches_in_epoch >= num_batches
        with timer("checkpoint"):
            checkpoint(epoch + 1 if epoch_done else epoch, 0 if epoch_done else batches_in_epoch)
        if global_step >= max_train_steps:
            break
    progress.close()
    if result is None:  # resumed at the end of a run whose final/ was not saved: only the saving is left
        result = evaluate_and_keep_best(global_step / epoch_steps)

    in_sync = ranks_in_sync(model, accelerator)
    if not in_sync:
        logger.error("The processes ended with different parameters: gradient synchronisation is broken")
    check_finite()
    save_model_folder(accelerator, model, settings, output_dir / "final")
    if ema is not None:
        save_model_folder(accelerator, ema.module, settings, output_dir / "final_ema")
    runtime = time.perf_counter() - start_time
    metrics.write_summary(
        RunSummary(
            best_eval_top1=None if multi_label else best_score,
            best_eval_map=best_score if multi_label else None,
            best_step=best_step,
            final_eval_top1=result.get("eval_top1"),
            final_eval_top5=result.get("eval_top5"),
            final_eval_ema_top1=result.get("eval_ema_top1"),
            final_eval_map=result.get("eval_map"),
            final_eval_f1=result.get("eval_f1"),
            final_eval_ema_map=result.get("eval_ema_map"),
            train_runtime_s=runtime,
            train_images=trained_images,
            phase_seconds=timer.seconds,
            total_steps=global_step,
            ranks_in_sync=in_sync,
        )
    )
    accelerator.end_training()
    if accelerator.is_main_process:
        plot_metrics(output_dir / METRICS_FILE, output_dir / CURVES_FILE)
        logger.info(
            f"Done in {runtime / 60:.1f} min: final {best_metric} {100 * result[best_metric]:.2f}%, "
            f"best {100 * best_score:.2f}%; model in {output_dir / 'final'}"
        )
        if args.push_to_hub:
            from modeling_vit_custom.interop.hub import push_run

            push_run(output_dir / "final", output_dir, args.hub_model_id, private=args.hub_private)


if __name__ == "__main__":
    main()
