"""LoRA adapters (peft) on the fused qkv projection: trained under activation checkpointing with the backbone frozen,
merged, saved and reloaded as remote code."""

import pytest
import torch
from launch import remote_logits
from torch import nn

from modeling_vit_custom import ViTCustomForImageClassification

peft = pytest.importorskip("peft")


def test_lora_on_qkv_trains_with_checkpointing_merges_and_reloads(tiny_config, seed, tmp_path):
    model = ViTCustomForImageClassification(tiny_config(num_labels=3))
    # Reentrant checkpointing passes gradients only to inputs that require them: with the patch embedding frozen,
    # enable_input_require_grads() is what lets them reach the adapters inside the checkpointed layers.
    model.activation_checkpointing_enable({"use_reentrant": True})
    model.enable_input_require_grads()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"])
    lora_model = peft.get_peft_model(model, config)
    trainable = {name for name, p in lora_model.named_parameters() if p.requires_grad}
    prefix = "base_model.model."
    expected = {f"{prefix}head.modules_to_save.default.{kind}" for kind in ("weight", "bias")}
    for i in range(2):
        expected |= {f"{prefix}vit.encoder.layers.{i}.attn.qkv.lora_{ab}.default.weight" for ab in "AB"}
    assert trainable == expected

    # Each layer runs twice per step (forward, then again in the backward pass) when it is checkpointed.
    calls = []
    model.vit.encoder.layers[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    before = {name: p.detach().clone() for name, p in lora_model.named_parameters()}
    pixel_values = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8) % 3
    optimizer = torch.optim.AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=1e-2)
    losses, grad_norms = [], {}
    lora_model.train()
    for step in range(6):
        loss = lora_model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        if step == 1:  # lora_B starts at 0, so lora_A's gradient is 0 at the first step
            grads = {name: p.grad for name, p in lora_model.named_parameters() if p.requires_grad}
            grad_norms = {name: 0.0 if grad is None else grad.norm().item() for name, grad in grads.items()}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert len(calls) == 2 * 6
    # Every adapter trains, the last layer's too (its class-token-only attention calls the wrapped qkv).
    assert all(norm > 0 for norm in grad_norms.values()), grad_norms
    assert losses[-1] < losses[0] - 0.1, losses
    after = dict(lora_model.named_parameters())
    changed = {name for name, value in before.items() if not torch.equal(value, after[name])}
    assert changed == trainable  # the base weights, the original head included, are bit-identical

    lora_model.eval()
    with torch.no_grad():
        adapted = lora_model(pixel_values=pixel_values).logits
        merged = lora_model.merge_and_unload()
        merged_logits = merged(pixel_values).logits
    assert type(merged) is ViTCustomForImageClassification
    assert all(type(layer.attn.qkv) is nn.Linear for layer in merged.vit.encoder.layers)
    assert (merged_logits - adapted).abs().max().item() < 1e-5

    merged.save_pretrained(tmp_path / "merged")
    reloaded = remote_logits(tmp_path / "merged", pixel_values, tmp_path / "clean")
    assert (reloaded - merged_logits).abs().max().item() < 1e-6
