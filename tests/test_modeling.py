"""Tests of ViTCustomConfig, ViTCustomModel and ViTCustomForImageClassification at tiny sizes."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import Mixup
from timm.layers import resample_abs_pos_embed
from timm.loss import SoftTargetCrossEntropy
from transformers import AutoModelForImageClassification

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification, ViTCustomModel
from modeling_vit_custom.modeling_vit_custom import ViTCustomDropPath

# The tiny config of conftest: 32x32 images in 8x8 patches -> 16 patches + the class token.
NUM_TOKENS = 17
HIDDEN = 64
HEADS = 4
LAYERS = 2
LABELS = 10


def images(batch_size: int, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(batch_size, 3, height, width)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_gradients(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float):
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture
def count_sdpa(monkeypatch):
    """Counts calls of `F.scaled_dot_product_attention`, to tell which attention path actually ran."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    return calls


# --- configuration -----------------------------------------------------------------------------------------------

SIZE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
CONFIG_ERRORS = [
    ({"hidden_size": 66}, "hidden_size"),  # 4 heads do not divide 66
    ({"image_size": 36}, "image_size"),  # 8-pixel patches do not tile 36
    ({"pooling": "max"}, "pooling"),
    ({"conv_stem_depth": -1}, "conv_stem_depth"),
    ({"conv_stem_depth": 2}, "conv_stem_depth"),  # 32 -> 16 -> 8: an 8-wide grid, not 32 // 8 = 4
    ({"conv_stem_depth": 3, "hidden_size": 66, "num_attention_heads": 3}, "conv_stem_depth"),  # 66 / 4 channels
    ({"conv_stem_channels": [8, 16]}, "conv_stem_depth"),  # two stride-2 convolutions: an 8-wide grid
    ({"conv_stem_channels": [8, 16, 32], "conv_stem_depth": 2}, "conv_stem_channels"),  # 3 widths for 2 convs
    ({"conv_stem_channels": [8, 0, 32]}, "conv_stem_channels"),
    ({"conv_stem_channels": []}, "conv_stem_channels"),
    ({"conv_stem_channels": 32}, "conv_stem_channels"),
    ({"conv_stem_strides": [2, 3, 2]}, "conv_stem_strides"),
    ({"conv_stem_strides": [1, 2, 2, 2], "conv_stem_channels": [8, 16, 32]}, "conv_stem_strides"),
    *[({name: value}, name) for name in SIZE_FIELDS for value in (0, -8)],
    *[({name: value}, name) for name in PROBABILITY_FIELDS for value in (-0.1, 1.0)],
]


@pytest.mark.parametrize(("overrides", "field"), CONFIG_ERRORS, ids=[str(o) for o, _ in CONFIG_ERRORS])
def test_config_rejects_invalid_values(tiny_config, overrides, field):
    with pytest.raises(ValueError, match=rf"{field}\b.*expected.*got"):
        tiny_config(**overrides)


def test_config_validates_when_loaded(tiny_config, tmp_path):
    config_dict = tiny_config().to_dict()
    config_dict["hidden_size"] = 66
    (tmp_path / "config.json").write_text(json.dumps(config_dict))
    with pytest.raises(ValueError, match="hidden_size"):
        ViTCustomConfig.from_pretrained(tmp_path)


def test_config_accepts_boundary_values(tiny_config):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.99, drop_path_rate=0.5, patch_size=32)
    assert (config.attention_probs_dropout_prob, config.drop_path_rate, config.patch_size) == (0.99, 0.5, 32)
    round_trip = ViTCustomConfig.from_dict(config.to_dict())
    assert round_trip.to_dict() == config.to_dict()


def test_default_config_is_timm_vit_base_patch16_224():
    config = ViTCustomConfig()
    assert config.model_type == "vit_custom"
    fields = {
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "pooling": "cls",
        "num_labels": 1000,
    }
    assert {name: getattr(config, name) for name in fields} == fields

    # timm.create_model("vit_base_patch16_224") has exactly this many parameters.
    assert sum(p.numel() for p in ViTCustomForImageClassification(config).parameters()) == 86_567_656


