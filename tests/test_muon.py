"""`--optim muon`: which weights Muon steps, what one step does, and that a layer-decayed fine-tuning split carries
over. Training, checkpointing and resuming with it: tests/test_in_memory.py; refusals: tests/test_run_lifecycle.py
and tests/test_fsdp.py."""

import timm
import torch

from modeling_vit_custom import ViTCustomForImageClassification
from modeling_vit_custom.interop.card import recipe
from modeling_vit_custom.training.arguments import TrainingArguments
from modeling_vit_custom.training.models import create_optimizer
from modeling_vit_custom.training.muon import MuonWithAdamW, orthogonalize

ENCODER_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # per layer, ours and timm's
STEM = {"conv_stem_channels": [8, 16, 32, 32], "conv_stem_strides": [1, 2, 2, 2]}  # the quickstart's kind


def groups_by_name(model, optimizer) -> dict:
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    return {name: group_of[id(param)] for name, param in model.named_parameters()}


def test_muon_steps_the_encoders_weight_matrices_and_adamw_the_rest(tiny_config):
    model = ViTCustomForImageClassification(tiny_config(**STEM))
    optimizer = create_optimizer(model, TrainingArguments(optim="muon", muon_lr_scale=4.0, weight_decay=0.05), 1e-3)
    assert isinstance(optimizer, MuonWithAdamW)
    groups = groups_by_name(model, optimizer)
    muon = sorted(name for name, group in groups.items() if group["use_muon"])
    assert muon == sorted(f"vit.encoder.layers.{i}.{layer}.weight" for i in range(2) for layer in ENCODER_LINEARS)
    # AdamW for the whole stem (the model's input embedding) and the classifier (decayed), and for tokens, biases and
    # norms (not).
    stem = [f"vit.embeddings.conv_stem.{i}.weight" for i in (0, 3, 6, 9, 12)]
    assert {groups[name]["weight_decay"] for name in stem + ["head.weight"]} == {0.05}
    assert groups["vit.embeddings.cls_token"]["weight_decay"] == groups["vit.norm.bias"]["weight_decay"] == 0.0
    assert all(group["weight_decay"] == 0.05 for name, group in groups.items() if name in muon)
    assert {group["lr"] for group in optimizer.param_groups} == {1e-3}
    assert {group["muon_lr_scale"] for group in optimizer.param_groups} == {4.0}


def test_muon_leaves_the_patch_embedding_and_head_of_timms_vit_to_adamw():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=2, img_size=32)
    groups = groups_by_name(model, create_optimizer(model, TrainingArguments(optim="muon"), 1e-3))
    muon = sorted(name for name, group in groups.items() if group["use_muon"])
    assert muon == sorted(f"blocks.{i}.{layer}.weight" for i in range(2) for layer in ENCODER_LINEARS)


def test_layer_decay_scales_muons_groups_as_adamws(tiny_config):
    model = ViTCustomForImageClassification(tiny_config(num_hidden_layers=3))
    args = dict(layer_decay=0.7, weight_decay=0.05)
    adamw = groups_by_name(model, create_optimizer(model, TrainingArguments(**args), lr=1e-3))
    muon = groups_by_name(model, create_optimizer(model, TrainingArguments(optim="muon", **args), lr=1e-3))
    assert muon["vit.encoder.layers.0.attn.qkv.weight"]["use_muon"]
    for name, group in adamw.items():
        assert (muon[name]["lr"], muon[name]["weight_decay"]) == (group["lr"], group["weight_decay"]), name


def test_orthogonalize_keeps_the_singular_vectors_and_brings_the_values_near_one():
    torch.manual_seed(0)
    for shape in ((48, 144), (256, 64)):
        matrix = torch.randn(*shape) @ torch.diag(torch.logspace(-1.5, 0, shape[1]))  # singular values 10-45x apart
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        result = orthogonalize(matrix)
        values = torch.linalg.svdvals(result)
        assert result.shape == matrix.shape and result.dtype == torch.float32
        assert 0.65 < values.min() and values.max() < 1.2, values
        cosine = (result * (u @ vh)).sum() / (result.norm() * (u @ vh).norm())
        assert cosine > 0.95


def test_one_muon_step_is_the_orthogonalised_momentum_at_adamws_size():
    """From zero momentum the Nesterov update is a multiple of the gradient: the step is -lr x scale x 0.2 x
    sqrt(256) x orthogonalize(gradient), after weight decay; its RMS about 0.2 x lr x scale, AdamW's."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 16, 2, 2))  # a convolution, stepped as its (64, 64) matrix
    linear = torch.nn.Parameter(torch.randn(64, 256))
    before = (weight.detach().clone(), linear.detach().clone())
    weight.grad, linear.grad = torch.randn_like(weight), torch.randn_like(linear)
    optimizer = MuonWithAdamW(
        [{"params": [weight, linear], "use_muon": True, "weight_decay": 0.1}], lr=0.01, muon_lr_scale=2.0
    )
    optimizer.step()
    lr = 0.01 * 2.0
    for param, start, columns in ((weight, before[0], 64), (linear, before[1], 256)):
        expected = start * (1 - lr * 0.1) - lr * 0.2 * columns**0.5 * orthogonalize(
            param.grad.reshape(64, -1)
        ).reshape(param.shape)
        torch.testing.assert_close(param.detach(), expected)
        step = param.detach() - start * (1 - lr * 0.1)
        assert 0.7 * 0.2 * lr < step.pow(2).mean().sqrt() < 1.2 * 0.2 * lr


def test_the_model_cards_recipe_names_the_optimiser():
    config = {"optim": "muon", "muon_lr_scale": 4.0, "learning_rate": 6e-3, "effective_learning_rate": 7.5e-4,
              "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 0.05, "max_grad_norm": 1.0,
              "per_device_train_batch_size": 64, "global_batch_size": 64}  # fmt: skip
    rows = dict(recipe(config, parameters=1000, dataset="fashion_mnist"))
    assert rows["Optimiser"].startswith(
        "Muon at 4x the rate for the encoder's weight matrices, AdamW for the rest, learning rate 0.006 per 512 "
        "images (0.00075 at this batch)"
    )
