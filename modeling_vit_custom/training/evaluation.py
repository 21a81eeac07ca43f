"""Evaluation on any number of processes, and the check that every process holds the same weights."""

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..metrics import TOP_K_ACCURACY
from .models import logits_of


@torch.no_grad()
def run_evaluation(
    model: nn.Module, loader, normalize: Callable, accelerator, num_classes: int, prepared: bool = True
) -> dict:
    """Loss, top-1 and top-5 over the whole split on any number of processes, counting each sample once; `normalize`
    turns the loader's uint8 batches into the model's input.

    A prepared loader gives every process the same number of batches: each batch is gathered as it comes. A stream's
    shards are disjoint and uneven, so a process may have fewer batches than another: its results are kept and
    gathered once, at the end, which every process reaches."""
    import evaluate

    metric = evaluate.load(TOP_K_ACCURACY, keep_in_memory=True)
    was_training = model.training
    model.eval()
    num_ranked = min(5, num_classes)
    total_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    kept = []
    for batch in loader:
        pixel_values = normalize(batch["pixel_values"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            logits = logits_of(model, pixel_values).float()
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        ranked = logits.topk(num_ranked, dim=-1).indices  # (B, k): only the ranking travels between processes
        if prepared:
            # Drops the samples the prepared loader repeated to give every process equal batches.
            ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
            metric.add_batch(predictions=ranked.cpu().numpy(), references=labels.cpu().numpy())
            total_loss += losses.double().sum()
        else:
            kept.append((ranked, labels, losses))
    if not prepared:
        device = accelerator.device
        ranked, labels, losses = (
            (torch.cat(parts) for parts in zip(*kept, strict=True))
            if kept
            else (torch.empty(0, num_ranked, dtype=torch.long, device=device),
                  torch.empty(0, dtype=torch.long, device=device), torch.empty(0, device=device))
        )  # fmt: skip
        # Pad every process's results to the longest, gather, drop the padding (label -1).
        padded = [accelerator.pad_across_processes(t, dim=0, pad_index=-1) for t in (ranked, labels, losses)]
        ranked, labels, losses = accelerator.gather(padded)
        keep = labels >= 0
        metric.add_batch(predictions=ranked[keep].cpu().numpy(), references=labels[keep].cpu().numpy())
        total_loss += losses[keep].double().sum()
    result = metric.compute(k=[1, num_ranked])
    samples = result["samples"]
    model.train(was_training)
    return {
        "eval_loss": float(total_loss) / max(samples, 1),
        "eval_top1": result["top1"],
        "eval_top5": result[f"top{num_ranked}"],
        "eval_samples": samples,
    }


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
