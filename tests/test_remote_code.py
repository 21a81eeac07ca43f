"""Saved model folders load as remote code, in a fresh interpreter where the package cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor

import modeling_vit_custom
from modeling_vit_custom import ViTCustomForImageClassification
from modeling_vit_custom.configuration_vit_custom import AUTO_MAP
from modeling_vit_custom.image_processing import PreprocessSettings

NUM_LABELS = 10
# Runs in `python -I` from a temporary directory. The project is usually installed in editable mode, which makes the
# package importable from anywhere, so a meta-path finder refuses it: every class must come from the saved files.
LOADER = r"""
import importlib.abc
import json
import sys


class RefusePackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_vit_custom":
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None


sys.meta_path.insert(0, RefusePackage())

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

report_path, reference_path, image_path, *folders = sys.argv[1:]
reference = load_file(reference_path)
try:
    import modeling_vit_custom  # noqa: F401

    package_importable = True
except ModuleNotFoundError:
    package_importable = False


def class_path(obj):
    return f"{type(obj).__module__}.{type(obj).__name__}"


results = {}
for folder in folders:
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        pooled = backbone(reference["pixel_values"]).pooler_output
        logits = classifier(reference["pixel_values"]).logits
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    results[folder] = {
        "config": class_path(config),
        "model": class_path(backbone),
        "classifier": class_path(classifier),
        "pipeline_model": class_path(classify.model),
        "config_fields": {k: getattr(config, k) for k in ("model_type", "image_size", "patch_size", "hidden_size")},
        "pooler_max_abs_diff": (pooled - reference["pooler_output"]).abs().max().item(),
        "logits_max_abs_diff": (logits - reference["logits"]).abs().max().item(),
        "predictions": classify(Image.open(image_path), top_k=3),
    }
