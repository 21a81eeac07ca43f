"""Fine-tuning from a saved folder at another resolution and class count (configs/finetune.yaml), and layer-wise
learning-rate decay."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from launch import LAUNCH, ROOT, TINY, environment, events, execute, run
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.optim import param_groups_layer_decay

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.interop.timm_conversion import to_timm
from modeling_vit_custom.training.arguments import TrainingArguments, parse_config_overrides
from modeling_vit_custom.training.models import create_optimizer, param_groups
from modeling_vit_custom.training.pretrained import load_pretrained

POSITION_EMBEDDINGS = "vit.embeddings.position_embeddings"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny 10-class model saved at 16 px (a 4x4 grid of 4-pixel patches), as a conversion or a run leaves it."""
    folder = tmp_path_factory.mktemp("pretrained") / "tiny16"
    torch.manual_seed(0)
    ViTCustomForImageClassification(ViTCustomConfig(**parse_config_overrides(TINY), num_labels=10)).save_pretrained(
        folder
    )
    return folder


def finetune_command(data: tuple[Path, Path], checkpoint: Path, output_dir: Path, overrides: str) -> list[str]:
    """configs/finetune.yaml as shipped, with only the data, the sizes and the run's length made small."""
    return [
        *LAUNCH, "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
        str(ROOT / "scripts/train.py"),
        "--config", str(ROOT / "configs/finetune.yaml"),
        "--model_name_or_path", str(checkpoint),
        "--model_config_overrides", overrides,
        "--train_dir", str(data[0]),
        "--validation_dir", str(data[1]),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "64",
        "--num_train_epochs", "1",
        "--num_workers", "0",
        "--logging_steps", "1",
        "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "10",
        "--report_to", "none",
    ]  # fmt: skip


