"""Evaluation on any number of processes, and the check that every process holds the same weights."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from ..metrics import MULTI_LABEL, TOP_K_ACCURACY
from .models import logits_of


def main_metric(multi_label: bool) -> str:
    """The evaluation value that chooses best/: mAP for a multi-label run, top-1 otherwise."""
    return "eval_map" if multi_label else "eval_top1"


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    loader,
    normalize: Callable,
    accelerator,
    num_classes: int,
    prepared: bool = True,
    multi_label: bool = False,
) -> dict:
    """Loss, top-1 and top-5 (multi-label: binary cross-entropy, mAP and F1 at 0.5) over the whole split on any number
    of processes, counting each sample once; `normalize` turns the loader's uint8 batches into the model's input.
    Batches with a "read" mask (a prepared loader over `ImageClassificationDataset(skip_bad=True)`) score only the
    images read, and the result counts the others as "eval_skipped".

    A prepared loader gives every process the same number of batches: each batch is gathered as it comes. A stream's
    shards are disjoint and uneven, so a process may have fewer batches than another: its results are kept and
    gathered once, at the end, which every process reaches."""
    import evaluate

    metric = evaluate.load(MULTI_LABEL if multi_label else TOP_K_ACCURACY, keep_in_memory=True)
    was_training = model.training
    model.eval()
    num_ranked = min(5, num_classes)
    total_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    kept, skipped = [], None
    for batch in loader:
        pixel_values = normalize(batch["pixel_values"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        read = batch.get("read")
        with accelerator.autocast():
            logits = logits_of(model, pixel_values).float()
        if multi_label:
            losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
            predictions = logits.sigmoid()  # (B, num_classes): the scores rank each class
        else:
            losses = F.cross_entropy(logits, labels, reduction="none")
            predictions = logits.topk(num_ranked, dim=-1).indices  # (B, k): only the ranking travels
        if prepared and read is not None:
            # Images that could not be read are counted, never scored.
            predictions, labels, losses, read = accelerator.gather_for_metrics(
                (predictions, labels, losses, read.to(accelerator.device))
            )
            predictions, labels, losses = predictions[read], labels[read], losses[read]
            skipped = (0 if skipped is None else skipped) + int((~read).sum())
        elif prepared:
            # Drops the samples the prepared loader repeated to give every process equal batches.
            predictions, labels, losses = accelerator.gather_for_metrics((predictions, labels, losses))
        if prepared:
            metric.add_batch(predictions=predictions.cpu().numpy(), references=labels.long().cpu().numpy())
            total_loss += losses.double().sum()
        else:
            kept.append((predictions, labels, losses))
    if not prepared:
        device = accelerator.device
        predictions, labels, losses = (
            (torch.cat(parts) for parts in zip(*kept, strict=True))
            if kept
            else (torch.empty(0, num_classes if multi_label else num_ranked, device=device),
                  torch.empty(0, num_classes, device=device) if multi_label
                  else torch.empty(0, dtype=torch.long, device=device),
                  torch.empty(0, device=device))
        )  # fmt: skip
        # Pad every process's results to the longest, gather, drop the padding (label -1).
        padded = [accelerator.pad_across_processes(t, dim=0, pad_index=-1) for t in (predictions, labels, losses)]
        predictions, labels, losses = accelerator.gather(padded)
        keep = labels.reshape(len(labels), -1)[:, 0] >= 0
        metric.add_batch(predictions=predictions[keep].cpu().numpy(), references=labels[keep].long().cpu().numpy())
        total_loss += losses[keep].double().sum()
    model.train(was_training)
    if multi_label:
        result = metric.compute()
        values = {"eval_map": result["map"], "eval_f1": result["f1"], "eval_f1_macro": result["f1_macro"]}
    else:
        result = metric.compute(k=[1, num_ranked])
        values = {"eval_top1": result["top1"], "eval_top5": result[f"top{num_ranked}"]}
    samples = result["samples"]
    counts = {"eval_samples": samples} if skipped is None else {"eval_samples": samples, "eval_skipped": skipped}
    return {"eval_loss": float(total_loss) / max(samples, 1), **values, **counts}


def ranks_in_sync(model: nn.Module, accelerator) -> bool:
    """Whether every process holds bit-identical parameters: compares a fingerprint of their raw bits. A sharded
    parameter (FSDP's DTensor) is held once, in shards: it is gathered, so the check holds by construction."""
    fingerprint, offset = torch.zeros(1, dtype=torch.long, device=accelerator.device), 0
    for param in accelerator.unwrap_model(model).parameters():
        full = param.full_tensor() if isinstance(param, DTensor) else param
        bits = full.detach().float().reshape(-1).view(torch.int32).long()
        weights = torch.arange(offset + 1, offset + bits.numel() + 1, device=bits.device) % 1_000_003
        fingerprint += (bits * weights).sum()  # int64 arithmetic wraps identically on every rank
        offset += bits.numel()
    fingerprints = accelerator.gather(fingerprint)
    return bool((fingerprints == fingerprints[0]).all())


class Evaluator:
    """The validation split's evaluation of a run: the model, and its EMA copy beside it (as DeiT, whose raw model
    chooses best/), into one result dict (the EMA's keys `eval_ema_*`)."""

    def __init__(self, loader, normalize: Callable, accelerator, num_classes: int, prepared: bool, multi_label: bool):
        self.loader, self.normalize, self.accelerator = loader, normalize, accelerator
        self.num_classes, self.prepared, self.multi_label = num_classes, prepared, multi_label
        self.metric = main_metric(multi_label)

    def __call__(self, model: nn.Module, ema_model: nn.Module | None = None) -> dict:
        result = self._evaluate(model)
        if ema_model is not None:
            ema = self._evaluate(ema_model)
            result.update({key.replace("eval_", "eval_ema_"): value for key, value in ema.items()})
        return result

    def _evaluate(self, model: nn.Module) -> dict:
        return run_evaluation(
            model, self.loader, self.normalize, self.accelerator, self.num_classes, self.prepared, self.multi_label
        )

    def describe(self, result: dict) -> str:
        """'eval loss 0.4123, top-1 ..., top-5 ... (EMA: ...) on N samples', for the log."""
        if self.multi_label:
            summary = f"mAP {100 * result['eval_map']:.2f}%, F1 {100 * result['eval_f1']:.2f}% at 0.5"
        else:
            summary = f"top-1 {100 * result['eval_top1']:.2f}%, top-5 {100 * result['eval_top5']:.2f}%"
        ema_metric = self.metric.replace("eval_", "eval_ema_")
        if ema_metric in result:
            summary += f" (EMA: {ema_metric} {100 * result[ema_metric]:.2f}%)"
        return f"eval loss {result['eval_loss']:.4f}, {summary} on {result['eval_samples']} samples"
