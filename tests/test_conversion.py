"""Tests of timm / transformers ViT <-> vit-custom conversion: equal logits, exact round trips, clear refusals."""

import json
import logging
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from launch import CLASSES, execute, write_split
from PIL import Image
from safetensors.torch import save_file
from timm.layers import GluMlp, SwiGLU, SwiGLUPacked
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock, VisionTransformer
from torch import nn
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

from modeling_vit_custom import ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.interop.timm_conversion import (
    build_timm_model,
    config_from_timm,
    convert_timm,
    from_timm,
    max_abs_logit_diff,
    ours_to_timm_state_dict,
    timm_to_ours_state_dict,
    to_timm,
)
from modeling_vit_custom.interop.transformers_conversion import convert_hf_vit, from_hf_vit

REPO = Path(__file__).resolve().parents[1]
TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}


def _pixels(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, hidden, depth, heads, patch, size",
    [
        ("vit_tiny_patch16_224", 192, 12, 3, 16, 224),
        ("vit_small_patch16_224", 384, 12, 6, 16, 224),
        ("vit_small_patch32_224", 384, 12, 6, 32, 224),
        pytest.param("vit_base_patch16_224", 768, 12, 12, 16, 224, marks=pytest.mark.slow),
        pytest.param("vit_small_patch16_384.augreg_in21k_ft_in1k", 384, 12, 6, 16, 384, marks=pytest.mark.slow),
    ],
)
def test_timm_to_ours_equal_logits(name, hidden, depth, heads, patch, size, seed):
    source = timm.create_model(name, pretrained=False).eval()
    ours = from_timm(source)
    config = ours.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (hidden, depth, heads)
    assert (config.patch_size, config.image_size, config.intermediate_size, config.num_labels) == (
        patch,
        size,
        4 * hidden,
        1000,
    )
    assert config.layer_norm_eps == 1e-6 and config.hidden_act == "gelu" and config.pooling == "cls"
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in source.parameters())
    assert max_abs_logit_diff(ours, source, _pixels(size, batch=1 if size > 224 else 2)) < 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_ours_to_timm_to_ours_round_trip_is_exact(tiny_config, seed, pooling, qkv_bias):
    ours = ViTCustomForImageClassification(tiny_config(pooling=pooling, qkv_bias=qkv_bias)).eval()
    timm_model = to_timm(ours)
    assert timm_model.global_pool == ("avg" if pooling == "mean" else "token")
    back = from_timm(timm_model)
    original, returned = ours.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[key], returned[key]) for key in original)
    assert back.config.pooling == pooling and back.config.qkv_bias == qkv_bias
    # timm's avg pool without fc_norm is our mean pooling: the two networks agree, not just the tensors.
    assert max_abs_logit_diff(ours, timm_model, _pixels(32)) < 1e-5


def test_a_conv_stem_model_is_refused_by_name(tiny_config):
    ours = ViTCustomForImageClassification(tiny_config(conv_stem_depth=3))
    with pytest.raises(ValueError, match="conv_stem_depth: timm's VisionTransformer embeds patches linearly.*got 3"):
        to_timm(ours)
    with pytest.raises(ValueError, match="conv_stem_depth"):
        ours_to_timm_state_dict(ours.state_dict(), ours.config)


def test_timm_state_dict_round_trip_is_exact(seed):
    source = VisionTransformer(**TINY_TIMM).eval()
    config = config_from_timm(source.state_dict(), num_heads=4)
    timm_sd = source.state_dict()
    back = ours_to_timm_state_dict(timm_to_ours_state_dict(timm_sd, config), config)
    assert back.keys() == timm_sd.keys()
    assert all(torch.equal(back[key], timm_sd[key]) for key in timm_sd)


def test_patch_embedding_is_the_conv_weight_permuted(seed):
    source = VisionTransformer(**TINY_TIMM).eval()
    ours = from_timm(source)
    conv = source.patch_embed.proj.weight  # (D, C, p, p)
    linear = ours.vit.embeddings.patch_proj.weight  # (D, p * p * C), flattened (p1 p2 c)
    assert linear.shape == (64, 8 * 8 * 3)
    # Row d, pixel (1, 2) of the patch, channel 2 sits at (1 * 8 + 2) * 3 + 2.
    assert torch.equal(linear[:, (1 * 8 + 2) * 3 + 2], conv[:, 2, 1, 2])


