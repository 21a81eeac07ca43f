"""Tests of the Gradio Space that push_to_hub.py --space_dir writes: its files, and the check that starts its app."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG
from huggingface_hub import SpaceCard
from launch import execute

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.inference.demo import Classifier, sample_photos
from modeling_vit_custom.interop.space import SpaceError, verify_space, write_space

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "modeling_vit_custom"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space_model")
    torch.manual_seed(0)
    config = ViTCustomConfig(**{**TINY_CONFIG, "num_labels": 3, "id2label": {0: "cat", 1: "dog", 2: "owl"}})
    ViTCustomForImageClassification(config).save_pretrained(folder)
    PreprocessSettings(image_size=32).to_image_processor().save_pretrained(folder)
    return folder


def push(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), *args]
    return execute(command)


@pytest.mark.slow
def test_push_to_hub_writes_a_space_checked_by_classifying_through_its_app(model_dir, tmp_path):
    space = tmp_path / "space"
    process = push(str(model_dir), "--hub_model_id", "someone/vit-pets", "--revision_tag", "v1", "--dry_run",
                   "--output_dir", str(tmp_path / "repo"), "--space_dir", str(space))  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    expected = Classifier.load(model_dir)(sample_photos()[0])
    assert f"checked the Space {space.parent}/.tmp_" in process.stderr
    assert f"grace_hopper.jpg -> {expected.label} (" in process.stderr
    assert sorted(p.name for p in space.iterdir()) == [
        "README.md", "app.py", "examples", "modeling_vit_custom", "requirements.txt"
    ]  # fmt: skip
    data = SpaceCard.load(space / "README.md").data
    assert (data.sdk, data.app_file, data.models) == ("gradio", "app.py", ["someone/vit-pets"])
    app = (space / "app.py").read_text()
    assert 'MODEL_ID = "someone/vit-pets"' in app and 'REVISION = "v1"' in app
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("transformers") for line in requirements)
    assert not any(line.startswith("gradio") for line in requirements)  # the front matter's sdk_version installs it
    copied = space / "modeling_vit_custom"
    assert filecmp.cmp(copied / "inference" / "demo.py", PACKAGE / "inference" / "demo.py", shallow=False)
    assert not list(copied.rglob("__pycache__"))
    assert [p.name for p in (space / "examples").iterdir()] == ["grace_hopper.jpg"]


def test_space_needs_a_repository_and_a_revision(model_dir, tmp_path):
    process = push(str(model_dir), "--hub_model_id", "someone/vit-pets", "--output_dir", str(tmp_path / "repo"),
                   "--space_dir", str(tmp_path / "space"))  # fmt: skip
    assert process.returncode == 2
    assert "--space_dir: expected --hub_model_id and --revision_tag" in process.stderr
    assert not list(tmp_path.iterdir())


def test_a_space_whose_app_does_not_start_fails_its_check(model_dir, tmp_path):
    space = write_space(tmp_path / "space", "someone/vit-pets", "v1", sample_photos())
    app = space / "app.py"
    app.write_text(app.read_text().replace("build_app(classifier, examples).launch()", "raise SystemExit(3)"))
    with pytest.raises(SpaceError, match="app.py exited with code 3 before serving"):
        verify_space(space, model_dir, timeout=120)
