"""Train a ViT (ours, or timm's for comparison) on ImageNet-1k or any image-classification dataset.

One script for one CPU, one GPU, many GPUs or many machines:

    accelerate launch -q [--config_file accelerate_config.yaml] scripts/train.py --config configs/quickstart.yaml \
        [--key value ...]

The run directory holds checkpoints/step_N/, metrics.jsonl, run_config.json, best/ and final/ (self-contained model
folders) and training_curves.png. Read top to bottom: refusals, set-up, data, model, optimizer, resume, the loop, the
end.
"""

import sys

from modeling_vit_custom.cli import run_cli
from modeling_vit_custom.data.arguments import AugmentArguments, DataArguments
from modeling_vit_custom.training.arguments import ModelArguments, TrainingArguments, parse_args


def main(argv: list[str] | None = None) -> None:
    flags = parse_args((ModelArguments, DataArguments, AugmentArguments, TrainingArguments), argv)
    train(*flags)  # imports torch and the data code: after the flags are read, so that --help answers at once


def train(model_args: ModelArguments, data_args: DataArguments, aug_args: AugmentArguments, args: TrainingArguments):
    import itertools
    import math
    import time
    from datetime import timedelta
    from pathlib import Path

    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.logging import get_logger
    from accelerate.utils import InitProcessGroupKwargs, set_seed
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from modeling_vit_custom.bench.harness import forward_flops_per_image, peak_flops
    from modeling_vit_custom.cli import setup_logging
    from modeling_vit_custom.data import loaders, sources, transforms
    from modeling_vit_custom.data.in_memory import check_in_memory_flags
    from modeling_vit_custom.training import checkpoints, models, resume, run_log, sharding
    from modeling_vit_custom.training.arguments import check_environment, parse_config_overrides
    from modeling_vit_custom.training.evaluation import Evaluator, main_metric, ranks_in_sync
    from modeling_vit_custom.training.plan import dry_run_plan
    from modeling_vit_custom.training.pretrained import fit_checkpoint
    from modeling_vit_custom.training.timing import PhaseTimer
    from modeling_vit_custom.training.tracking import BestModel, FiniteLossGuard, ImageCounts, StepLog

    # -- Refusals: everything that can be refused is, before any data is read or a process group is formed.
    logger = get_logger(__name__)
    check_environment(args)
    check_in_memory_flags(data_args, aug_args)
    if model_args.model_name_or_path and model_args.model == "vit_custom":  # the checkpoint's shapes, from its headers
        fit_checkpoint(model_args.model_name_or_path, parse_config_overrides(model_args.model_config_overrides))
    output_dir = Path(args.output_dir)
    if not args.dry_run:  # a dry run writes nothing
        run_log.check_output_dir(
            output_dir, resume=bool(args.resume_from_checkpoint), overwrite=args.overwrite_output_dir
        )

    # -- Set-up: one Accelerator; every process draws its own dropout, mixup and erasing randomness (DeiT seeds
    # seed + rank), while each sample's augmentation is seeded by (seed, epoch, index) whatever the process.
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
    sharding.enable_fsdp_on_cpu(accelerator)
    if accelerator.is_fsdp2:
        sharding.check_fsdp_arguments(data_args.streaming, model_args.model, args.channels_last, args.optim)
    setup_logging(timestamps=True)
    set_seed(args.seed, device_specific=True)
    global_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    models.check_learning_rate_floor(args, models.scaled_learning_rate(args.learning_rate, global_batch_size),
                                     global_batch_size)  # fmt: skip
    settings = run_log.run_settings(model_args, data_args, aug_args, args)
    start = None
    if args.resume_from_checkpoint:  # refused here, from the checkpoint's training state, if it cannot continue
        start = resume.plan_resume(
            args.output_dir, args.resume_from_checkpoint, settings, accelerator.num_processes, global_batch_size,
            args.per_device_train_batch_size,
        )  # fmt: skip

    # -- Data: the main process prepares it first (download, Fashion-MNIST conversion), then the others read the cache.
    with accelerator.main_process_first():
        splits = sources.load_datasets(data_args, seed=args.seed)
    num_classes, multi_label = len(splits.class_names), splits.multi_label
    if multi_label:
        transforms.check_multi_label_augmentation(aug_args)

    # -- Model, and the loaders it implies (its image size and preprocessing).
    model, preprocess = models.build_model(model_args, splits.class_names, multi_label=multi_label)
    train_loader, eval_loader, train_sampler = loaders.build_dataloaders(
        splits, preprocess, aug_args, data_args, args,
        accelerator.process_index, accelerator.num_processes, accelerator.device,
    )  # fmt: skip
    mixup = transforms.build_mixup(aug_args, num_classes)
    # The loaders hand over uint8 images: normalized (and erased, in training) per batch on the device.
    train_normalize = transforms.Normalize(preprocess, aug_args.random_erasing, args.channels_last)
    eval_normalize = transforms.Normalize(preprocess, channels_last=args.channels_last)
    if args.gradient_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):  # timm
            model.set_grad_checkpointing()
        else:
            model.activation_checkpointing_enable()
    model.to(accelerator.device, memory_format=transforms.memory_format(args.channels_last))

    # -- Optimizer, EMA, and the schedule in optimizer steps.
    lr = models.scaled_learning_rate(args.learning_rate, global_batch_size)
    optimizer = models.create_optimizer(model, args, lr)
    if start is not None:
        resume.check_same_optimizer_groups(start.state, checkpoints.group_sizes(optimizer))
    # As timm and DeiT: copied before the distributed wrapper. Its first update (step 0) copies the weights.
    ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=args.ema_warmup) if args.ema_decay else None
    streaming = data_args.streaming
    if streaming:  # streaming loaders are already sharded by split_dataset_by_node: preparing would shard them twice
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if accelerator.is_fsdp2:
        sharding.check_sharded(model)  # never silently unsharded
    # Counted before any forward pass, after which FSDP2 keeps the root module's parameters gathered: under FSDP each
    # holds its shards, about num_parameters / num_processes; otherwise all of them.
    parameters_per_process = accelerator.gather(
        torch.tensor([sharding.local_parameter_count(model)], device=accelerator.device)
    ).tolist()
    num_batches = loaders.batches_per_epoch(train_loader, splits, data_args, args, accelerator.num_processes)
    epoch_steps = models.steps_per_epoch(num_batches, args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or math.ceil(args.num_train_epochs * epoch_steps)
    num_epochs = math.ceil(max_train_steps / epoch_steps)
    # Stepped once per optimizer step below, not prepared (accelerate's wrapper would step it num_processes times per
    # optimizer step); registered so that save_state / load_state checkpoint it.
    scheduler = models.create_scheduler(optimizer, args, epoch_steps, max_train_steps)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None and accelerator.is_fsdp2:
        # Sharded like the model and updated shard by shard; evaluated and saved (final_ema/) gathered, as the model.
        ema.module = sharding.shard_like_model(accelerator, ema.module)
        sharding.checkpoint_sharded(accelerator, ema.module, index=1)
    elif ema is not None:
        accelerator.register_for_checkpointing(ema)
    if args.torch_compile:
        # In place (nn.Module.compile): the module keeps its class and parameter names, so saving, checkpoints, the
        # EMA copy made above and resuming with or without compile all see the plain model.
        accelerator.unwrap_model(model).compile()
    flops_per_image = forward_flops_per_image(
        accelerator.unwrap_model(model),
        torch.zeros(
            1, preprocess.num_channels, preprocess.image_size, preprocess.image_size, device=accelerator.device
        ),
    )
    if args.dry_run:
        plan = dry_run_plan(
            accelerator, model, optimizer, scheduler, next(iter(train_loader)), train_normalize,
            model_args=model_args, aug_args=aug_args, args=args, preprocess=preprocess,
            global_batch_size=global_batch_size, epoch_steps=epoch_steps, max_train_steps=max_train_steps,
            flops_per_image=flops_per_image,
        )  # fmt: skip
        if accelerator.is_main_process:
            print(plan)
        accelerator.end_training()
        return

    # -- Resume: the checkpoint is accepted (or the run is already complete) before anything in output_dir changes.
    best = BestModel(main_metric(multi_label))
    global_step, start_epoch, skip_batches = 0, 0, 0
    if start is not None:
        if resume.is_complete(start, max_train_steps, output_dir):
            logger.info(
                f"The run in {output_dir} is complete: {start.checkpoint.name} is step {start.step} of "
                f"{max_train_steps} and final/ is saved. Nothing to do; pass a larger --max_train_steps or "
                "--num_train_epochs to extend it.",
                main_process_only=True,
            )
            accelerator.end_training()
            return
        best = resume.restore(accelerator, start, output_dir, best.metric, streaming, max_train_steps)
        global_step, start_epoch, skip_batches = start.step, start.epoch, start.skip_batches

    # -- The run's record: written once the run is accepted, so that it says what this run trains.
    num_parameters = sum(p.numel() for p in model.parameters())
    run_log.start_record(
        accelerator, output_dir, settings, overwrite=args.overwrite_output_dir,
        dataset_name=data_args.hub_dataset_name, data_path=loaders.data_path(train_loader, streaming),
        global_batch_size=global_batch_size, effective_learning_rate=lr, max_train_steps=max_train_steps,
        evaluation_split=splits.validation_split,  # None: held out of train (for the model card)
        num_parameters=num_parameters, parameters_per_process=parameters_per_process,
    )  # fmt: skip
    metrics = run_log.MetricsLog(output_dir / run_log.METRICS_FILE, accelerator.is_main_process)
    evaluator = Evaluator(eval_loader, eval_normalize, accelerator, num_classes, not streaming, multi_label)
    guard = FiniteLossGuard(accelerator, output_dir / "checkpoints")
    step_log = StepLog(accelerator, metrics, epoch_steps, flops_per_image, peak_flops(accelerator.device))
    logger.info(
        f"{num_parameters:,} parameters, {flops_per_image / 1e9:.3g} GFLOPs/image; {max_train_steps} optimizer steps "
        f"over {num_epochs} epochs of {epoch_steps}; global batch {global_batch_size}, lr {lr:.3g} "
        f"({args.learning_rate:g} per 512)",
        main_process_only=True,
    )

    def evaluate(step: int) -> dict:
        """Evaluates after optimizer step `step`, logs, and saves best/ when the model improves."""
        guard.check(step)
        result = evaluator(model, ema.module if ema is not None else None)
        metrics.write(run_log.EVAL_EVENT, step=step, epoch=step / epoch_steps, **result)
        accelerator.log(result, step=step)
        logger.info(f"step {step}: {evaluator.describe(result)}", main_process_only=True)
        if best.improves(result, step):
            models.save_model_folder(accelerator, model, preprocess, output_dir / "best")
        model.train()
        return result

    def save_checkpoint(step: int, epoch: int, batches_done: int) -> None:
        """A resumable checkpoint after optimizer step `step`, `batches_done` per-process batches into `epoch`."""
        guard.check(step)
        state = {
            "step": step,
            "epoch": epoch,
            # A count of samples in the global order, which any process count can continue from.
            "samples_in_epoch": batches_done * args.per_device_train_batch_size * accelerator.num_processes,
            "global_batch_size": global_batch_size,
            "num_processes": accelerator.num_processes,
            "optim": args.optim,
            "optimizer_groups": checkpoints.group_sizes(optimizer),
            "max_train_steps": max_train_steps,
            "best_score": best.score,
            "best_step": best.step,
            "settings": settings,
        }
        path = checkpoints.save_checkpoint(accelerator, output_dir, step, state, args.checkpoints_total_limit)
        logger.info(f"Saved checkpoint {path}", main_process_only=True)

    # -- The loop: epochs of steps; each optimizer step logs, and may evaluate and checkpoint; each epoch ends with
    # an evaluation and a checkpoint.
    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    unit="step")  # fmt: skip
    timer = PhaseTimer(accelerator.device, args.synchronize_timing)
    counts = ImageCounts(accelerator, data_args.max_bad_image_fraction)
    start_time, evaluated_step, saved_step, last_eval = time.perf_counter(), None, None, None
    compiling = args.torch_compile  # the first training step and the first evaluation compile: timed apart
    model.train()
    with logging_redirect_tqdm():  # log lines print above the progress bar, not into it
        for epoch in range(start_epoch, num_epochs):
            if global_step >= max_train_steps:  # resumed at the last step
                break
            loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
            if hasattr(loader, "set_epoch"):  # accelerate's loaders pass their own count to the sampler: ours wins
                loader.set_epoch(epoch)
            train_sampler.set_epoch(epoch)
            if streaming:  # every process reads the same number of batches from its shards
                loader = itertools.islice(loader, num_batches - skip_batches)
            batches_done, skip_batches, micro_losses = skip_batches, 0, []
            # accelerate counts micro-batches to know when to synchronise: each epoch starts a new count at this
            # run's position (a prepared loader's end resets it; a stream's cut does not).
            accelerator.step = batches_done
            for batch in timer.iterate(loader):
                if streaming and batches_done == num_batches - 1:  # the epoch's last batch ends its accumulation
                    accelerator.step = args.gradient_accumulation_steps - 1
                with timer("augment"):
                    batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v
                             for k, v in batch.items()}  # fmt: skip
                    pixel_values, labels = train_normalize(batch["pixel_values"]), batch["labels"]
                    if mixup is not None:
                        pixel_values, labels = mixup(pixel_values, labels)
                    elif aug_args.label_smoothing > 0:
                        labels = transforms.smooth_labels(labels, num_classes, aug_args.label_smoothing)
                with accelerator.accumulate(model):
                    with timer("compile" if compiling else "forward_backward"):
                        loss = models.classification_loss(models.logits_of(model, pixel_values), labels, multi_label)
                        accelerator.backward(loss)
                    compiling = False
                    with timer("optimizer"):
                        if accelerator.sync_gradients and args.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                micro_losses.append(loss.detach())
                batches_done += 1
                counts.add(len(pixel_values), int(batch["replaced"]))
                step_log.add_images(len(pixel_values) * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue

                # One optimizer step is done.
                with timer("optimizer"):
                    if not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    if ema is not None:
                        ema.update(accelerator.unwrap_model(model), step=global_step)
                global_step += 1
                step_loss, micro_losses = torch.stack(micro_losses).mean(), []
                step_log.add_loss(step_loss)
                guard.add(step_loss)
                progress.update(1)
                at_log = global_step % args.logging_steps == 0 or global_step == max_train_steps
                at_eval = bool(args.eval_steps) and global_step % args.eval_steps == 0
                at_checkpoint = bool(args.checkpointing_steps) and global_step % args.checkpointing_steps == 0
                if at_log:
                    with timer("logging"):
                        guard.check(global_step)
                        logged = step_log.write(global_step, scheduler.get_last_lr()[0])
                        progress.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}",
                                             img_s=f"{logged['images_per_second']:.0f}")  # fmt: skip
                if at_eval:
                    with timer("compile" if evaluated_step is None and args.torch_compile else "evaluation"):
                        last_eval, evaluated_step = evaluate(global_step), global_step
                if at_checkpoint:
                    with timer("checkpoint"):
                        save_checkpoint(global_step, epoch, batches_done)
                    saved_step = global_step
                if global_step >= max_train_steps:
                    break

            # The epoch's end (or the run's): unreadable images, an evaluation, a checkpoint.
            counts.end_epoch(epoch)
            if streaming and batches_done < num_batches and global_step < max_train_steps:
                raise ValueError(
                    f"Process {accelerator.process_index}'s shards of the stream ended after {batches_done} of the "
                    f"epoch's {num_batches} batches: the shards hold unequal numbers of images. Write equal shards "
                    "(e.g. scripts/prepare_dataset.py) in a number that is a multiple of processes x workers"
                )
            guard.check(global_step)
            if evaluated_step != global_step:  # the step's evaluation is also the epoch's
                with timer("compile" if evaluated_step is None and args.torch_compile else "evaluation"):
                    last_eval, evaluated_step = evaluate(global_step), global_step
            # An epoch cut short by max_train_steps is checkpointed where it stopped: extending continues there.
            epoch_done = batches_done >= num_batches
            if saved_step != global_step:  # the step's checkpoint is also the epoch's (same weights, same RNG)
                with timer("checkpoint"):
                    save_checkpoint(global_step, epoch + 1 if epoch_done else epoch, 0 if epoch_done else batches_done)
                saved_step = global_step
            if global_step >= max_train_steps:
                break
    progress.close()
    if last_eval is None:  # resumed at the end of a run whose final/ was not saved: only the saving is left
        last_eval = evaluate(global_step)

    # -- The end: the final model (and its EMA), the summary, the curves.
    in_sync = ranks_in_sync(model, accelerator)
    if not in_sync:
        logger.error("The processes ended with different parameters: gradient synchronisation is broken")
    guard.check(global_step)
    models.save_model_folder(accelerator, model, preprocess, output_dir / "final")
    if ema is not None:
        models.save_model_folder(accelerator, ema.module, preprocess, output_dir / "final_ema")
    runtime = time.perf_counter() - start_time
    metrics.write_summary(
        run_log.RunSummary.at_end(
            best, last_eval, multi_label, train_runtime_s=runtime, train_images=counts.images,
            phase_seconds=timer.seconds, total_steps=global_step, ranks_in_sync=in_sync,
        )
    )  # fmt: skip
    accelerator.end_training()
    if accelerator.is_main_process:
        run_log.plot_metrics(output_dir / run_log.METRICS_FILE, output_dir / run_log.CURVES_FILE)
        logger.info(
            f"Done in {runtime / 60:.1f} min: final {best.metric} {100 * last_eval[best.metric]:.2f}%, "
            f"best {100 * best.score:.2f}%; model in {output_dir / 'final'}"
        )
        if args.push_to_hub:
            from modeling_vit_custom.interop.hub import push_run

            push_run(output_dir / "final", output_dir, args.hub_model_id, private=args.hub_private)


if __name__ == "__main__":
    sys.exit(run_cli("train.py", main))
