"""Tests of 1-channel (grayscale) models through the tools: images are read with the model's channel count, and
where transformers' pipeline cannot serve the model the tools and the card say so."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from huggingface_hub import ModelCard
from PIL import Image

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.inference.attention_maps import write_attention_figures
from modeling_vit_custom.inference.images import load_classifier
from modeling_vit_custom.inference.predict import predict
from modeling_vit_custom.interop.export import export_model
from modeling_vit_custom.interop.hub import push_run

LIMITATION = "cannot serve it"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gray_model")
    torch.manual_seed(0)
    config = ViTCustomConfig(
        **{**TINY_CONFIG, "num_channels": 1, "num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}}
    )
    ViTCustomForImageClassification(config).save_pretrained(folder)
    PreprocessSettings(image_size=32, mean=(0.5,), std=(0.5,)).to_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A grayscale PNG and a colour JPEG, in class folders (export --measure reads labels from them)."""
    folder = tmp_path_factory.mktemp("gray_images")
    rng = np.random.default_rng(0)
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    Image.fromarray(rng.integers(0, 256, size=(40, 36), dtype=np.uint8)).save(folder / "a" / "gray.png")
    Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)).save(folder / "b" / "colour.jpg")
    return folder


def direct_scores(model_dir: Path, path: Path) -> torch.Tensor:
    """The model's softmax on the image converted to grayscale, through its own image processor."""
    model, processor = load_classifier(model_dir)
    with torch.no_grad():
        return model(**processor(Image.open(path).convert("L"), return_tensors="pt")).logits.softmax(-1)[0]


def test_predict_reads_grayscale_and_says_pipeline_cannot_serve(model_dir, images, caplog):
    with caplog.at_level(logging.INFO, logger="modeling_vit_custom"):
        rows = list(predict(model_dir, [str(images)], top_k=3, num_workers=0, progress=False))
    assert sum(LIMITATION in record.getMessage() for record in caplog.records) == 1
    assert [Path(row["path"]).name for row in rows] == ["gray.png", "colour.jpg"]
    for row in rows:
        assert "error" not in row, row
        expected = direct_scores(model_dir, Path(row["path"]))
        assert row["scores"] == pytest.approx(expected.sort(descending=True).values.tolist(), abs=1e-5)


def test_attention_figures_of_a_grayscale_model(model_dir, images, tmp_path):
    written = write_attention_figures(model_dir, [str(images)], tmp_path / "maps")
    assert [path.name for path in written] == ["gray.png", "colour.png"]
    assert all(Image.open(path).size[0] > 100 for path in written)


def test_export_measures_a_grayscale_model(model_dir, images, tmp_path):
    report = export_model(model_dir, "onnx", tmp_path / "model.onnx", measure=[str(images)], batch_size=2)
    fp32, int8 = report["measurement"]
    assert fp32["images"] == int8["images"] == 2
    expected = [
        direct_scores(model_dir, images / "a" / "gray.png"),
        direct_scores(model_dir, images / "b" / "colour.jpg"),
    ]
    assert fp32["top1"] == np.mean([int(expected[0].argmax()) == 0, int(expected[1].argmax()) == 1])


def test_hub_folder_of_a_grayscale_model_says_pipeline_cannot_serve_it(model_dir, images, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="modeling_vit_custom"):
        folder = push_run(
            model_dir,
            None,
            None,
            output_dir=tmp_path / "repo",
            model_name="gray",
            attention_image=images / "a" / "gray.png",
        )
    messages = [record.getMessage() for record in caplog.records]
    assert any("pipeline not checked" in message for message in messages)
    card = ModelCard.load(folder / "README.md").text
    assert "**Not for `pipeline`:** this model takes 1-channel (grayscale) images" in card
    assert 'pipeline("image-classification", model=' not in card
    assert '.convert("L")' in card
    assert (folder / "attention_map.png").is_file()