def test_state_dict_config_needs_num_heads_and_reads_shapes(seed):
    state_dict = VisionTransformer(**{**TINY_TIMM, "qkv_bias": False, "mlp_ratio": 3.0}).state_dict()
    with pytest.raises(ValueError, match="num_heads"):
        config_from_timm(state_dict)
    config = config_from_timm(state_dict, num_heads=4)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (32, 8, 64, 2)
    assert (config.intermediate_size, config.qkv_bias, config.num_labels) == (192, False, 10)


@pytest.mark.parametrize(
    "kwargs, fields",
    [
        ({"reg_tokens": 4}, {"num_register_tokens": 4}),
        ({"class_token": False, "global_pool": "avg", "fc_norm": False}, {"class_token": False, "pooling": "mean"}),
        ({"reg_tokens": 2, "no_embed_class": True}, {"prefix_position_embeddings": False}),
        ({"global_pool": "avg"}, {"fc_norm": True, "pooling": "mean"}),
        ({"init_values": 1e-5}, {"layer_scale_init_value": 1e-5}),
        ({"qk_norm": True}, {"qk_norm": True}),
        ({"pre_norm": True, "norm_layer": partial(nn.LayerNorm, eps=1e-5)}, {"pre_norm": True}),
        ({"class_token": False, "global_pool": "map", "reg_tokens": 1}, {"pooling": "map"}),
        ({"norm_layer": "rmsnorm", "embed_norm_layer": "rmsnorm"}, {"norm_type": "rms_norm", "patch_norm": True}),
        ({"mlp_layer": SwiGLU, "act_layer": nn.SiLU, "proj_bias": False}, {"mlp_type": "gated", "proj_bias": False}),
        ({"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": 8 / 3}, {"intermediate_size": 85}),
        ({"act_layer": "quick_gelu", "final_norm": False}, {"hidden_act": "quick_gelu", "final_norm": False}),
        ({"act_layer": "gelu_tanh"}, {"hidden_act": "gelu_pytorch_tanh"}),
        ({"scale_attn_norm": True, "scale_mlp_norm": True}, {"scale_attn_norm": True, "scale_mlp_norm": True}),
    ],
)
def test_timm_features_convert_both_ways(kwargs, fields, seed):
    source = VisionTransformer(**{**TINY_TIMM, **kwargs}).eval()
    ours = from_timm(source)
    assert {name: getattr(ours.config, name) for name in fields} == fields
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in source.parameters())
    assert max_abs_logit_diff(ours, source, _pixels(32)) < 1e-5
    assert max_abs_logit_diff(to_timm(ours), ours, _pixels(32)) < 1e-5
    # The state dict alone gives the same network once the heads and what keys cannot show are named.
    shown = {name: getattr(ours.config, name) for name in ("hidden_act", "layer_norm_eps", "pooling")}
    from_keys = from_timm(source.state_dict(), num_heads=4, **shown)
    assert max_abs_logit_diff(from_keys, source, _pixels(32)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, feature",
    [
        ({"block_fn": ResPostBlock}, "ResPostBlock blocks"),
        ({"block_fn": ParallelScalingBlock}, "ParallelScalingBlock blocks"),
        ({"class_token": False, "reg_tokens": 1, "global_pool": "map", "pool_include_prefix": True}, "include_prefix"),
        ({"pos_embed": "none"}, "no position embedding"),
        ({"mlp_layer": GluMlp}, "GluMlp with the gate first"),
    ],
)
def test_remaining_timm_features_are_refused_by_name(kwargs, feature, seed):
    model = VisionTransformer(**{**TINY_TIMM, **kwargs})
    with pytest.raises(ValueError, match=f"expected a ViT vit-custom can express.*{feature}"):
        from_timm(model)


