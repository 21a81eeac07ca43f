"""Tests that ViT-custom follows transformers' model conventions: public forwards, problem types, initialisation,
input embeddings and gradient checkpointing, attention implementations."""

import inspect

import pytest
import torch

from modeling_vit_custom import ViTCustomForImageClassification, ViTCustomModel

HIDDEN = 64
LABELS = 10


def images(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32)


# --- public forwards ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [ViTCustomModel, ViTCustomForImageClassification])
def test_public_forwards_have_no_private_arguments(model_class):
    parameters = inspect.signature(model_class.forward).parameters
    assert not [name for name in parameters if name.startswith("_")]


@pytest.mark.parametrize(("pooling", "last_layer_tokens"), [("cls", 1), ("mean", 17)])
def test_backbone_forward_is_always_full_and_the_head_asks_for_the_class_token_only(
    tiny_config, seed, pooling, last_layer_tokens
):
    model = ViTCustomForImageClassification(tiny_config(pooling=pooling)).eval()
    shapes = []
    model.vit.encoder.layers[-1].register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out[0].shape)))
    pixel_values = images(2)
    with torch.no_grad():
        logits = model(pixel_values).logits
        backbone = model.vit(pixel_values)
    assert shapes == [(2, last_layer_tokens, HIDDEN), (2, 17, HIDDEN)]
    assert backbone.last_hidden_state.shape == (2, 17, HIDDEN)
    torch.testing.assert_close(logits, model.head(backbone.pooler_output), atol=1e-5, rtol=0)
