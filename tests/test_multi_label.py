"""Multi-label training and evaluation end to end: Sequence(ClassLabel) labels, BCE, mAP / F1, sigmoid pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from launch import CLASSES, ROOT, environment, events, run, train_command, write_multi_label_split, write_split

from modeling_vit_custom.data.arguments import AugmentArguments, DataArguments
from modeling_vit_custom.data.sources import load_datasets
from modeling_vit_custom.data.transforms import check_multi_label_augmentation
from modeling_vit_custom.metrics import MULTI_LABEL
from modeling_vit_custom.metrics.multi_label import average_precision

# Augmentation that could hide a square (and so change an image's label set) is off.
NO_LABEL_CHANGING_AUGMENTATION = ("--randaugment", "", "--random_erasing", "0", "--train_crop_scale", "1", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multi_label")
    write_multi_label_split(root / "train.parquet", 96, seed=0)
    write_multi_label_split(root / "validation.parquet", 45, seed=1)
    return root / "train.parquet", root / "validation.parquet"


@pytest.fixture(scope="module")
def multi_label_run(data, tmp_path_factory) -> Path:
    """2 epochs of 12 steps, batch 8."""
    out = tmp_path_factory.mktemp("run") / "run"
    run(train_command(data, out, "--per_device_train_batch_size", "8", "--num_train_epochs", "2",
                      "--learning_rate", "0.5", *NO_LABEL_CHANGING_AUGMENTATION))  # fmt: skip
    return out


def test_sequence_of_class_labels_is_read_as_multi_label(data):
    splits = load_datasets(DataArguments(train_file=str(data[0]), validation_file=str(data[1])))
    assert splits.multi_label and splits.class_names == CLASSES
    assert len(splits.train) == 96 and len(splits.validation) == 45


def test_run_trains_with_bce_and_logs_map_and_f1(multi_label_run, data):
    for folder in ("final", "best"):
        config = json.loads((multi_label_run / folder / "config.json").read_text())
        assert config["problem_type"] == "multi_label_classification"
        assert config["id2label"] == {"0": "red", "1": "green", "2": "blue"}
    evaluations = events(multi_label_run, "eval")
    assert [e["step"] for e in evaluations] == [12, 24]
    for e in evaluations:
        assert {"eval_loss", "eval_map", "eval_f1", "eval_f1_macro"} <= set(e) and "eval_top1" not in e
        assert all(np.isfinite(e[key]) for key in ("eval_loss", "eval_map", "eval_f1", "eval_f1_macro"))
        assert e["eval_samples"] == 45
    # Random scores give each class an average precision near its share of positives (about 1/2 here).
    validation = load_datasets(DataArguments(train_file=str(data[0]), validation_file=str(data[1]))).validation
    prevalence = np.mean([len(labels) for labels in validation["label"]]) / len(CLASSES)
    assert evaluations[-1]["eval_map"] > prevalence + 0.2
    summary = events(multi_label_run, "summary")[0]
    best = max(evaluations, key=lambda e: e["eval_map"])
    assert (summary["best_step"], summary["best_eval_map"]) == (best["step"], best["eval_map"])
    assert summary["final_eval_map"] == evaluations[-1]["eval_map"]
    assert summary["final_eval_f1"] == evaluations[-1]["eval_f1"] and summary["final_eval_top1"] is None
    assert (multi_label_run / "training_curves.png").stat().st_size > 10_000


def test_pipeline_gives_sigmoid_scores_in_a_clean_process(multi_label_run, tmp_path):
    code = (
        "import sys, json, torch\n"
        "from PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline\n"
        "model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "processor = AutoImageProcessor.from_pretrained(sys.argv[1])\n"
        "classify = pipeline('image-classification', model=sys.argv[1], trust_remote_code=True)\n"
        "image = Image.new('RGB', (20, 20), (20, 20, 20))\n"
        "image.paste((230, 0, 0), (1, 1, 9, 9))\n"
        "with torch.no_grad():\n"
        "    logits = model(**processor(image, return_tensors='pt')).logits[0]\n"
        "scores = {row['label']: row['score'] for row in classify(image, top_k=None)}\n"
        "print(json.dumps({'logits': logits.tolist(), 'scores': scores}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(multi_label_run / "final")],
        cwd=tmp_path, env={**environment(), "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.splitlines()[-1])
    scores = [output["scores"][name] for name in CLASSES]
    assert scores == pytest.approx(torch.tensor(output["logits"]).sigmoid().tolist(), abs=1e-6)
    assert abs(sum(scores) - 1) > 0.05  # independent per-class probabilities, not a softmax


def test_evaluate_model_measures_the_saved_model_as_training_did(multi_label_run, data, tmp_path):
    json_path = tmp_path / "eval.json"
    run([sys.executable, str(ROOT / "scripts/evaluate_model.py"),
         "--model_name_or_path", str(multi_label_run / "final"), "--validation_file", str(data[1]),
         "--per_device_eval_batch_size", "8", "--num_workers", "0", "--output_json", str(json_path)])  # fmt: skip
    result = json.loads(json_path.read_text())
    last = events(multi_label_run, "eval")[-1]
    assert result["eval_samples"] == 45 and "eval_top1" not in result
    for key in ("eval_map", "eval_f1", "eval_f1_macro", "eval_loss"):
        assert result[key] == pytest.approx(last[key], abs=1e-6), key


def test_int8_measurement_compares_every_class_decision_and_counts_no_top1(multi_label_run, tmp_path):
    """Folder names that are the model's labels would give a top-1 to a single-label model, not to a multi-label one:
    an image there has a set of labels. Agreement with fp32 is over every (image, class) decision."""
    write_split(tmp_path / "val", [2, 2, 2], seed=3)
    output = tmp_path / "model.int8.onnx"
    result = run([sys.executable, str(ROOT / "scripts/export.py"), str(multi_label_run / "final"), "--format", "onnx",
                  "--int8", "--output", str(output), "--measure", str(tmp_path / "val"),
                  "--batch_size", "4"])  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "| file | MB | images/s | speed-up | top-1 | per-class (p > 0.5) agreement with fp32 | max abs logit diff |"
    )
    fp32_row, int8_row = lines[2].split("|"), lines[3].split("|")
    assert fp32_row[5].strip() == int8_row[5].strip() == "n/a" and fp32_row[6].strip() == "100.00%"
    # 6 images x 3 classes: the int8 file's agreement is a multiple of 1/18.
    agreement = float(int8_row[6].strip().rstrip("%")) / 100
    assert round(agreement * 18, 2) == round(agreement * 18) and "6 images." in result.stdout


def test_mixing_and_smoothing_are_refused_by_flag():
    check_multi_label_augmentation(AugmentArguments())
    with pytest.raises(ValueError, match=r"--mixup 0.8, --label_smoothing 0.1: expected 0 for a multi-label dataset"):
        check_multi_label_augmentation(AugmentArguments(mixup=0.8, label_smoothing=0.1))


def test_map_and_f1_match_their_definitions():
    metric = evaluate.load(MULTI_LABEL, keep_in_memory=True)
    result = metric.compute(predictions=[[0.9, 0.2, 0.5]] + [[0.6, 0.7, 0.1], [0.1, 0.4, 0.3]],
                            references=[[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # fmt: skip
    # class 0: ranked 0.9 (+), 0.6 (-), 0.1 (+) -> (1 + 2/3) / 2; class 1: its positive ranked first -> 1; class 2
    # has no positive and is left out of the mean. Predicted at >= 0.5: tp 2, fp 2 (0.6 of class 0, 0.5 of class 2),
    # fn 1 -> micro F1 4 / 7; per class 2/4, 2/2 and 0/1.
    assert result["map"] == pytest.approx((5 / 6 + 1) / 2) and result["map_classes"] == 2
    assert result["f1"] == pytest.approx(4 / 7) and result["f1_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    # Tied scores count as one threshold, as scikit-learn's average_precision_score: precision 1/2 at recall 1.
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5


def test_hub_folder_verifies_the_pipeline_sigmoid_scores(multi_label_run, tmp_path):
    """push_to_hub.py's clean-process check compares the pipeline's top score with sigmoid(logits) for this model."""
    run([sys.executable, str(ROOT / "scripts/push_to_hub.py"), str(multi_label_run / "final"),
         "--run_dir", str(multi_label_run), "--output_dir", str(tmp_path / "hub"),
         "--model_name", "someone/multi-label"])  # fmt: skip
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    # The card reports the run's last mAP and F1, in its text and in its model-index metadata.
    last = events(multi_label_run, "eval")[-1]
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    results = {r.metric_type: (r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert results == {"map": ("mAP", round(last["eval_map"], 4)), "f1": ("F1 at 0.5", round(last["eval_f1"], 4))}
    assert card.data.metrics == ["f1", "map"]
    row = f"| final | {last['step']} | {100 * last['eval_map']:.2f}% | {100 * last['eval_f1']:.2f}% | 45 |"
    assert "| Checkpoint | Step | mAP | F1 at 0.5 | Evaluation images |" in card.text and row in card.text
    reached = f"It reaches **{100 * last['eval_map']:.2f}% mAP** and **{100 * last['eval_f1']:.2f}% F1 at 0.5** on"
    assert reached in card.text
    assert "No evaluation was recorded" not in card.text and "accuracy" not in card.text.split("## Results")[1]