def test_a_state_dict_of_parallel_blocks_is_refused_by_name(seed):
    state_dict = VisionTransformer(**TINY_TIMM, block_fn=ParallelScalingBlock).state_dict()
    with pytest.raises(ValueError, match=r"parallel blocks: \['blocks.0.in_norm.bias'"):
        from_timm(state_dict, num_heads=4)


def test_missing_and_extra_keys_are_listed(seed):
    state_dict = VisionTransformer(**TINY_TIMM).state_dict()
    del state_dict["blocks.1.mlp.fc2.bias"]
    state_dict["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\].*'blocks.0.extra.weight'"):
        from_timm(state_dict, num_heads=4)


def test_other_class_count_converts_backbone_and_leaves_head_new(seed, caplog):
    source = VisionTransformer(**TINY_TIMM).eval()
    with caplog.at_level(logging.WARNING, logger="modeling_vit_custom.interop.timm_conversion"):
        ours = from_timm(source, num_labels=3)
    assert "head was left new" in caplog.text
    assert ours.head.weight.shape == (3, 64)
    pixels = _pixels(32)
    with torch.no_grad():
        features = ours.vit(pixels).pooler_output
        expected = source.forward_head(source.forward_features(pixels), pre_logits=True)
    assert (features - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_hf_vit_to_ours_equal_logits_and_eps_kept(seed, qkv_bias):
    hf_config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        qkv_bias=qkv_bias,
        num_labels=5,
    )
    hf_model = ViTForImageClassification(hf_config).eval()
    ours = from_hf_vit(hf_model)
    assert ours.config.layer_norm_eps == 1e-12 and ours.vit.norm.eps == 1e-12
    assert ours.config.id2label == hf_model.config.id2label
    pixels = _pixels(32)
    with torch.no_grad():
        diff = (ours(pixels).logits - hf_model(pixels).logits).abs().max().item()
    assert diff < 1e-5


