"""The model a run trains or evaluates (ours, or timm's for comparison), its optimizer, schedule and saved folder."""

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import get_scheduler

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..files import replacing
from ..image_processing import PreprocessSettings
from .arguments import ModelArguments, TrainingArguments, parse_config_overrides, timm_kwargs
from .muon import MuonWithAdamW, split_for_muon
from .pretrained import load_pretrained


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits (B, num_classes) of our model (an output object) or of a timm model (a tensor)."""
    output = model(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


def num_classes_of(model: nn.Module) -> int:
    return model.config.num_labels if hasattr(model, "config") else model.num_classes


def class_names_of(model: nn.Module) -> list[str] | None:
    """The class names in the model's order: our config's id2label, or the label_names timm keeps in its pretrained
    config (None when it has none, or no pretrained config: a timm model built from its class)."""
    if hasattr(model, "config"):
        return [model.config.id2label[i] for i in range(model.config.num_labels)]
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return list(names) if isinstance(names, (list, tuple)) else None


def build_model(
    args: ModelArguments, class_names: list[str], multi_label: bool = False
) -> tuple[nn.Module, PreprocessSettings]:
    """Our model (from overrides, or a saved folder with `pretrained.load_pretrained`) or `timm:<name>`, with the
    preprocessing it expects. Ours records the class names in id2label and, for a multi-label dataset, problem_type
    "multi_label_classification" (which also makes `pipeline` give sigmoid scores); timm's records the class names as
    its label_names, which `save_for_hf` writes into its config.json."""
    problem_type = "multi_label_classification" if multi_label else None
    overrides = parse_config_overrides(args.model_config_overrides)
    if args.model.startswith("timm:"):
        import timm

        model = timm.create_model(
            args.model.removeprefix("timm:"),
            pretrained=False,
            num_classes=len(class_names),
            pretrained_cfg_overlay={"label_names": list(class_names), "num_classes": len(class_names)},
            **timm_kwargs(overrides),
        )
        return model, PreprocessSettings.from_timm(model)
    if args.model != "vit_custom":
        raise ValueError(f"--model: expected 'vit_custom' or 'timm:<name>', got {args.model!r}")
    if args.model_name_or_path:
        model = load_pretrained(args.model_name_or_path, {**overrides, "problem_type": problem_type}, class_names)
    else:
        id2label = dict(enumerate(class_names))
        label2id = {name: i for i, name in id2label.items()}
        config = ViTCustomConfig(id2label=id2label, label2id=label2id, problem_type=problem_type, **overrides)
        model = ViTCustomForImageClassification(config)
    if args.attn_implementation is not None:
        model.set_attn_implementation(args.attn_implementation)
    settings = args.preprocess_settings(model.config.image_size)
    if len(settings.mean) != model.config.num_channels:
        raise ValueError(
            f"--image_mean/--image_std: expected {model.config.num_channels} values (num_channels), "
            f"got {len(settings.mean)}"
        )
    return model, settings


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """The same loss for both models: cross-entropy on class indices or on soft targets (mixup, smoothing); binary
    cross-entropy with logits on multi-hot targets for a multi-label run."""
    problem_type = "multi_label_classification" if multi_label else None
    return ViTCustomForImageClassification.compute_loss(logits, labels, problem_type)


def layer_depth(name: str, num_layers: int) -> int:
    """BEiT's and MAE's depth of one of our classifier's parameters: 0 for the embeddings, i + 1 for encoder layer
    i, num_layers + 1 for the final norm and the head (timm's grouping puts the final norm with the last layer)."""
    if name.startswith("vit.embeddings."):
        return 0
    if name.startswith("vit.encoder.layers."):
        return int(name.split(".")[3]) + 1
    return num_layers + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """No weight decay on 1-D parameters (biases, norms) nor on the position embedding and class token.

    With `layer_decay` (BEiT, MAE; timm's `param_groups_layer_decay`), one group per depth and decay, each with an
    `lr_scale` of layer_decay ** (num_layers + 1 - depth): the head and final norm learn at the full rate, each
    layer below at `layer_decay` times the one above, the embeddings least. The groups run from the head down, so
    the first group's rate is the run's. timm models get timm's own grouping (`--model timm:<name>`)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None and not isinstance(model, ViTCustomForImageClassification):
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
        return sorted(groups, key=lambda group: -group["lr_scale"])
    num_layers = model.config.num_hidden_layers if layer_decay is not None else 0
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_token = name in skip or name.split(".")[-1] in skip
        decayed = param.ndim >= 2 and not is_token
        depth = layer_depth(name, num_layers) if layer_decay is not None else 0
        if (depth, decayed) not in groups:
            groups[depth, decayed] = {"params": [], "weight_decay": weight_decay if decayed else 0.0}
            if layer_decay is not None:
                groups[depth, decayed]["lr_scale"] = layer_decay ** (num_layers + 1 - depth)
        groups[depth, decayed]["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda key: (-key[0], not key[1]))]


def scaled_learning_rate(lr_per_512: float, global_batch_size: int) -> float:
    return lr_per_512 * global_batch_size / 512


def check_learning_rate_floor(args: TrainingArguments, lr: float, global_batch_size: int) -> None:
    """Refuses an absolute floor (`min_lr` of --lr_scheduler_kwargs, DeiT's 1e-5) at or above the peak rate this
    global batch gives: the schedule would climb from its "peak" to the floor instead of decaying to it. A floor that
    scales with the rate is `min_lr_rate`, a fraction of the peak."""
    min_lr = json.loads(args.lr_scheduler_kwargs).get("min_lr") if args.lr_scheduler_kwargs else None
    if min_lr is not None and min_lr >= lr:
        raise ValueError(
            f"--lr_scheduler_kwargs min_lr {min_lr:g}: expected a floor below the peak learning rate, got a peak of "
            f"{lr:.3g} (--learning_rate {args.learning_rate:g} per 512 x global batch {global_batch_size} / 512); use "
            f"min_lr_rate (a fraction of the peak: {min_lr / scaled_learning_rate(args.learning_rate, 1024):g} is "
            "this floor's at batch 1024) or a larger global batch"
        )


def create_optimizer(model: nn.Module, args: TrainingArguments, lr: float) -> torch.optim.Optimizer:
    """AdamW (or Muon with AdamW, `--optim muon`) at `lr`, each group's rate scaled by its `lr_scale` (layer decay);
    the schedule then scales them all alike (LambdaLR multiplies each group's initial rate)."""
    groups = param_groups(model, args.weight_decay, args.layer_decay)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optim == "muon":
        return MuonWithAdamW(split_for_muon(model, groups), lr=lr, betas=betas, muon_lr_scale=args.muon_lr_scale)
    # The fused kernel exists for CPU and CUDA, and steps far faster than the default foreach path on both.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def create_scheduler(optimizer, args: TrainingArguments, steps_per_epoch: int, max_train_steps: int):
    """transformers' schedule, defined in optimizer steps: the training loop steps it once per optimizer step."""
    warmup = args.num_warmup_steps + round(args.warmup_epochs * steps_per_epoch)
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max_train_steps,
        scheduler_specific_kwargs=json.loads(args.lr_scheduler_kwargs) if args.lr_scheduler_kwargs else None,
    )


def steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in an epoch of `num_batches` per-process batches (a trailing partial accumulation steps too)."""
    return math.ceil(num_batches / gradient_accumulation_steps)


def save_model_folder(accelerator, model: nn.Module, settings: PreprocessSettings, path: Path):
    """A self-contained model folder (weights, config, code, image processor), replaced atomically."""
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed: every rank calls it
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        with replacing(path, folder=True) as staging:
            if isinstance(unwrapped, ViTCustomForImageClassification):
                if isinstance(unwrapped, FSDPModule):
                    # fully_shard gave the model a class of torch's (FSDPViTCustom...), whose code save_pretrained
                    # would ship: the gathered weights go through a plain model, built on the meta device.
                    with torch.device("meta"):
                        unwrapped = ViTCustomForImageClassification(unwrapped.config)
                unwrapped.save_pretrained(staging, state_dict=state_dict)
            else:
                from timm.models import save_for_hf

                save_for_hf(unwrapped, str(staging), safe_serialization=True)
            settings.to_image_processor().save_pretrained(staging)
    accelerator.wait_for_everyone()