# --- shapes, pooling and parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_shapes(tiny_config, seed, pooling, batch_size):
    config = tiny_config(pooling=pooling)
    pixel_values = images(batch_size)

    backbone = ViTCustomModel(config).eval()
    out = backbone(pixel_values, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (batch_size, NUM_TOKENS, HIDDEN)
    assert out.pooler_output.shape == (batch_size, HIDDEN)
    assert [h.shape for h in out.hidden_states] == [(batch_size, NUM_TOKENS, HIDDEN)] * (LAYERS + 1)
    assert [a.shape for a in out.attentions] == [(batch_size, HEADS, NUM_TOKENS, NUM_TOKENS)] * LAYERS
    plain = backbone(pixel_values)
    assert plain.hidden_states is None and plain.attentions is None

    classifier = ViTCustomForImageClassification(config).eval()
    labels = torch.randint(0, LABELS, (batch_size,))
    out = classifier(pixel_values, labels=labels, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (batch_size, LABELS)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert len(out.hidden_states) == LAYERS + 1 and len(out.attentions) == LAYERS
    as_tuple = classifier(pixel_values, labels=labels, return_dict=False)
    assert len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_and_head(tiny_config, seed, pooling):
    model = ViTCustomForImageClassification(tiny_config(pooling=pooling)).eval()
    pixel_values = images(2)
    with torch.no_grad():
        out = model.vit(pixel_values, output_hidden_states=True)
        logits = model(pixel_values).logits
    # The final LayerNorm is applied after the last block; hidden_states[-1] is the block output before it.
    torch.testing.assert_close(out.last_hidden_state, model.vit.norm(out.hidden_states[-1]))
    # Mean pooling averages the patch tokens only, after the final norm (not timm's avg pool + fc_norm).
    tokens = out.last_hidden_state
    expected_pooled = tokens[:, 0] if pooling == "cls" else tokens[:, 1:].mean(dim=1)
    torch.testing.assert_close(out.pooler_output, expected_pooled)
    torch.testing.assert_close(logits, model.head(expected_pooled), atol=1e-5, rtol=0)


def test_state_dict_keys_and_shapes(tiny_config):
    state_dict = ViTCustomForImageClassification(tiny_config()).state_dict()
    patch_dim = 8 * 8 * 3
    expected = {
        "vit.embeddings.patch_proj.weight": (HIDDEN, patch_dim),
        "vit.embeddings.patch_proj.bias": (HIDDEN,),
        "vit.embeddings.cls_token": (1, 1, HIDDEN),
        "vit.embeddings.position_embeddings": (1, NUM_TOKENS, HIDDEN),
        "vit.norm.weight": (HIDDEN,),
        "vit.norm.bias": (HIDDEN,),
        "head.weight": (LABELS, HIDDEN),
        "head.bias": (LABELS,),
    }
    for i in range(LAYERS):
        layer = f"vit.encoder.layers.{i}"
        expected |= {
            f"{layer}.norm1.weight": (HIDDEN,),
            f"{layer}.norm1.bias": (HIDDEN,),
            f"{layer}.attn.qkv.weight": (3 * HIDDEN, HIDDEN),
            f"{layer}.attn.qkv.bias": (3 * HIDDEN,),
            f"{layer}.attn.proj.weight": (HIDDEN, HIDDEN),
            f"{layer}.attn.proj.bias": (HIDDEN,),
            f"{layer}.norm2.weight": (HIDDEN,),
            f"{layer}.norm2.bias": (HIDDEN,),
            f"{layer}.mlp.fc1.weight": (128, HIDDEN),
            f"{layer}.mlp.fc1.bias": (128,),
            f"{layer}.mlp.fc2.weight": (HIDDEN, 128),
            f"{layer}.mlp.fc2.bias": (HIDDEN,),
        }
    assert {name: tuple(t.shape) for name, t in state_dict.items()} == expected


def test_patch_embedding_equals_timm_conv(tiny_config, seed):
    """The Linear over (p1 p2 c) patches is timm's stride-p convolution with its weight permuted (D, C, p, p)."""
    model = ViTCustomModel(tiny_config()).eval()
    pixel_values = images(2)
    proj = model.embeddings.patch_proj
    conv_weight = proj.weight.reshape(HIDDEN, 8, 8, 3).permute(0, 3, 1, 2)
    expected = F.conv2d(pixel_values, conv_weight, proj.bias, stride=8).flatten(2).transpose(1, 2)  # (B, N, D)
    with torch.no_grad():
        tokens = model(pixel_values, output_hidden_states=True).hidden_states[0]
        embeddings = model.embeddings
        expected = torch.cat([embeddings.cls_token.expand(2, -1, -1), expected], 1) + embeddings.position_embeddings
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)


def test_weight_init(tiny_config, seed):
    config = tiny_config(hidden_size=128, intermediate_size=512, initializer_range=0.05)
    model = ViTCustomForImageClassification(config)
    for name, param in model.named_parameters():
        if "norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.equal(param, torch.full_like(param, expected)), name
        elif name.endswith("bias"):
            assert torch.equal(param, torch.zeros_like(param)), name
        else:  # Linear weights, class token and position embedding: truncated normal with std initializer_range
            assert abs(param.std().item() - 0.05) < 0.3 * 0.05, (name, param.std().item())
            assert abs(param.mean().item()) < 0.02, (name, param.mean().item())


def test_no_weight_decay_names(tiny_config):
    model = ViTCustomForImageClassification(tiny_config())
    expected = {"vit.embeddings.position_embeddings", "vit.embeddings.cls_token"}
    assert model.no_weight_decay() == expected
    assert expected <= dict(model.named_parameters()).keys()
    assert model.vit.no_weight_decay() <= dict(model.vit.named_parameters()).keys()


def test_drop_path_rates_and_masks(tiny_config, seed):
    model = ViTCustomModel(tiny_config(num_hidden_layers=5, drop_path_rate=0.2))
    rates = [layer.drop_path.drop_prob for layer in model.encoder.layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])

    drop_path = ViTCustomDropPath(0.25).train()
    out = drop_path(torch.ones(4000, 3, 2))
    per_sample = out[:, 0, 0]
    # Whole samples are dropped or scaled by 1 / keep_prob, so the expectation is unchanged.
    assert torch.equal(out, per_sample[:, None, None].expand_as(out))
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert abs((per_sample == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_path.eval()(out), out)


def test_batch_size_one_trains_with_every_regulariser(tiny_config, seed):
    config = tiny_config(pooling="mean", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, drop_path_rate=0.5)
    model = ViTCustomForImageClassification(config).train()
    model.activation_checkpointing_enable()
    pixel_values = images(1)
    loss = model(pixel_values, labels=torch.full((1, LABELS), 1 / LABELS)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(model.vit.embeddings.cls_token.grad).all()
    assert model.vit.embeddings.cls_token.grad.abs().sum() > 0
    # Dropout is stochastic while training and off in eval mode.
    assert not torch.equal(model(pixel_values).logits, model(pixel_values).logits)
    model.eval()
    torch.testing.assert_close(model(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)


# --- gradients ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_every_parameter_gets_a_finite_gradient(tiny_config, seed, pooling, batch_size):
    config = tiny_config(pooling=pooling, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = ViTCustomForImageClassification(config).train()
    loss = model(images(batch_size), labels=torch.randint(0, LABELS, (batch_size,))).loss
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, seed, pooling, use_reentrant):
    model = ViTCustomForImageClassification(tiny_config(pooling=pooling, num_hidden_layers=3)).train()
    pixel_values, labels = images(3), torch.randint(0, LABELS, (3,))
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    expected = gradients(model)
    model.zero_grad()

    calls = []
    # A sub-module's hook: a GradientCheckpointingLayer recomputes its forward, not its own hooks (transformers keeps
    # module hooks, such as FSDP2's, outside the checkpoint).
    for layer in model.vit.encoder.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.vit.encoder.gradient_checkpointing
    checkpointed_loss = model(pixel_values, labels=labels).loss
    checkpointed_loss.backward()
    # Each layer ran once forward and once more, recomputed, during the backward pass.
    assert len(calls) == 2 * 3
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=0)
    assert_same_gradients(gradients(model), expected, atol=1e-6)


# --- attention ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sdpa_and_eager_attention_agree(tiny_config, seed, pooling, count_sdpa):
    model = ViTCustomForImageClassification(tiny_config(pooling=pooling)).train()  # dropout 0: deterministic
    pixel_values, labels = images(3), torch.randint(0, LABELS, (3,))
    results = {}
    for implementation in ("sdpa", "eager"):
        model.config._attn_implementation = implementation
        count_sdpa.clear()
        model.zero_grad()
        out = model(pixel_values, labels=labels)
        out.loss.backward()
        results[implementation] = (out.logits.detach(), gradients(model), len(count_sdpa))
    assert results["sdpa"][2] == LAYERS
    assert results["eager"][2] == 0
    torch.testing.assert_close(results["eager"][0], results["sdpa"][0], atol=1e-5, rtol=0)
    assert_same_gradients(results["eager"][1], results["sdpa"][1], atol=1e-5)


def test_attention_maps_are_softmax_over_keys(tiny_config, seed):
    model = ViTCustomModel(tiny_config()).eval()
    pixel_values = images(2)
    with torch.no_grad():
        out = model(pixel_values, output_attentions=True, output_hidden_states=True)
        for attention in out.attentions:
            assert (attention >= 0).all()
            torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, HEADS, NUM_TOKENS), atol=1e-6, rtol=0)
        # The first layer's map recomputed from its input tokens: softmax(q k^T / sqrt(head_dim)) per head.
        layer = model.encoder.layers[0]
        qkv = layer.attn.qkv(layer.norm1(out.hidden_states[0]))
        q, k, _ = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=HEADS)
        expected = (q @ k.transpose(-2, -1) / math.sqrt(HIDDEN // HEADS)).softmax(dim=-1)
    torch.testing.assert_close(out.attentions[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_class_token_shortcut_matches_full_computation(tiny_config, seed, train):
    """With cls pooling and no per-token outputs, the last layer runs for the class token only: same logits."""
    model = ViTCustomForImageClassification(tiny_config(pooling="cls")).train(train)
    last_layer_shapes = []
    model.vit.encoder.layers[-1].register_forward_hook(lambda _m, _i, out: last_layer_shapes.append(out[0].shape))
    pixel_values, labels = images(3), torch.randint(0, LABELS, (3,))

    fast = model(pixel_values, labels=labels)
    fast.loss.backward()
    fast_gradients = gradients(model)
    model.zero_grad()
    full = model(pixel_values, labels=labels, output_hidden_states=True)
    full.loss.backward()
    with torch.no_grad():
        with_attentions = model(pixel_values, output_attentions=True).logits

    assert last_layer_shapes == [(3, 1, HIDDEN), (3, NUM_TOKENS, HIDDEN), (3, NUM_TOKENS, HIDDEN)]
    torch.testing.assert_close(fast.logits, full.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_attentions, full.logits.detach(), atol=1e-5, rtol=0)
    assert_same_gradients(fast_gradients, gradients(model), atol=1e-5)


def test_attn_implementation_chosen_at_load(tiny_config, seed, tmp_path, count_sdpa):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    eager = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(eager, ViTCustomForImageClassification)
    pixel_values = images(2)
    with torch.no_grad():
        count_sdpa.clear()
        eager_logits = eager(pixel_values).logits
        assert len(count_sdpa) == 0
        sdpa_logits = model(pixel_values).logits
        assert len(count_sdpa) == LAYERS
    torch.testing.assert_close(eager_logits, sdpa_logits, atol=1e-5, rtol=0)


# --- resolution and inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "batch_size"), [(48, 48, 2), (24, 40, 1)])
def test_interpolate_pos_encoding(tiny_config, seed, height, width, batch_size):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    pixel_values = images(batch_size, height, width)
    grid = (height // 8, width // 8)
    with torch.no_grad():
        out = model(pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
        embeddings = model.vit.embeddings
        # timm's resampling of the same table (bicubic, no antialias, as transformers' ViT) is the reference.
        expected_pos = resample_abs_pos_embed(
            embeddings.position_embeddings, new_size=list(grid), old_size=[4, 4], antialias=False
        )
        patches = rearrange(pixel_values, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=8, p2=8)
        cls_tokens = embeddings.cls_token.expand(batch_size, -1, -1)
        expected_tokens = torch.cat([cls_tokens, embeddings.patch_proj(patches)], dim=1) + expected_pos
    assert out.logits.shape == (batch_size, LABELS) and torch.isfinite(out.logits).all()
    torch.testing.assert_close(embeddings.interpolate_pos_encoding(height, width), expected_pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.hidden_states[0], expected_tokens, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=f"32x32, got {height}x{width}"):
        model(pixel_values)


def test_interpolate_pos_encoding_at_native_size_is_a_no_op(tiny_config, seed):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    pixel_values = images(2)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values, interpolate_pos_encoding=True).logits, model(pixel_values).logits, atol=0, rtol=0
        )
    with pytest.raises(ValueError, match="divisible by patch_size 8, got 30x32"):
        model(images(1, 30, 32), interpolate_pos_encoding=True)


def test_interpolate_pos_encoding_exports_with_a_dynamic_resolution(tiny_config, seed):
    """Resampling by target size keeps the grid symbolic: one export at 48x48 serves other resolutions."""

    class Classifier(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values, interpolate_pos_encoding=True).logits

    classifier = Classifier(ViTCustomForImageClassification(tiny_config()).eval())
    grid_h, grid_w = torch.export.Dim("grid_h", min=2, max=16), torch.export.Dim("grid_w", min=2, max=16)
    exported = torch.export.export(
        classifier, (images(2, 48, 48),), dynamic_shapes={"pixel_values": {2: 8 * grid_h, 3: 8 * grid_w}}
    ).module()
    for height, width in [(48, 48), (40, 24), (64, 32)]:
        pixel_values = images(2, height, width)
        with torch.no_grad():
            torch.testing.assert_close(exported(pixel_values), classifier(pixel_values), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 1, 32, 32), r"\(batch, 3, height, width\), got \(2, 1, 32, 32\)"),
        ((3, 32, 32), r"\(batch, 3, height, width\), got \(3, 32, 32\)"),
        ((2, 3, 32, 24), "Expected image size 32x32, got 32x24"),
    ],
)
def test_bad_pixel_values_raise(tiny_config, shape, message):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


# --- losses ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fixed_logits_model(tiny_config):
    """A 4-class model whose logits are log(1, 2, 3, 4) for any image, so its softmax is (0.1, 0.2, 0.3, 0.4)."""
    model = ViTCustomForImageClassification(tiny_config(num_labels=4)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    return model


def test_soft_label_loss_hand_computed(fixed_logits_model, seed):
    labels = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.4, 0.6]])
    first = -(0.7 * math.log(0.1) + 0.1 * math.log(0.2) + 0.1 * math.log(0.3) + 0.1 * math.log(0.4))
    second = -(0.4 * math.log(0.3) + 0.6 * math.log(0.4))
    loss = fixed_logits_model(images(2), labels=labels).loss
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)


