"""Tests that ViT-custom follows transformers' model conventions: public forwards, problem types, initialisation,
input embeddings and gradient checkpointing, attention implementations."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modeling_vit_custom import ViTCustomForImageClassification, ViTCustomModel
from modeling_vit_custom import modeling_vit_custom as modeling

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


# --- problem types -----------------------------------------------------------------------------------------------


def fixed_logits_model(tiny_config, logits: list[float], **overrides) -> ViTCustomForImageClassification:
    """A model whose logits are `logits` for any image: the head's weight is zero and its bias is `logits`."""
    model = ViTCustomForImageClassification(tiny_config(num_labels=len(logits), **overrides)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(logits))
    return model


def bce(logit: float, target: float) -> float:
    return -(target * math.log(1 / (1 + math.exp(-logit))) + (1 - target) * math.log(1 - 1 / (1 + math.exp(-logit))))


@pytest.mark.parametrize("labels_shape", [(3,), (3, 1)], ids=["(B,)", "(B, 1)"])
@pytest.mark.parametrize("problem_type", [None, "regression"], ids=["inferred", "set"])
def test_regression_loss_is_mean_squared_error(tiny_config, seed, labels_shape, problem_type):
    model = ViTCustomForImageClassification(tiny_config(num_labels=1, problem_type=problem_type)).train()
    labels = torch.tensor([0.5, -1.0, 2.0]).reshape(labels_shape)
    out = model(images(3), labels=labels)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[:, 0], labels.reshape(3)), atol=1e-6, rtol=0)
    out.loss.backward()
    # Every sample's error reaches the head: (B,) labels against (B, 1) logits must not broadcast to (B, B).
    expected_bias_grad = 2 * (out.logits[:, 0].detach() - labels.reshape(3)).mean()
    torch.testing.assert_close(model.head.bias.grad, expected_bias_grad.reshape(1), atol=1e-6, rtol=0)
    assert model.head.weight.grad.abs().sum() > 0
    assert model.config.problem_type == problem_type


def test_regression_with_several_outputs_and_integer_labels(tiny_config, seed):
    model = fixed_logits_model(tiny_config, [1.0, 2.0, 3.0], problem_type="regression")
    loss = model(images(2), labels=torch.tensor([[1, 0, 3], [0, 0, 0]])).loss
    assert loss.item() == pytest.approx((0 + 4 + 0 + 1 + 4 + 9) / 6, abs=1e-6)


def test_multi_label_loss_is_binary_cross_entropy_with_logits(tiny_config, seed):
    model = fixed_logits_model(tiny_config, [-1.0, 0.0, 2.0], problem_type="multi_label_classification")
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = model(images(2), labels=labels)
    expected = sum(bce(z, y) for row in labels.tolist() for z, y in zip([-1.0, 0.0, 2.0], row, strict=True)) / 6
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels), atol=1e-6, rtol=0)
    # Integer multi-hot targets give the same loss.
    assert model(images(2), labels=labels.long()).loss.item() == pytest.approx(expected, abs=1e-6)


def test_float_labels_without_a_problem_type_are_soft_targets(tiny_config, seed):
    """Unlike transformers' inference (float labels -> multi-label), float labels are soft single-label targets."""
    model = fixed_logits_model(tiny_config, [math.log(1.0), math.log(3.0)])
    loss = model(images(1), labels=torch.tensor([[1.0, 1.0]])).loss
    assert loss.item() == pytest.approx(-(math.log(0.25) + math.log(0.75)), abs=1e-6)
    assert model.config.problem_type is None


def test_compute_loss_as_a_static_method(seed):
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.bfloat16)
    index_loss = ViTCustomForImageClassification.compute_loss(logits, torch.tensor([1]))
    soft_loss = ViTCustomForImageClassification.compute_loss(logits, torch.tensor([[0.0, 1.0]]))
    assert index_loss.dtype == soft_loss.dtype == torch.float32
    assert index_loss.item() == pytest.approx(-math.log(0.75), abs=1e-2)
    torch.testing.assert_close(soft_loss, index_loss, atol=0, rtol=0)
    bce_loss = ViTCustomForImageClassification.compute_loss(
        torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 1.0]]), problem_type="multi_label_classification"
    )
    assert bce_loss.item() == pytest.approx((bce(0.0, 0.0) + bce(math.log(3.0), 1.0)) / 2, abs=1e-6)


@pytest.mark.parametrize(
    ("num_labels", "problem_type", "labels", "message"),
    [
        (
            1,
            None,
            torch.zeros(2, 2),
            r"regression labels of shape \(2, 1\) \(batch, num_labels\) or \(2,\), got \(2, 2\)",
        ),
        (3, "regression", torch.zeros(2), r"regression labels of shape \(2, 3\) \(batch, num_labels\), got \(2,\)"),
        (3, "multi_label_classification", torch.zeros(2), r"multi-label targets of shape \(2, 3\).*got \(2,\)"),
        (3, "single_label_classification", torch.zeros(2, 4), r"soft labels of shape \(2, 3\).*got \(2, 4\)"),
        (3, "ordinal", torch.zeros(2, dtype=torch.long), r"problem_type: expected 'regression'.*got 'ordinal'"),
    ],
)
def test_labels_that_do_not_fit_the_problem_type_raise(num_labels, problem_type, labels, message):
    with pytest.raises(ValueError, match=message):
        ViTCustomForImageClassification.compute_loss(torch.zeros(2, num_labels), labels, problem_type)