def test_finetune_recipe_resamples_position_embeddings_and_renews_the_head(image_folders, checkpoint, tmp_path):
    """16 px, 10 classes -> 24 px, 3 classes, with the recipe's layer decay, drop-path, augmentation and warm-up (3
    steps, all warming up)."""
    out = tmp_path / "run"
    result = run(finetune_command(image_folders, checkpoint, out, "image_size=24,drop_path_rate=0.1"))
    assert "position embeddings resampled from a 4x4 to a 6x6 grid" in result.stderr
    assert "new head for 3 classes (the checkpoint's has 10)" in result.stderr

    source = load_file(checkpoint / "model.safetensors")
    # The recipe warms up from a rate of 0, so step 1 leaves the weights as the run loaded them.
    loaded = load_file(out / "checkpoints/step_1/model.safetensors")
    assert loaded.keys() == source.keys()
    # timm's resampling of a checkpoint for another image size: bicubic, antialiased, the class-token row kept.
    expected = resample_abs_pos_embed(source[POSITION_EMBEDDINGS], [6, 6], num_prefix_tokens=1)
    assert loaded[POSITION_EMBEDDINGS].shape == (1, 37, 32)
    assert (loaded[POSITION_EMBEDDINGS] - expected).abs().max().item() < 1e-7
    assert torch.equal(loaded[POSITION_EMBEDDINGS][:, 0], source[POSITION_EMBEDDINGS][:, 0])
    # A new head for the 3 classes, as the model initialises one: zero bias, weights of std 0.02.
    assert loaded["head.weight"].shape == (3, 32) and torch.equal(loaded["head.bias"], torch.zeros(3))
    assert 0.012 < loaded["head.weight"].std().item() < 0.028
    # Everything else exactly as saved.
    for name in source.keys() - {POSITION_EMBEDDINGS, "head.weight", "head.bias"}:
        assert torch.equal(loaded[name], source[name]), name

    final = load_file(out / "final/model.safetensors")
    assert not torch.equal(final["head.weight"], loaded["head.weight"])  # it trained
    losses = [e["loss"] for e in events(out, "train")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    config = json.loads((out / "final/config.json").read_text())
    assert (config["image_size"], config["drop_path_rate"]) == (24, 0.1)
    assert config["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["layer_decay"] == 0.65 and run_config["model_name_or_path"] == str(checkpoint)


def test_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(image_folders, checkpoint, tmp_path):
    out = tmp_path / "run"
    overrides = "image_size=24,hidden_size=64,intermediate_size=128"
    command = finetune_command(image_folders, checkpoint, out, overrides)
    command = [sys.executable, *command[command.index(str(ROOT / "scripts/train.py")) :]]  # refused before launch
    result = execute(command)
    assert result.returncode != 0
    assert "vit.embeddings.cls_token is (1, 1, 32) in the checkpoint, (1, 1, 64) in the model" in result.stderr
    assert "--model_config_overrides {'image_size': 24, 'hidden_size': 64, 'intermediate_size': 128}" in result.stderr
    assert not out.exists()


def test_layer_decay_scales_each_depth_as_beit_and_timm(tiny_config):
    model = ViTCustomForImageClassification(tiny_config(num_hidden_layers=3))
    optimizer = create_optimizer(model, TrainingArguments(layer_decay=0.7, weight_decay=0.05), lr=1e-3)
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    groups = {name: group_of[id(param)] for name, param in model.named_parameters()}
    # 3 layers: the embeddings are depth 0, layer i depth i + 1, the final norm and head depth 4 (lr x 0.7 ** 0).
    expected = {
        "vit.embeddings.patch_proj.weight": (0.7**4, 0.05),
        POSITION_EMBEDDINGS: (0.7**4, 0.0),
        "vit.embeddings.cls_token": (0.7**4, 0.0),
        "vit.encoder.layers.0.attn.qkv.weight": (0.7**3, 0.05),
        "vit.encoder.layers.1.norm1.weight": (0.7**2, 0.0),
        "vit.encoder.layers.2.mlp.fc2.weight": (0.7, 0.05),
        "vit.encoder.layers.2.mlp.fc2.bias": (0.7, 0.0),
        "vit.norm.weight": (1.0, 0.0),
        "head.weight": (1.0, 0.05),
    }
    for name, (scale, weight_decay) in expected.items():
        assert groups[name]["lr"] == pytest.approx(1e-3 * scale), name
        assert groups[name]["weight_decay"] == weight_decay, name
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the head's group comes first: its rate is the one logged
    assert len(optimizer.param_groups) == 2 * 5

    # The same split of parameters into (lr scale, weight decay) as timm's param_groups_layer_decay on timm's copy,
    # but for the final norm: BEiT and MAE give it the head's depth, timm the last layer's.
    def totals(param_groups_: list[dict]) -> Counter:
        counts = Counter()
        for group in param_groups_:
            counts[round(group["lr_scale"], 12), group["weight_decay"]] += sum(p.numel() for p in group["params"])
        return counts

    timm_model = to_timm(model)
    timm_groups = param_groups_layer_decay(
        timm_model, 0.05, no_weight_decay_list=timm_model.no_weight_decay(), layer_decay=0.7
    )
    expected_totals = totals(timm_groups)
    final_norm = 2 * model.config.hidden_size
    expected_totals[0.7, 0.0] -= final_norm
    expected_totals[1.0, 0.0] += final_norm
    assert totals(param_groups(model, 0.05, layer_decay=0.7)) == expected_totals


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_layer_decay_outside_zero_to_one_is_refused(value):
    with pytest.raises(ValueError, match=rf"--layer_decay: expected a value in \(0, 1\] or unset, got {value}"):
        TrainingArguments(layer_decay=value)


def test_the_same_class_count_and_size_load_every_tensor_as_saved(checkpoint):
    class_names = [f"class_{i}" for i in range(10)]
    model = load_pretrained(str(checkpoint), {"drop_path_rate": 0.1}, class_names)
    state_dict = model.state_dict()
    source = load_file(checkpoint / "model.safetensors")
    assert state_dict.keys() == source.keys()
    assert all(torch.equal(state_dict[name], tensor) for name, tensor in source.items())
    assert model.config.id2label[3] == "class_3" and model.config.drop_path_rate == 0.1


def test_a_hub_model_id_starts_from_its_cached_snapshot_and_an_unknown_one_is_named(checkpoint, tmp_path):
    """`user/name` is read from the Hub cache (offline here: a snapshot laid out as huggingface_hub lays it out)."""
    snapshot = tmp_path / "hub" / "models--someone--tiny16" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for path in checkpoint.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    code = (
        "import sys\n"
        "from modeling_vit_custom.training.pretrained import fit_checkpoint\n"
        "fit = fit_checkpoint(sys.argv[1], {'image_size': 24})\n"
        "print(fit.folder.name, fit.grids)\n"
    )
    env = {**environment(), "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(ROOT)}
    found = subprocess.run([sys.executable, "-c", code, "someone/tiny16"], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.split("\n")[-2] == "0123abc ((4, 4), (6, 6))"
    missing = subprocess.run([sys.executable, "-c", code, "someone/missing"], env=env, capture_output=True, text=True)
    assert "--model_name_or_path 'someone/missing': no such local folder, and not a Hub model" in missing.stderr


# Tiny timm ViTs with prefix tokens: DINOv2 with registers (class token and 4 registers, patches alone
# position-embedded, LayerScale) and SigLIP-like (no class token, 2 position-embedded registers, attention pooling).
TIMM_WITH_PREFIX = {
    "dinov2_reg": {"reg_tokens": 4, "no_embed_class": True, "init_values": 1e-5},
    "siglip_reg": {"class_token": False, "reg_tokens": 2, "global_pool": "map", "act_layer": "gelu_tanh"},
}


def _converted_folder(tmp_path: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    from timm.models.vision_transformer import VisionTransformer

    from modeling_vit_custom.image_processing import PreprocessSettings
    from modeling_vit_custom.interop.timm_conversion import from_timm, save_converted

    torch.manual_seed(0)
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
    source = VisionTransformer(**kwargs, **TIMM_WITH_PREFIX[kind]).eval()
    folder = tmp_path / kind
    save_converted(from_timm(source), folder, PreprocessSettings(image_size=16).to_image_processor(), {})
    return folder, source


@pytest.mark.parametrize("kind", sorted(TIMM_WITH_PREFIX))
def test_a_converted_model_with_prefix_tokens_loads_at_another_size_as_timm_resamples(kind, tmp_path):
    folder, source = _converted_folder(tmp_path, kind)
    model = load_pretrained(str(folder), {"image_size": 24}, ["a", "b", "c"])
    embedded_prefix = 0 if source.no_embed_class else source.num_prefix_tokens
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [6, 6], num_prefix_tokens=embedded_prefix)
    loaded = model.vit.embeddings.position_embeddings.detach()
    assert loaded.shape == (1, embedded_prefix + 36, 32)
    assert (loaded - expected).abs().max().item() < 1e-6
    # timm at 24 px with the same resampling gives the same features.
    timm_24 = resample_abs_pos_embed(source.pos_embed, [6, 6], num_prefix_tokens=embedded_prefix)
    pixels = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        source.pos_embed = torch.nn.Parameter(timm_24)
        source.patch_embed.img_size, source.patch_embed.grid_size = (24, 24), (6, 6)
        source.patch_embed.num_patches = 36
        theirs = source.forward_head(source.forward_features(pixels), pre_logits=True)
        ours = model.eval().vit(pixels).pooler_output
    assert (ours - theirs).abs().max().item() < 1e-5


def test_finetune_recipe_starts_from_a_converted_dinov2_with_registers(image_folders, tmp_path):
    """Convert (a tiny DINOv2 with registers, random weights), then fine-tune with configs/finetune.yaml at 24 px."""
    folder, source = _converted_folder(tmp_path, "dinov2_reg")
    out = tmp_path / "run"
    result = run(finetune_command(image_folders, folder, out, "image_size=24"))
    assert "position embeddings resampled from a 4x4 to a 6x6 grid" in result.stderr
    loaded = load_file(out / "checkpoints/step_1/model.safetensors")
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [6, 6], num_prefix_tokens=0)
    assert (loaded[POSITION_EMBEDDINGS] - expected).abs().max().item() < 1e-6
    assert torch.equal(loaded["vit.embeddings.register_tokens"], source.reg_token.detach())
    reloaded = ViTCustomForImageClassification.from_pretrained(out / "final")
    assert reloaded.config.num_register_tokens == 4 and reloaded.config.image_size == 24
    assert not reloaded.config.prefix_position_embeddings and reloaded.config.layer_scale_init_value == 1e-5