def test_preprocess_settings_follow_timm_pretrained_config():
    settings = PreprocessSettings.from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    assert settings == PreprocessSettings(224, 0.9, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    settings = PreprocessSettings.from_timm(timm.create_model("vit_small_patch32_384", pretrained=False))
    assert (settings.image_size, settings.crop_pct) == (384, 1.0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_checkpoint_file_to_folder_that_loads_through_auto(tmp_path, seed, suffix):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7).eval()
    checkpoint = tmp_path / f"weights{suffix}"
    state_dict = {key: value.contiguous() for key, value in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state_dict, checkpoint)
    else:
        torch.save({"state_dict": state_dict}, checkpoint)
    record = convert_timm("vit_tiny_patch16_224", tmp_path / "out", checkpoint=checkpoint)
    assert record["head_converted"] and record["num_labels"] == 7 and record["max_abs_logit_diff"] < 1e-4
    folder = tmp_path / "out"
    assert json.loads((folder / "conversion.json").read_text())["checkpoint"] == str(checkpoint)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert (processor["crop_pct"], processor["resample"], processor["image_mean"]) == (0.9, 3, [0.5, 0.5, 0.5])
    loaded = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert max_abs_logit_diff(loaded, source, _pixels(224, batch=1)) < 1e-4
    with pytest.raises(ValueError, match="non-empty"):
        convert_timm("vit_tiny_patch16_224", folder, checkpoint=checkpoint)


def test_checkpoint_that_does_not_fit_the_architecture_is_listed(tmp_path, seed):
    state_dict = VisionTransformer(**TINY_TIMM).state_dict()
    checkpoint = tmp_path / "tiny.safetensors"
    save_file(state_dict, checkpoint)
    with pytest.raises(ValueError, match=r"does not fit timm model 'vit_tiny_patch16_224'.*blocks\.11\..*cls_token"):
        build_timm_model("vit_tiny_patch16_224", checkpoint=checkpoint)
    with pytest.raises(ValueError, match=r"expected \.safetensors, \.bin, \.pth or \.pt, got '\.npz'"):
        build_timm_model("vit_tiny_patch16_224", checkpoint=(tmp_path / "w.npz").touch() or tmp_path / "w.npz")


def test_convert_script_runs_and_reports_errors(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "convert_timm.py")]
    done = subprocess.run(
        script + ["--timm_model", "vit_tiny_patch16_224", "--num_labels", "4", "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["num_labels"] == 4 and not record["head_converted"] and record["max_abs_logit_diff"] is None
    assert "head was left new" in done.stderr
    assert json.loads((tmp_path / "o" / "config.json").read_text())["num_attention_heads"] == 3
    failed = subprocess.run(
        script
        + [
            "--timm_model",
            "vit_tiny_patch16_224",
            "--checkpoint",
            str(tmp_path / "none.pth"),
            "--output_dir",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert failed.returncode == 1 and "checkpoint: expected a file" in failed.stderr
    assert not (tmp_path / "x").exists()


def test_converted_transformers_vit_evaluates_exports_and_builds_its_hub_folder(tmp_path, seed):
    """A `google/vit-*`-style folder keeps its ViTImageProcessor (size {"height", "width"}) through the conversion:
    evaluate_model.py, export.py and push_to_hub.py read it, and the evaluation matches the source model's own."""
    hf_config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, id2label=dict(enumerate(CLASSES)),
                          label2id={name: i for i, name in enumerate(CLASSES)})  # fmt: skip
    source = ViTForImageClassification(hf_config).eval()
    source.save_pretrained(tmp_path / "hf")
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "hf")
    convert_hf_vit(tmp_path / "hf", tmp_path / "converted")
    write_split(tmp_path / "val", [4, 4, 4], seed=1)

    def script(name: str, *args: str) -> subprocess.CompletedProcess:
        done = execute([sys.executable, str(REPO / "scripts" / name), *args], timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    script("evaluate_model.py", "--model_name_or_path", str(tmp_path / "converted"), "--validation_dir",
           str(tmp_path / "val"), "--num_workers", "0", "--output_json", str(tmp_path / "eval.json"))  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    # The source model through its own processor: square images resize to the same 32 x 32.
    images = sorted((tmp_path / "val").rglob("*.png"))
    labels = torch.tensor([source.config.label2id[path.parent.name] for path in images])
    with torch.no_grad():
        logits = source(**processor([Image.open(path) for path in images], return_tensors="pt")).logits
    assert result["eval_samples"] == 12
    assert result["eval_top1"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert result["eval_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-3)

    done = script("export.py", str(tmp_path / "converted"), "--format", "onnx", "--output", str(tmp_path / "m.onnx"))
    assert "matches the eager model within 0.0001" in done.stderr and (tmp_path / "m.onnx").is_file()

    script("push_to_hub.py", str(tmp_path / "converted"), "--output_dir", str(tmp_path / "hub"), "--model_name", "x")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "a `ViTImageProcessor`): resize to 32 x 32 (aspect ratio not kept)" in card


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "dinov2_with_registers"])
def test_a_transformers_dinov2_folder_converts_with_the_same_outputs(tmp_path, seed, registers):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    tiny = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    if registers:  # the plain MLP; the gated one (DINOv2-giant) without registers
        source = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(**tiny, layerscale_value=0.5, num_register_tokens=4)
        )
    else:
        source = Dinov2Model(Dinov2Config(**tiny, layerscale_value=0.5, use_swiglu_ffn=True))
    source.save_pretrained(tmp_path / "hf")
    record = convert_hf_vit(tmp_path / "hf", tmp_path / "ours", num_labels=3)
    assert record["max_abs_hidden_state_diff"] < 1e-5 and not record["head_converted"]
    ours = ViTCustomForImageClassification.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.num_register_tokens == (4 if registers else 0)
    assert ours.config.mlp_type == ("plain" if registers else "gated") and ours.config.num_labels == 3
    pixels = _pixels(16)
    with torch.no_grad():
        theirs, mine = source.eval()(pixels), ours.vit(pixels)
    assert (theirs.last_hidden_state - mine.last_hidden_state).abs().max().item() < 1e-5
    assert (theirs.pooler_output - mine.pooler_output).abs().max().item() < 1e-5