def test_integer_label_loss_hand_computed(fixed_logits_model, seed):
    pixel_values = images(2)
    loss = fixed_logits_model(pixel_values, labels=torch.tensor([3, 0])).loss
    assert loss.item() == pytest.approx(-(math.log(0.4) + math.log(0.1)) / 2, abs=1e-6)
    one_hot = fixed_logits_model(pixel_values, labels=torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0]])).loss
    assert one_hot.item() == pytest.approx(loss.item(), abs=1e-6)


def test_mixup_targets_loss_equals_timm_soft_target_cross_entropy(tiny_config, seed):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=LABELS)
    pixel_values, targets = mixup(images(4), torch.randint(0, LABELS, (4,)))
    assert targets.shape == (4, LABELS)
    out = model(pixel_values, labels=targets)
    expected = SoftTargetCrossEntropy()(out.logits, targets)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(2, LABELS + 1), r"soft labels of shape \(2, 10\).*got \(2, 11\)"),
        (torch.zeros(2, 1, dtype=torch.long), r"integer labels of shape \(2,\).*got \(2, 1\)"),
    ],
)
def test_bad_labels_raise(tiny_config, labels, message):
    model = ViTCustomForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(images(2), labels=labels)


def test_forward_leaves_config_unchanged(tiny_config, seed):
    model = ViTCustomForImageClassification(tiny_config()).train()
    before = model.config.to_dict()
    pixel_values = images(2)
    model(pixel_values, labels=torch.tensor([1, 2]))
    model(pixel_values, labels=torch.full((2, LABELS), 1 / LABELS))
    model(pixel_values, output_attentions=True, output_hidden_states=True, interpolate_pos_encoding=True)
    assert model.config.to_dict() == before
    assert model.config.problem_type is None