report = {
    "package_importable": package_importable,
    "vit_custom_modules": sorted(name for name in sys.modules if name.rpartition(".")[2].endswith("_vit_custom")),
    "results": results,
}
with open(report_path, "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """One tiny model saved to three folders (a dotted name, a second save, a dotted name in another parent), each
    with an image processor, plus reference outputs computed in this process."""
    root = tmp_path_factory.mktemp("remote_code")
    torch.manual_seed(0)
    config = modeling_vit_custom.ViTCustomConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        id2label={i: f"class_{i}" for i in range(NUM_LABELS)},
    )
    model = ViTCustomForImageClassification(config).eval()
    processor = PreprocessSettings(image_size=32, crop_pct=0.875).to_image_processor()
    folders = [root / "a" / "vit.tiny-v1.0", root / "second_save", root / "b" / "vit.tiny-v1.0"]
    for folder in folders:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = {
            "pixel_values": pixel_values,
            "pooler_output": model.vit(pixel_values).pooler_output.contiguous(),
            "logits": model(pixel_values).logits,
        }
    save_file(reference, root / "reference.safetensors")

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8))
    image.save(root / "image.png")
    # The expected pipeline answer, computed by hand: the saved processor, the model, softmax, top 3.
    inputs = AutoImageProcessor.from_pretrained(folders[0])(images=image, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(inputs["pixel_values"]).logits.softmax(dim=-1)[0]
    scores, indices = probabilities.topk(3)
    expected = [{"label": f"class_{i}", "score": p} for p, i in zip(scores.tolist(), indices.tolist(), strict=True)]
    return {"root": root, "folders": folders, "expected_predictions": expected}


def run_loader(root: Path, folders: list[Path]) -> dict:
    """Runs LOADER over `folders` (compared with root/reference.safetensors) in a fresh, isolated interpreter and
    returns its report."""
    workdir = root / "workdir"
    workdir.mkdir()
    loader = workdir / "load_remote_code.py"
    loader.write_text(LOADER)
    report_path = root / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    # Its own HF_HOME so the copied model code lands in a private transformers_modules cache, not ~/.cache.
    env |= {"HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, "-I", str(loader), str(report_path), str(root / "reference.safetensors")]
    command += [str(root / "image.png"), *map(str, folders)]
    completed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        pytest.fail(f"remote-code loader exited with {completed.returncode}:\n{completed.stderr[-4000:]}")
    return json.loads(report_path.read_text())


@pytest.fixture(scope="module")
def remote_report(saved_folders):
    return run_loader(saved_folders["root"], saved_folders["folders"])


def test_a_model_with_every_zoo_feature_loads_as_remote_code_and_in_a_pipeline(tmp_path):
    """No class token, registers, attention pooling, LayerScale, RMSNorm, qk-norm, a gated MLP, pre- and patch
    norms: the shipped model file alone computes the same outputs in a clean process."""
    torch.manual_seed(0)
    config = modeling_vit_custom.ViTCustomConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, num_labels=NUM_LABELS, class_token=False, num_register_tokens=2, pooling="map",
        layer_scale_init_value=0.1, norm_type="rms_norm", qk_norm=True, mlp_type="gated", hidden_act="silu",
        pre_norm=True, patch_norm=True, prefix_position_embeddings=False, proj_bias=False,
    )  # fmt: skip
    model = ViTCustomForImageClassification(config).eval()
    folder = tmp_path / "zoo"
    model.save_pretrained(folder)
    PreprocessSettings(image_size=32).to_image_processor().save_pretrained(folder)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = {
            "pixel_values": pixel_values,
            "pooler_output": model.vit(pixel_values).pooler_output.contiguous(),
            "logits": model(pixel_values).logits,
        }
    save_file(reference, tmp_path / "reference.safetensors")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "image.png")
    report = run_loader(tmp_path, [folder])
    (result,) = report["results"].values()
    assert not report["package_importable"]
    assert result["classifier"].endswith("modeling_vit_custom.ViTCustomForImageClassification")
    assert result["pooler_max_abs_diff"] < 1e-5 and result["logits_max_abs_diff"] < 1e-5
    assert len(result["predictions"]) == 3


def test_saved_folder_is_self_contained(saved_folders):
    package_dir = Path(modeling_vit_custom.__file__).parent
    for folder in saved_folders["folders"]:
        files = {path.name for path in folder.iterdir()}
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files, folder
        assert "pytorch_model.bin" not in files
        for source in ("configuration_vit_custom.py", "modeling_vit_custom.py"):
            assert (folder / source).read_text() == (package_dir / source).read_text(), (folder, source)
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "vit_custom"
        assert config["auto_map"] == AUTO_MAP, folder


def test_saved_folders_load_as_remote_code(saved_folders, remote_report):
    """One test for the whole report: under pytest-xdist each worker would otherwise start its own interpreter."""
    assert remote_report["package_importable"] is False
    # Only the copies made by transformers from the saved folders were imported.
    assert remote_report["vit_custom_modules"]
    assert all(name.startswith("transformers_modules.") for name in remote_report["vit_custom_modules"])

    expected_fields = {"model_type": "vit_custom", "image_size": 32, "patch_size": 8, "hidden_size": 64}
    expected_predictions = saved_folders["expected_predictions"]
    assert remote_report["results"].keys() == {str(folder) for folder in saved_folders["folders"]}
    for folder, result in remote_report["results"].items():
        for key, class_name in [
            ("config", "ViTCustomConfig"),
            ("model", "ViTCustomModel"),
            ("classifier", "ViTCustomForImageClassification"),
            ("pipeline_model", "ViTCustomForImageClassification"),
        ]:
            module, _, name = result[key].rpartition(".")
            assert name == class_name, (folder, result[key])
            assert module.startswith("transformers_modules."), (folder, result[key])
        assert result["config_fields"] == expected_fields, folder
        assert result["pooler_max_abs_diff"] < 1e-5, folder
        assert result["logits_max_abs_diff"] < 1e-5, folder

        predictions = result["predictions"]
        assert [p["label"] for p in predictions] == [p["label"] for p in expected_predictions], folder
        expected_scores = [p["score"] for p in expected_predictions]
        assert [p["score"] for p in predictions] == pytest.approx(expected_scores, abs=1e-5), folder
