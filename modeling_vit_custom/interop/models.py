"""What the tools ask of any image classifier they handle, ours (an output object, a config) or timm's (a tensor,
attributes)."""

import torch
from torch import nn


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits (B, num_classes) of our model or of a timm model."""
    output = model(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


def num_classes_of(model: nn.Module) -> int:
    return model.config.num_labels if hasattr(model, "config") else model.num_classes