# --- convolutional stem ------------------------------------------------------------------------------------------


def test_conv_stem_replaces_the_patch_projection(tiny_config, seed, tmp_path):
    config = tiny_config(conv_stem_depth=3)  # 32 -> 16 -> 8 -> 4: the 4x4 grid of 8-pixel patches
    model = ViTCustomForImageClassification(config)
    stem = model.vit.embeddings.conv_stem
    assert [layer.out_channels for layer in stem if isinstance(layer, torch.nn.Conv2d)] == [16, 32, 64, 64]
    assert not any("patch_proj" in name for name, _ in model.named_parameters())
    pixel_values = torch.randn(3, 3, 32, 32)
    assert model.vit.embeddings(pixel_values).shape == (3, 1 + 16, 64)
    model(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2])).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # Another resolution: the grid follows the stem (48 -> 6x6), the position embeddings are resampled to it.
    assert model.vit.embeddings(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True).shape == (1, 1 + 36, 64)
    # BatchNorm's running statistics are saved and loaded with the weights.
    model.train()(pixel_values=pixel_values)
    model.eval().save_pretrained(tmp_path)
    loaded = ViTCustomForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(stem[1].running_mean, loaded.vit.embeddings.conv_stem[1].running_mean, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)


def test_conv_stem_widths_and_strides_are_free_of_hidden_size(tiny_config, seed, tmp_path):
    # A full-resolution convolution first, then three stride-2 ones: 32 -> 32 -> 16 -> 8 -> 4, the same 4x4 grid.
    config = tiny_config(conv_stem_channels=[8, 24, 48, 96], conv_stem_strides=[1, 2, 2, 2])
    assert config.conv_stem_depth == 4 and config.pixels_per_token == 8
    model = ViTCustomForImageClassification(config)
    convolutions = [layer for layer in model.vit.embeddings.conv_stem if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convolutions] == [
        (3, 8, 1), (8, 24, 2), (24, 48, 2), (48, 96, 2), (96, 64, 1),
    ]  # fmt: skip
    pixel_values = torch.randn(2, 3, 32, 32)
    assert model.vit.embeddings(pixel_values).shape == (2, 1 + 16, 64)
    # 44 px: 44 -> 22 -> 11 -> 6, rounded up like the image processor's token count and the attention maps' grid.
    assert model.vit.embeddings.grid(44, 44) == (6, 6)
    assert model.vit.embeddings(torch.randn(1, 3, 44, 44), interpolate_pos_encoding=True).shape == (1, 1 + 36, 64)
    model.eval().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["conv_stem_channels"] == [8, 24, 48, 96] and saved["conv_stem_strides"] == [1, 2, 2, 2]
    loaded = ViTCustomForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)


def test_a_default_conv_stem_keeps_its_widths_and_layout(tiny_config):
    # Folders saved before conv_stem_channels existed name only the depth: the same widths, the same parameter names.
    old = ViTCustomForImageClassification(tiny_config(conv_stem_depth=3))
    explicit = ViTCustomForImageClassification(tiny_config(conv_stem_channels=[16, 32, 64]))
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
