"""Tests of the attention maps: rollout and grid maths on hand-made attention, and the script on real images."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from launch import execute
from PIL import Image

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.inference.attention_maps import (
    attention_maps,
    draw,
    rollout,
    to_image,
    token_layout,
    token_relevance,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "red", 1: "green", 2: "blue"}


def test_rollout_of_two_layers_by_hand():
    # Layer 1: heads [[1, 0], [0, 1]] and [[0, 1], [0, 1]] -> mean [[.5, .5], [0, 1]] -> + I, rows renormalised:
    # [[.75, .25], [0, 1]]. Layer 2: [[0, 1], [1, 0]] -> [[.5, .5], [.5, .5]]. Rollout = layer 2 @ layer 1.
    layer1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2 heads, 2, 2)
    layer2 = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # (1, 1 head, 2, 2)
    expected = torch.tensor([[[0.375, 0.625], [0.375, 0.625]]])
    assert torch.allclose(rollout([layer1, layer2]), expected)
    # The other order of multiplication gives another answer, so the test pins the order.
    assert not torch.allclose(rollout([layer2, layer1]), expected)


def test_rollout_of_identity_attention_is_identity_and_rows_sum_to_one():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    assert torch.equal(rollout([eye] * 4), torch.eye(5).expand(2, 5, 5))
    attention = torch.rand(2, 3, 5, 5).softmax(dim=-1)
    rolled = rollout([attention, attention.flip(-1), attention])
    assert torch.allclose(rolled.sum(-1), torch.ones(2, 5))
    with pytest.raises(ValueError, match="expected the maps of at least one layer"):
        rollout([])


def test_token_relevance_reads_the_class_token_row_or_the_patch_rows():
    torch.manual_seed(0)
    layers = [torch.rand(2, 4, 7, 7).softmax(-1) for _ in range(3)]  # 1 class token + 6 patches, 4 heads
    cls = token_relevance(layers, "cls")
    assert torch.equal(cls["last_layer_heads"], layers[-1][:, :, 0, 1:])
    assert torch.allclose(cls["last_layer"], layers[-1][:, :, 0, 1:].mean(1))
    assert torch.allclose(cls["rollout"], rollout(layers)[:, 0, 1:])
    mean = token_relevance(layers, "mean")
    assert set(mean) == {"rollout"}  # the class token does not predict: no class-token map
    assert torch.allclose(mean["rollout"], rollout(layers)[:, 1:, 1:].mean(1))
    with pytest.raises(ValueError, match="pooling: expected 'cls', 'mean' or 'map', got 'max'"):
        token_relevance(layers, "max")


def test_register_tokens_are_left_out_of_the_patch_grid():
    torch.manual_seed(0)
    layers = [torch.rand(2, 4, 9, 9).softmax(-1) for _ in range(2)]  # class token, 2 registers, 6 patches
    cls = token_relevance(layers, "cls", num_prefix_tokens=3)
    assert cls["last_layer_heads"].shape == (2, 4, 6)
    assert torch.equal(cls["last_layer_heads"], layers[-1][:, :, 0, 3:])
    assert torch.allclose(cls["rollout"], rollout(layers)[:, 0, 3:])
    pooled = torch.rand(2, 4, 6).softmax(-1)
    attention_pooled = token_relevance(layers, "map", num_prefix_tokens=2, pool_attention=pooled)
    assert torch.equal(attention_pooled["last_layer_heads"], pooled)
    assert torch.allclose(attention_pooled["rollout"], rollout(layers)[:, 2:, 2:].mean(1))
    with pytest.raises(ValueError, match="pool_attention: expected"):
        token_relevance(layers, "map", num_prefix_tokens=2)


def test_maps_of_a_registered_attention_pooled_model_show_the_pooling_query(tiny_config, seed):
    model = ViTCustomForImageClassification(
        tiny_config(class_token=False, num_register_tokens=2, pooling="map")
    ).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    (maps,) = attention_maps(model, pixel_values, [0.5] * 3, [0.5] * 3)
    assert maps.pooling == "map" and maps.last_layer_heads.shape == (4, 32, 32)
    # The pooling query's weights over the 4 x 4 patches, by hand: softmax(q k^T / sqrt(d)) of the pooled tokens.
    pooler = model.vit.pooler
    with torch.no_grad():
        tokens = model.vit(pixel_values).last_hidden_state[:, 2:]
        q = pooler.q(pooler.latent).view(1, 4, 16).transpose(0, 1)  # (heads, 1, head_dim)
        k = pooler.kv(tokens)[0, :, :64].view(16, 4, 16).transpose(0, 1)  # (heads, 16, head_dim)
        weights = (q @ k.transpose(1, 2) / 4).softmax(-1)[:, 0]  # (heads, 16)
    corner = maps.last_layer_heads[:, 0, 0]  # each 8 x 8 patch's pixels carry its weight
    assert torch.allclose(corner, weights[:, 0], atol=1e-6)
    assert torch.allclose(maps.last_layer_heads[:, 31, 31], weights[:, 15], atol=1e-6)
    fig = draw(maps, "tiny")
    assert "attention pooling's query" in fig.axes[1].get_title()


def test_to_image_puts_each_token_over_its_pixels():
    tokens = torch.zeros(3 * 4)
    tokens[1 * 4 + 2] = 1.0  # row 1, column 2 of a 3 x 4 grid
    pixels = to_image(tokens, (3, 4), stride=2, size=(6, 8), mode="nearest")
    expected = torch.zeros(6, 8)
    expected[2:4, 4:6] = 1.0
    assert torch.equal(pixels, expected)
    # A convolutional stem rounds its grid up: 3 x 3 tokens of 4 pixels over a 10 x 11 image, the last ones cropped.
    corner = torch.zeros(2, 9)
    corner[:, 8] = 1.0
    pixels = to_image(corner, (3, 3), stride=4, size=(10, 11), mode="nearest")
    assert pixels.shape == (2, 10, 11)
    assert pixels[:, 8:, 8:].eq(1).all() and pixels.sum() == 2 * 2 * 3
    constant = to_image(torch.full((2, 5, 12), 0.25), (3, 4), stride=8, size=(24, 32))  # bilinear
    assert constant.shape == (2, 5, 24, 32) and torch.allclose(constant, torch.tensor(0.25))
    with pytest.raises(ValueError, match=r"expected 3 x 4 = 12 patch values, got 11"):
        to_image(torch.zeros(11), (3, 4), stride=2, size=(6, 8))
    with pytest.raises(ValueError, match=r"a 3 x 4 grid of stride 2 covers, got \(9, 8\)"):
        to_image(torch.zeros(12), (3, 4), stride=2, size=(9, 8))


def test_token_layout_of_linear_patches_and_of_the_conv_stem(tiny_config):
    linear = ViTCustomForImageClassification(tiny_config())
    assert token_layout(linear, 40, 48) == ((5, 6), 8)
    stem = ViTCustomForImageClassification(tiny_config(conv_stem_depth=3))
    assert token_layout(stem, 38, 30) == ((5, 4), 8)  # ceil(38 / 8), ceil(30 / 8)


def test_maps_of_an_sdpa_model_at_another_resolution_leave_it_on_sdpa(tiny_config, seed):
    model = ViTCustomForImageClassification(tiny_config(conv_stem_depth=3, num_labels=3, id2label=LABELS)).eval()
    assert model.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(2, 3, 38, 30)
    maps = attention_maps(model, pixel_values, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert model.config._attn_implementation == "sdpa"
    assert [m.rollout.shape for m in maps] == [(38, 30)] * 2
    assert [m.last_layer_heads.shape for m in maps] == [(4, 38, 30)] * 2
    assert maps[0].image.shape == (38, 30, 3) and 0 <= maps[0].image.min() and maps[0].image.max() <= 1
    with torch.no_grad():
        logits = model(pixel_values, interpolate_pos_encoding=True).logits
    assert [m.label for m in maps] == [LABELS[int(i)] for i in logits.argmax(-1)]


def save_model(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    config = ViTCustomConfig(**{**TINY_CONFIG, "num_labels": 3, "id2label": LABELS, **overrides})
    ViTCustomForImageClassification(config).save_pretrained(folder)
    PreprocessSettings(image_size=config.image_size).to_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("wide.png", (40, 64)), ("tall.jpg", (70, 45))):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, size=(33, 33), dtype=np.uint8)).save(folder / "sub" / "gray.png")
    return folder


def visualize(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "visualize_attention.py"), *args]
    return execute(command, timeout=300)


@pytest.mark.parametrize(
    "overrides, image_size",
    [({}, None), ({"conv_stem_depth": 3}, 44), ({"pooling": "mean"}, 48)],
    ids=["class-token", "conv-stem-other-resolution", "mean-pooled"],
)
def test_script_writes_one_png_per_image(tmp_path, images, overrides, image_size):
    model = save_model(tmp_path / "model", **overrides)
    output = tmp_path / "maps"
    extra = [] if image_size is None else ["--image_size", str(image_size)]
    process = visualize("--model", str(model), str(images / "wide.png"), str(images / "sub"), str(images / "*.jpg"),
                        "--output_dir", str(output), *extra)  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == ["gray.png", "tall.png", "wide.png"]
    assert process.stdout.split() == [str(output / name) for name in ("wide.png", "gray.png", "tall.png")]
    for path in output.iterdir():
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.width > 300
    assert ("drawing attention rollout only" in process.stderr) == (overrides.get("pooling") == "mean")


def test_script_names_the_bad_input_before_drawing(tmp_path, images):
    model = save_model(tmp_path / "model")
    (tmp_path / "broken.png").write_text("not an image")
    output = tmp_path / "maps"
    process = visualize("--model", str(model), str(images / "wide.png"), str(tmp_path / "broken.png"),
                        "--output_dir", str(output))  # fmt: skip
    assert process.returncode == 1 and "broken.png: expected a readable image" in process.stderr
    assert not output.exists()
    process = visualize("--model", str(model), str(tmp_path / "nothing*.png"), "--output_dir", str(output))
    assert process.returncode == 1 and "nothing*.png' to match image files, got none" in process.stderr
    process = visualize("--model", str(model), str(images), "--output_dir", str(output), "--image_size", "36")
    assert process.returncode == 1 and "--image_size: expected a multiple of patch_size 8, got 36" in process.stderr
    process = visualize("--model", str(tmp_path), str(images), "--output_dir", str(output))
    assert process.returncode == 1 and "--model: expected a saved model folder with config.json" in process.stderr