def test_config_refuses_an_unknown_problem_type(tiny_config):
    with pytest.raises(ValueError, match=r"ViTCustomConfig.problem_type: expected None or one of .*got 'ordinal'"):
        tiny_config(problem_type="ordinal")


# --- weight initialisation ---------------------------------------------------------------------------------------

CONFIG_VARIANTS = {
    "plain": {},
    "conv_stem": {"conv_stem_depth": 3},
    "mean_pooling": {"pooling": "mean"},
    "drop_path": {"drop_path_rate": 0.1},
    "no_qkv_bias": {"qkv_bias": False},
    # timm's zoo features (DINOv2 with registers, SigLIP, CLIP, AIMv2, the *_gap models)
    "registers_no_embed_class": {"num_register_tokens": 2, "prefix_position_embeddings": False},
    "attention_pooling": {"class_token": False, "num_register_tokens": 1, "pooling": "map"},
    "layer_scale": {"layer_scale_init_value": 0.1},
    "scale_norms": {"scale_attn_norm": True, "scale_mlp_norm": True},
    "rms_norm_qk_norm": {"norm_type": "rms_norm", "qk_norm": True},
    "gated_mlp": {"mlp_type": "gated", "hidden_act": "silu", "proj_bias": False},
    "clip_norms": {"pre_norm": True, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "patch_norm_fc_norm": {"class_token": False, "pooling": "mean", "fc_norm": True, "patch_norm": True},
}


def assert_initialised(model: torch.nn.Module):
    """Every tensor finite; norms at 1 and 0, BatchNorm statistics at 0, 1 and 0 batches; weights not constant."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.BatchNorm2d)):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        if isinstance(module, modeling.ViTCustomLayerScale):
            assert torch.equal(module.gamma, torch.full_like(module.gamma, module.init_value)), name
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean)), name
            assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
            assert module.num_batches_tracked.item() == 0, name
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert 0 < module.weight.std().item() < 1, name
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor.float()).all(), name


@pytest.mark.parametrize("variant", CONFIG_VARIANTS)
def test_a_model_built_on_the_meta_device_is_initialised_by_init_weights(tiny_config, seed, variant):
    with torch.device("meta"):
        model = ViTCustomForImageClassification(tiny_config(**CONFIG_VARIANTS[variant]))
    model.to_empty(device="cpu")
    with torch.no_grad():  # whatever the new memory holds, init_weights must overwrite every tensor
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(math.nan if tensor.is_floating_point() else 7)
    model.init_weights()
    assert_initialised(model)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(images(2)).logits).all()


@pytest.mark.parametrize("variant", CONFIG_VARIANTS)
def test_weights_missing_from_a_checkpoint_are_initialised_and_the_others_loaded(tiny_config, seed, tmp_path, variant):
    model = ViTCustomForImageClassification(tiny_config(**CONFIG_VARIANTS[variant]))
    with torch.no_grad():  # loaded values are told apart from initial ones
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.add_(3)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    missing = [key for key in saved if key.startswith(("vit.embeddings.", "vit.norm.", "vit.encoder.layers.1."))]
    save_file({key: value for key, value in saved.items() if key not in missing}, tmp_path / "model.safetensors")

    loaded = ViTCustomForImageClassification.from_pretrained(tmp_path).eval()
    state = loaded.state_dict()
    assert all(torch.equal(state[key], value) for key, value in saved.items() if key not in missing)
    assert not any(torch.equal(state[key], saved[key]) for key in missing)
    assert_initialised(loaded.vit.embeddings)
    assert_initialised(loaded.vit.norm)
    assert_initialised(loaded.vit.encoder.layers[1])
    with torch.no_grad():
        assert torch.isfinite(loaded(images(2)).logits).all()


# --- input embeddings and activation checkpointing ---------------------------------------------------------------


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("depth", "attribute"), [(0, "patch_proj"), (3, "conv_stem")])
def test_input_embeddings_are_the_patch_embedding(tiny_config, depth, attribute):
    model = ViTCustomForImageClassification(tiny_config(conv_stem_depth=depth))
    expected = getattr(model.vit.embeddings, attribute)
    assert model.get_input_embeddings() is expected
    assert model.vit.get_input_embeddings() is expected


@pytest.mark.parametrize("depth", [0, 3], ids=["patch_proj", "conv_stem"])
@pytest.mark.parametrize("require_input_grads", [False, True], ids=["plain", "enable_input_require_grads"])
def test_a_frozen_backbone_passes_gradients_through_checkpointed_layers(tiny_config, seed, depth, require_input_grads):
    """With reentrant checkpointing, a layer whose input needs no gradient gives none to its parameters: a frozen
    embedding must be hooked for an adapter-like trainable parameter inside the layers to learn."""
    model = ViTCustomForImageClassification(tiny_config(conv_stem_depth=depth)).train()
    model.vit.requires_grad_(False)
    trainable = model.vit.encoder.layers[0].attn.qkv.weight
    trainable.requires_grad_(True)
    with pytest.warns(FutureWarning, match="gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert all(layer.gradient_checkpointing for layer in model.vit.encoder.layers)
    pixel_values, labels = images(2), torch.tensor([1, 2])
    if require_input_grads:
        model.enable_input_require_grads()
        model(pixel_values, labels=labels).loss.backward()
        assert trainable.grad is not None and trainable.grad.abs().sum() > 0
    else:
        with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
            model(pixel_values, labels=labels).loss.backward()
        assert trainable.grad is None
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointing_with_every_regulariser_gives_the_same_gradients(tiny_config, seed, use_reentrant):
    """Dropout and drop-path masks are replayed in the recomputation (checkpoint restores the RNG state)."""
    config = tiny_config(
        conv_stem_depth=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, drop_path_rate=0.3
    )
    model = ViTCustomForImageClassification(config).train()
    pixel_values, labels = images(4), torch.randint(0, LABELS, (4,))
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), gradients(model)))
    (loss, expected), (checkpointed_loss, got) = results
    torch.testing.assert_close(checkpointed_loss, loss, atol=0, rtol=0)
    assert got.keys() == expected.keys() == {name for name, _ in model.named_parameters()}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


# --- attention implementations -----------------------------------------------------------------------------------


@pytest.fixture
def attention_calls(monkeypatch):
    """Counts calls of our eager attention function and of `F.scaled_dot_product_attention`, by name."""
    calls = {"eager": 0, "sdpa": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(modeling, "eager_attention_forward", counting("eager", modeling.eager_attention_forward))
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting("sdpa", F.scaled_dot_product_attention))
    return calls


def test_set_attn_implementation_switches_the_attention_function(tiny_config, seed, attention_calls):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    pixel_values = images(2)
    assert model.config._attn_implementation == "sdpa"
    logits = {}
    for implementation, expected_calls in [("eager", {"eager": 2, "sdpa": 0}), ("sdpa", {"eager": 0, "sdpa": 2})]:
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        assert model.vit.encoder.layers[0].attn.config._attn_implementation == implementation
        attention_calls.update(eager=0, sdpa=0)
        with torch.no_grad():
            logits[implementation] = model(pixel_values).logits
        assert attention_calls == expected_calls, implementation
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def test_attention_maps_under_sdpa_come_from_the_eager_path(tiny_config, seed, attention_calls):
    model = ViTCustomModel(tiny_config()).eval()
    pixel_values = images(2)
    with torch.no_grad():
        sdpa = model(pixel_values, output_attentions=True)
        assert attention_calls == {"eager": 2, "sdpa": 0}
        model.set_attn_implementation("eager")
        eager = model(pixel_values, output_attentions=True)
    assert [a.shape for a in sdpa.attentions] == [(2, 4, 17, 17)] * 2
    for got, expected in zip(sdpa.attentions, eager.attentions, strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        torch.testing.assert_close(got.sum(dim=-1), torch.ones(2, 4, 17), atol=1e-6, rtol=0)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, atol=0, rtol=0)


def test_attn_implementation_at_load_and_after(tiny_config, seed, tmp_path, attention_calls):
    ViTCustomForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = ViTCustomForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        model(images(1))
    assert attention_calls == {"eager": 2, "sdpa": 0}
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model(images(1))
    assert attention_calls == {"eager": 2, "sdpa": 2}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.nn.attention, "flex_attention"), reason="torch without flex_attention")
def test_eager_sdpa_and_flex_attention_give_the_same_logits(tiny_config, seed, attention_calls):
    """Flex attention compiles on first use (tens of seconds on CPU). The class-token-only last layer (plain forward)
    and the full one (with hidden states) run under each implementation."""
    model = ViTCustomForImageClassification(tiny_config()).eval()
    pixel_values = images(2)
    logits = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = (
                model(pixel_values).logits,
                model(pixel_values, output_hidden_states=True).logits,
            )
    assert attention_calls == {"eager": 4, "sdpa": 4}  # flex_attention called neither
    for implementation in ("sdpa", "flex_attention"):
        for got, expected in zip(logits[implementation], logits["eager"], strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m, i=implementation: f"{i}: {m}")


@pytest.mark.parametrize("variant", CONFIG_VARIANTS)
def test_every_parameter_gets_a_finite_gradient_and_attention_implementations_agree(tiny_config, seed, variant):
    model = ViTCustomForImageClassification(tiny_config(**CONFIG_VARIANTS[variant])).train()
    pixel_values = images(2)
    model(pixel_values, labels=torch.tensor([1, 2])).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    model.eval()
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(pixel_values).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-5, rtol=0)
