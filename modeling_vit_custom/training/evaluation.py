"""Evaluation on any number of processes, and the check that every process holds the same weights."""

from collections.abc import Callable

import torch
from torch import nn

from ..metrics import TOP_K_ACCURACY
from .models import logits_of


@torch.no_grad()
def run_evaluation(model: nn.Module, loader, normalize: Callable, accelerator, prepared: bool = True) -> dict:
    """Loss, top-1 and top-5 over the whole split on any number of processes, counting each sample once; `normalize`
    turns the loader's uint8 batches into the model's input."""
    import evaluate

    metric = evaluate.load(TOP_K_ACCURACY, keep_in_memory=True)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    num_ranked = 5
    for batch in loader:
        pixel_values = normalize(batch["pixel_values"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            logits = logits_of(model, pixel_values).float()
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        num_ranked = min(5, logits.shape[-1])
        ranked = logits.topk(num_ranked, dim=-1).indices  # (B, k): only the ranking travels between processes
        if prepared:
            # Drops the samples the prepared loader repeated to give every process equal batches.
            ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
        else:
            # Streaming shards are disjoint but uneven: pad to equal size, gather, drop the padding.
            padded = [accelerator.pad_across_processes(t, dim=0, pad_index=-1) for t in (ranked, labels, losses)]
            ranked, labels, losses = accelerator.gather(padded)
            keep = labels >= 0
            ranked, labels, losses = ranked[keep], labels[keep], losses[keep]
        metric.add_batch(predictions=ranked.cpu().numpy(), references=labels.cpu().numpy())
        total_loss += losses.double().sum()
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
    """Whether every process holds bit-identical parameters: compares a fingerprint of their raw bits."""
    bits = torch.cat([p.detach().float().reshape(-1) for p in accelerator.unwrap_model(model).parameters()])
    bits = bits.view(torch.int32).long()
    weights = torch.arange(1, bits.numel() + 1, device=bits.device) % 1_000_003
    fingerprint = (bits * weights).sum().reshape(1)  # int64 arithmetic wraps identically on every rank
    fingerprints = accelerator.gather(fingerprint)
    return bool((fingerprints == fingerprints[0]).all())
