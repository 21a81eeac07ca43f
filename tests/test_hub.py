"""Tests of the Hub export: repository folder, clean-process verification, model card, upload and token hygiene."""

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG
from huggingface_hub import ModelCard
from launch import CLASSES, TINY, run, train_command, write_split
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.configuration_vit_custom import AUTO_MAP
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.interop import card, hub
from modeling_vit_custom.training.run_log import read_metrics, read_run

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "configuration_vit_custom.py",
    "modeling_vit_custom.py",
    "model.safetensors",
    "preprocessor_config.json",
    "training_curves.png",
    "attention_map.png",
}
RUN_FILES = {"training_curves.png", "attention_map.png"}
FAKE_TOKEN = "hf_FakeTokenForTestsOnly0123456789abcdef"
COMPARISON = {
    "timm_model": "vit_base_patch16_224",
    "batch_size": 8,
    "machine": {"cpu": "2 cores", "torch": torch.__version__},
    "rows": [
        {"metric": "parameters", "ours": 86567656, "timm": 86567656, "ratio": 1.0, "unit": "count"},
        {"metric": "inference_images_per_s", "ours": 21.4, "timm": 20.1, "ratio": 1.0647, "unit": "images/s"},
        {"metric": "max_abs_logit_diff", "ours": 3.1e-6, "timm": 0.0, "ratio": None, "unit": "logit"},
    ],
}


def save_model(folder: Path, seed: int, preprocessor: bool = True, **overrides) -> ViTCustomForImageClassification:
    torch.manual_seed(seed)
    config = ViTCustomConfig(**{**TINY_CONFIG, "id2label": dict(enumerate(LABELS)), **overrides})
    model = ViTCustomForImageClassification(config)
    model.save_pretrained(folder)
    if preprocessor:
        PreprocessSettings(image_size=config.image_size).to_image_processor().save_pretrained(folder)
    return model


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi at its boundary and records every call."""

    calls: list = []

    def __init__(self, **kwargs):
        FakeHfApi.calls.append(("init", kwargs))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        FakeHfApi.calls.append(("upload_folder", kwargs, files))
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd"
        return type("CommitInfo", (), {"oid": "0123abcd", "commit_url": url})()

    def create_tag(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_tag", repo_id, kwargs))


@pytest.fixture
def fake_api(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    return FakeHfApi


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real tiny run of `scripts/train.py` (2 epochs of 12 steps, evaluated every 5 steps and per epoch), with
    the comparison.json of `scripts/compare_timm.py` saved into it, where the export looks for one."""
    data = tmp_path_factory.mktemp("data")
    write_split(data / "train", [16, 16, 16], seed=0)
    write_split(data / "validation", [10, 10, 10], seed=1)
    # Three red images filed as green: no model scores above 90% top-1, so the card's numbers are not all 100%.
    for i in range(3):
        (data / "validation" / "red" / f"{i}.png").rename(data / "validation" / "green" / f"red_{i}.png")
    run_dir = tmp_path_factory.mktemp("hub") / "run"
    run(train_command((data / "train", data / "validation"), run_dir, "--num_train_epochs", "2", "--eval_steps", "5"))
    (run_dir / "comparison.json").write_text(json.dumps(COMPARISON))
    return run_dir


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(run_dir / "metrics.jsonl") if e["event"] == kind]


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    """The folder built by the real command line, offline, from the run's final checkpoint."""
    output_dir = run_dir.parent / "exported"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), str(run_dir / "final")]
        + ["--run_dir", str(run_dir), "--output_dir", str(output_dir), "--hub_model_id", "someone/vit-tiny"]
        + ["--dry_run", "--revision_tag", "v1.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip().splitlines()[-1] == str(output_dir)
    return output_dir


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    _, header, _ = text.split("---\n", 2)
    return yaml.safe_load(header)


def assert_fully_rendered(text: str):
    for leftover in ("{{", "}}", "{%", "%}", "{#", "None", "[More Information Needed]", "TODO"):
        assert leftover not in text, f"{leftover!r} left in the rendered card"


def test_exported_folder_files_config_and_weights(exported, run_dir):
    assert {p.name for p in exported.iterdir()} == EXPECTED_FILES
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "vit_custom"
    assert config["architectures"] == ["ViTCustomForImageClassification"]
    assert config["id2label"] == {"0": "blue", "1": "green", "2": "red"}  # the imagefolder's classes, sorted
    exported_weights = load_file(exported / "model.safetensors")
    source_weights = load_file(run_dir / "final" / "model.safetensors")
    assert exported_weights.keys() == source_weights.keys()
    for name, tensor in source_weights.items():
        assert torch.equal(exported_weights[name], tensor), name
    settings = PreprocessSettings.from_image_processor(AutoImageProcessor.from_pretrained(exported))
    assert settings == PreprocessSettings.from_image_processor(AutoImageProcessor.from_pretrained(run_dir / "final"))
    assert settings.image_size == 16
    # Nothing half-written is left beside the output.
    assert sorted(p.name for p in exported.parent.iterdir()) == ["exported", "run"]


def test_auto_map_entries_resolve_to_classes_in_the_folder(exported):
    for auto_class, reference in AUTO_MAP.items():
        module, class_name = reference.split(".")
        tree = ast.parse((exported / f"{module}.py").read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        assert class_name in defined, f"{auto_class} -> {reference}"
    modeling = ast.parse((exported / "modeling_vit_custom.py").read_text())
    imports = {node.module for node in ast.walk(modeling) if isinstance(node, ast.ImportFrom)}
    assert "modeling_vit_custom" not in imports and "configuration_vit_custom" in imports


def test_loads_in_clean_process_through_auto_classes_and_pipeline(exported, run_dir):
    report = hub.verify_folder(exported, run_dir / "final")
    classes = [name.rsplit(".", 1)[-1] for name in report["classes"]]
    assert classes == ["ViTCustomConfig", "ViTCustomModel", "ViTCustomForImageClassification"]
    assert all(name.startswith("transformers_modules.") for name in report["classes"])
    assert report["max_abs_logit_diff"] <= 1e-5
    assert {p["label"] for p in report["pipeline"]} == set(CLASSES)  # top 5 of 3 classes: all of them
    scores = [p["score"] for p in report["pipeline"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)


def test_verification_rejects_other_weights(exported, run_dir):
    (summary,) = events(run_dir, "summary")
    assert summary["best_step"] < summary["total_steps"]  # so best/ holds other weights than final/
    with pytest.raises(hub.VerificationError, match="expected logits within 1e-05 of the source model"):
        hub.verify_folder(exported, run_dir / "best")


def test_trained_card_has_the_run_values_and_valid_metadata(exported, run_dir):
    readme = exported / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert_fully_rendered(text)
    metadata = front_matter(readme)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-classification"
    assert metadata["license"] == "apache-2.0"
    assert {"vit-custom", "custom_code", "image-classification"} <= set(metadata["tags"])
    (summary,) = events(run_dir, "summary")
    last_eval = events(run_dir, "eval")[-1]
    config = json.loads((run_dir / "run_config.json").read_text())
    (index,) = metadata["model-index"]
    assert index["name"] == "someone/vit-tiny"
    (result,) = index["results"]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    # The final checkpoint's, rounded to 4 digits; no top-5 of 3 classes.
    assert values == {"accuracy": round(summary["final_eval_top1"], 4)}
    card = ModelCard.load(readme)
    assert card.data.eval_results[0].metric_value == round(summary["final_eval_top1"], 4)
    steps, top1, top5 = summary["total_steps"], summary["final_eval_top1"], summary["final_eval_top5"]
    assert steps == 24 and last_eval["step"] == 24 and last_eval["eval_samples"] == 30
    assert top1 == last_eval["eval_top1"] < top5 == 1  # 3 classes: top-5 is always right
    assert "for 24 optimizer steps with vit-custom's `scripts/train.py`" in text
    assert "| Checkpoint | Step | Top-1 | Evaluation images |" in text
    assert f"| final | 24 | {100 * top1:.2f}% | 30 |" in text
    assert f"in {summary['train_runtime_s'] / 60:.1f} min" in text
    assert f"| Model | 19,395 parameters; `{TINY}` |" in text and "| EMA of weights | off |" in text
    assert f"| Optimiser | AdamW, learning rate 0.1 per 512 images ({config['effective_learning_rate']:.3g} " in text
    assert "![Training loss, accuracy and learning rate against step](training_curves.png)" in text
    assert "| parameters | 86,567,656 | 86,567,656 | 1 | count |" in text
    assert "| max_abs_logit_diff | 3.1e-06 | 0 | n/a | logit |" in text
    assert "measured on a model of 86,567,656 parameters, not this checkpoint." in text
    assert 'revision = "v1.0"  # replace by the full commit hash you reviewed' in text
    assert 'model="someone/vit-tiny", revision=revision, trust_remote_code=True' in text
    assert f"| Parameters | {config['num_parameters']:,} |" in text and config["num_parameters"] == 19_395
    assert "| Image size | 16 x 16 |" in text and "| Patch embedding | linear, 4 x 4 patches |" in text
    assert "`blue`, `green`, `red`" in text


def test_trained_card_names_the_dataset_the_run_read(exported):
    text = (exported / "README.md").read_text(encoding="utf-8")
    assert "imagenet" not in text.lower()
    metadata = front_matter(exported / "README.md")
    assert "datasets" not in metadata
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "imagefolder"


def test_best_checkpoint_card_reports_the_best_evaluation(run_dir, tmp_path):
    (summary,) = events(run_dir, "summary")
    assert summary["best_step"] < summary["total_steps"]
    (best,) = [e for e in events(run_dir, "eval") if e["step"] == summary["best_step"]]
    assert best["eval_top1"] == summary["best_eval_top1"] == max(e["eval_top1"] for e in events(run_dir, "eval"))
    folder = hub.build_folder(run_dir / "best", tmp_path / "repo", run_dir=run_dir, repo_id="someone/best")
    text = (folder / "README.md").read_text()
    assert_fully_rendered(text)
    values = {
        m["type"]: m["value"] for m in front_matter(folder / "README.md")["model-index"][0]["results"][0]["metrics"]
    }
    assert values == {"accuracy": round(best["eval_top1"], 4)}
    row = f"| best | {best['step']} | {100 * best['eval_top1']:.2f}% | 30 |"
    assert row in text


def test_card_leaves_out_secret_settings(run_dir, tmp_path):
    """A run config that recorded credentials (as some launchers do) never puts them in the card or the folder."""
    copied_run = tmp_path / "run"
    copied_run.mkdir()
    shutil.copyfile(run_dir / "metrics.jsonl", copied_run / "metrics.jsonl")
    config = json.loads((run_dir / "run_config.json").read_text())
    secrets = {"hub_token": FAKE_TOKEN, "wandb_api_secret": FAKE_TOKEN[::-1]}
    (copied_run / "run_config.json").write_text(json.dumps({**config, **secrets}))
    folder = hub.build_folder(run_dir / "final", tmp_path / "repo", run_dir=copied_run, repo_id="someone/x")
    text = (folder / "README.md").read_text()
    assert "| Optimiser | AdamW, learning rate 0.1 per 512 images" in text
    assert "hub_token" not in text and "wandb_api_secret" not in text
    for path in folder.iterdir():
        content = path.read_bytes()
        assert FAKE_TOKEN.encode() not in content and FAKE_TOKEN[::-1].encode() not in content, path


def test_converted_card_says_where_the_weights_came_from(tmp_path):
    model_dir = tmp_path / "converted"
    save_model(model_dir, seed=2)
    (model_dir / "conversion.json").write_text(
        json.dumps({"source": "timm", "timm_model": "vit_base_patch16_224", "checkpoint": None})
    )
    comparison = tmp_path / "comparison.json"
    same_size = {"ours": 81_226, "timm": 81_226}
    rows = [{**row, **same_size} if row["metric"] == "parameters" else row for row in COMPARISON["rows"]]
    comparison.write_text(json.dumps({**COMPARISON, "rows": rows}))
    folder = hub.build_folder(model_dir, tmp_path / "repo", comparison_path=comparison, repo_id="someone/converted")
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES - RUN_FILES
    text = (folder / "README.md").read_text()
    assert_fully_rendered(text)
    metadata = front_matter(folder / "README.md")
    assert "model-index" not in metadata and "datasets" not in metadata
    assert "timm" in metadata["tags"]
    assert "The weights of timm's `vit_base_patch16_224` converted" in text
    assert "**not trained or fine-tuned here**" in text
    assert "## Training" not in text and "## Origin of the weights" in text
    assert "No evaluation was recorded for these weights here." in text
    assert "| inference_images_per_s | 21.4 | 20.1 | 1.06 | images/s |" in text
    assert "| parameters | 81,226 | 81,226 | 1 | count |" in text and "not this checkpoint" not in text


def test_plain_saved_model_gets_default_preprocessing_and_says_so(tmp_path, caplog):
    model_dir = tmp_path / "plain"
    save_model(model_dir, seed=3, preprocessor=False)
    with caplog.at_level(logging.WARNING, logger="modeling_vit_custom.interop.hub"):
        folder = hub.build_folder(model_dir, tmp_path / "repo", repo_id="someone/plain")
    assert "has no preprocessor_config.json" in caplog.text
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["size"] == {"shortest_edge": 32} and processor_config["crop_pct"] == 0.9
    text = (folder / "README.md").read_text()
    assert_fully_rendered(text)
    assert "did not record its own preprocessing" in text
    assert "No training run or conversion record came with these weights" in text


def test_card_describes_a_convolutional_stem(tmp_path):
    save_model(tmp_path / "stem", seed=3, conv_stem_channels=[8, 16, 32, 48], conv_stem_strides=[1, 2, 2, 2])
    folder = hub.build_folder(tmp_path / "stem", tmp_path / "repo", repo_id="someone/stem")
    text = (folder / "README.md").read_text()
    assert (
        "| Patch embedding | convolutional stem: 4 3 x 3 convolutions of 8-16-32-48 channels, strides 1-2-2-2, "
        "then a 1 x 1 projection |"
    ) in text


def test_card_names_the_zoo_features_of_the_model(tmp_path):
    save_model(
        tmp_path / "zoo", seed=3, class_token=False, num_register_tokens=4, pooling="map",
        layer_scale_init_value=1e-5, norm_type="rms_norm", mlp_type="gated", hidden_act="silu",
    )  # fmt: skip
    folder = hub.build_folder(tmp_path / "zoo", tmp_path / "repo", repo_id="someone/zoo")
    text = (folder / "README.md").read_text()
    assert "| Pooling | attention pooling of patch tokens |" in text
    assert "| Features | no class token, 4 register tokens, LayerScale (from 1e-05), gated MLP |" in text
    assert "| Norm | RMSNorm, eps 1e-06 |" in text


def test_upload_sends_the_verified_folder_in_one_commit_without_leaking_the_token(
    fake_api, run_dir, tmp_path, monkeypatch, caplog, capfd
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    output_dir = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        url = hub.push_run(
            run_dir / "final",
            run_dir,
            "someone/vit-tiny",
            private=True,
            revision_tag="v1.0",
            output_dir=output_dir,
            commit_message="Add tiny vit-custom",
        )
    assert url == "https://huggingface.co/someone/vit-tiny/commit/0123abcd"
    assert [call[0] for call in fake_api.calls] == ["init", "create_repo", "upload_folder", "create_tag"]
    assert fake_api.calls[0][1] == {}  # the token is left to huggingface_hub
    assert fake_api.calls[1][1:] == ("someone/vit-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    _, upload_kwargs, uploaded_files = fake_api.calls[2]
    assert upload_kwargs == {
        "folder_path": str(output_dir),
        "repo_id": "someone/vit-tiny",
        "repo_type": "model",
        "commit_message": "Add tiny vit-custom",
    }
    assert set(uploaded_files) == EXPECTED_FILES
    assert fake_api.calls[3][1:] == ("someone/vit-tiny", {"tag": "v1.0", "revision": "0123abcd", "repo_type": "model"})
    written = [p for p in output_dir.rglob("*") if p.is_file()]
    assert len(written) == len(EXPECTED_FILES)
    for path in written:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert FAKE_TOKEN not in caplog.text + captured.out + captured.err
    assert "verified" in caplog.text


def record_verifications(monkeypatch) -> list:
    """Replaces the clean-process check (tested above) by a recorder, for tests about what happens around it."""
    verified = []
    monkeypatch.setattr(hub, "verify_folder", lambda folder, source: verified.append((Path(folder), Path(source))))
    return verified


def test_upload_without_output_dir_leaves_no_folder_behind(fake_api, run_dir, monkeypatch):
    verified = record_verifications(monkeypatch)
    url = hub.push_run(run_dir / "final", None, "someone/untrained-card")
    _, upload_kwargs, uploaded_files = fake_api.calls[2]
    assert verified == [(Path(upload_kwargs["folder_path"]), run_dir / "final")]
    assert set(uploaded_files) == EXPECTED_FILES - RUN_FILES
    assert upload_kwargs["commit_message"].startswith("Upload vit-custom model")
    assert not Path(upload_kwargs["folder_path"]).exists()
    assert url.endswith("/commit/0123abcd") and len(fake_api.calls) == 3  # no tag asked for, none made


def test_refuses_to_upload_a_folder_whose_code_does_not_reproduce_the_model(fake_api, run_dir, tmp_path):
    model_dir = tmp_path / "stale"
    save_model(model_dir, seed=0)
    # A modeling file out of step with the package: it doubles the logits.
    with open(model_dir / "modeling_vit_custom.py", "a") as f:
        f.write(
            "\n_forward = ViTCustomForImageClassification.forward\n\n\n"
            "def _doubled(self, *args, **kwargs):\n"
            "    outputs = _forward(self, *args, **kwargs)\n"
            "    outputs.logits = 2 * outputs.logits\n"
            "    return outputs\n\n\n"
            "ViTCustomForImageClassification.forward = _doubled\n"
        )
    output_dir = tmp_path / "out"
    with pytest.raises(hub.VerificationError, match="expected logits within 1e-05 of the source model"):
        hub.push_run(model_dir, None, "someone/stale", output_dir=output_dir)
    assert [call[0] for call in fake_api.calls] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stale"]


def test_offline_upload_is_refused_and_dry_run_builds_only(monkeypatch, fake_api, run_dir):
    monkeypatch.setattr(hub, "is_offline_mode", lambda: True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set: cannot upload to 'someone/x'"):
        hub.push_run(run_dir / "final", run_dir, "someone/x")
    verified = record_verifications(monkeypatch)
    folder = hub.push_run(run_dir / "final", run_dir, "someone/x", dry_run=True)
    assert verified == [(folder, run_dir / "final")]
    try:
        assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
        text = (folder / "README.md").read_text()
        assert 'revision = "COMMIT_HASH"  # replace by the full commit hash you reviewed' in text
        assert 'model="someone/x", revision=revision' in text and '"main"' not in text
    finally:
        shutil.rmtree(folder)
    assert fake_api.calls == []


def test_bad_inputs_name_the_problem(run_dir, tmp_path, exported):
    bad_run = tmp_path / "bad_run"
    bad_run.mkdir()
    first_line = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (bad_run / "metrics.jsonl").write_text(first_line + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: expected a JSON object, got '\{not json'"):
        read_run(bad_run)

    pickled = tmp_path / "pickled"
    save_model(pickled, seed=0)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"expected weights in model.safetensors, got \['pytorch_model.bin'\]"):
        hub.build_folder(pickled, tmp_path / "repo", repo_id="someone/pickled")

    with pytest.raises(FileExistsError, match="expected a new or empty folder"):
        hub.push_run(run_dir / "final", run_dir, None, output_dir=exported, model_name="someone/x")

    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} {{ accuracy_on_imagenet }}\n")
    with pytest.raises(ValueError, match=r"got unknown \['accuracy_on_imagenet'\]"):
        hub.build_folder(run_dir / "final", tmp_path / "repo2", repo_id="someone/x", template_path=template)


def test_run_without_summary_reports_its_last_evaluation(run_dir, tmp_path):
    """A run stopped before its end: metrics.jsonl up to the evaluation at step 15, no summary, no config."""
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line) == events(run_dir, "eval")[3]) + 1
    (interrupted / "metrics.jsonl").write_text("".join(lines[:cut]))
    run = read_run(interrupted)
    assert run.config == {} and run.curves is None and run.summary is None
    last = events(run_dir, "eval")[3]
    assert last["step"] == 15  # evaluations at 5, 10, 12 (end of epoch 1), 15, ...
    assert run.result_for(interrupted / "final") == {
        "checkpoint": "final",
        "step": 15,
        "top1": last["eval_top1"],
        "top5": last["eval_top5"],
        "map": None,
        "f1": None,
        "samples": 30,
    }


def test_sharded_weights_are_exported_whole_and_other_safetensors_left_out(tmp_path):
    model_dir = tmp_path / "sharded"
    model = save_model(tmp_path / "unsharded", seed=4)
    model.save_pretrained(model_dir, max_shard_size="100KB")
    PreprocessSettings(image_size=32).to_image_processor().save_pretrained(model_dir)
    shutil.copyfile(model_dir / "config.json", model_dir / "unrelated.json")
    (model_dir / "model_ema.safetensors").write_bytes((tmp_path / "unsharded" / "model.safetensors").read_bytes())
    shards = sorted(p.name for p in model_dir.glob("model-*.safetensors"))
    assert len(shards) > 1
    folder = hub.build_folder(model_dir, tmp_path / "repo", repo_id="someone/sharded")
    exported = {p.name for p in folder.iterdir()}
    assert exported == (EXPECTED_FILES - RUN_FILES - {"model.safetensors"}) | set(shards) | {
        "model.safetensors.index.json"
    }
    assert card.count_parameters(folder) == sum(p.numel() for p in model.parameters()) == 81_226
    assert "| Parameters | 81,226 |" in (folder / "README.md").read_text()


def test_card_tells_the_truth_about_the_run(exported, run_dir):
    """Title, data, evaluation split, recipe without paths, top-k only below the class count, a pinned snippet, the
    attention map and curves."""
    text = (exported / "README.md").read_text(encoding="utf-8")
    config = json.loads((run_dir / "run_config.json").read_text())
    assert "\n# someone/vit-tiny\n" in text and "# exported" not in text
    dataset = Path(config["train_dir"]).parent.name  # the folder holding train/ and validation/
    assert f"trained on {dataset} for 24 optimizer steps" in text
    assert "on the images of the `validation` folder (final checkpoint, step 24)" in text
    for machine_path in (str(run_dir.parents[1]), str(Path.home()), "/tmp/"):
        assert machine_path not in text, machine_path
    for setting in ("Model", "Data", "Augmentation", "Optimiser", "Schedule", "Batch", "Epochs", "Precision"):
        assert f"\n| {setting} | " in text, setting
    assert "| Batch | 4 (4 per process x 1 process x 1 accumulation step) |" in text
    assert "| Hardware | 1 process on CPU |" in text and "| Precision | fp32 |" in text
    assert "| Epochs | 2 (24 optimizer steps) |" in text
    assert "top_5" not in text and "| Top-5 |" not in text and "with 3 classes it is always 100%" in text
    assert "pin the commit you read by its full hash" in text and "a tag can be moved" in text
    assert "![Training loss, accuracy and learning rate against step](training_curves.png)" in text
    assert "](attention_map.png)" in text
    with Image.open(exported / "attention_map.png") as figure:
        assert figure.format == "PNG"


def test_card_names_model_and_data_as_asked(run_dir, tmp_path):
    with pytest.raises(ValueError, match="expected --hub_model_id or --model_name to name the model in its card"):
        hub.build_folder(run_dir / "final", tmp_path / "nameless", run_dir=run_dir)
    assert not (tmp_path / "nameless").exists()
    folder = hub.build_folder(
        run_dir / "final",
        tmp_path / "repo",
        run_dir=run_dir,
        model_name="someone/colours-vit",
        dataset_label="Colour squares v2",
        attention_image=next((run_dir.parent.parent).glob("data*/train/red/0.png")),
    )
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert "\n# someone/colours-vit\n" in text and 'model="someone/colours-vit", revision=revision' in text
    assert "trained on Colour squares v2 for" in text
    (index,) = front_matter(folder / "README.md")["model-index"]
    assert index["results"][0]["dataset"]["name"] == "Colour squares v2"


def test_dataset_and_evaluation_split_come_from_the_recorded_flags():
    assert card.dataset_name({"dataset_name": "zalando-datasets/fashion_mnist"}) == "zalando-datasets/fashion_mnist"
    assert card.dataset_name({"train_dir": "/data/flowers/train", "dataset_label": "Flowers-102"}) == "Flowers-102"
    assert card.dataset_name({"train_dir": "/data/flowers/train"}) == "flowers"
    assert card.dataset_name({"dataset_path": "/data/saved/cifar10"}) == "cifar10"
    hub_run = {"dataset_name": "fashion_mnist", "validation_split": "validation", "seed": 0}
    assert (
        card.evaluation_split(hub_run)
        == "its `validation` split (its `test` split where it has no `validation` split)"
    )
    carved = {"train_dir": "/data/flowers/train", "val_split_fraction": 0.1, "seed": 3}
    assert card.evaluation_split(carved) == "a stratified 10% of the training images held out (seed 3)"
    assert card.evaluation_split({"validation_file": "/data/x/val.parquet"}) == "`val.parquet`"
    # What a run records it read wins over what the flags allowed.
    assert card.evaluation_split({**hub_run, "evaluation_split": "test"}) == "its `test` split"
    held_out = {"dataset_name": "x", "evaluation_split": None, "val_split_fraction": 0.05, "seed": 1}
    assert card.evaluation_split(held_out) == "a stratified 5% of the training images held out (seed 1)"


def test_recipe_names_every_setting_the_run_trained_with():
    """Layer decay, repeated augmentation and the data path in the recipe; no crop named when none was drawn; the
    metadata's dataset type is the builder that read local data."""
    config = {"train_crop_scale": [1.0, 1.0], "hflip": 0.5, "repeated_augmentation": 3, "layer_decay": 0.65,
              "learning_rate": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 0.05,
              "data_path": "memory", "train_dir": "/data/flowers/train"}  # fmt: skip
    rows = dict(card.recipe(config, 1000, "flowers"))
    assert rows["Augmentation"].startswith("no random crop (the whole image), horizontal flip 0.5, repeated")
    assert "repeated augmentation x3" in rows["Augmentation"]
    assert "random resized crop" not in rows["Augmentation"]
    assert rows["Optimiser"].endswith("layer-wise rate decay 0.65")
    assert rows["Data path"].startswith("decoded once into memory")
    cropped = dict(card.recipe({**config, "train_crop_scale": [0.08, 1.0], "layer_decay": None}, 1000, "x"))
    assert cropped["Augmentation"].startswith("random resized crop, scale (0.08, 1.0)")
    assert cropped["Optimiser"].endswith("layer-wise rate decay off")
    assert dict(card.recipe({**config, "data_path": None}, 1000, "x"))["Data path"] == "not recorded by this run"
    assert card.source_type({"train_dir": "/data/flowers/train"}) == "imagefolder"
    assert card.source_type({"train_file": "/data/prepared/train-*.parquet"}) == "parquet"
    assert card.source_type({"train_file": "/data/x/train.arrow"}) == "arrow"
    assert card.source_type({"dataset_path": "/data/saved/cifar10"}) == "arrow"
    assert card.source_type({"dataset_name": "zalando-datasets/fashion_mnist"}) == "zalando-datasets/fashion_mnist"


WHEEL_BUILD = """
import sys
from pathlib import Path

clean, model_dir, run_dir, folder = sys.argv[1:]
sys.path.insert(0, clean)  # before the venv's site-packages, where the editable install points at the checkout
import modeling_vit_custom
from modeling_vit_custom.interop import hub

assert Path(modeling_vit_custom.__file__).is_relative_to(clean), modeling_vit_custom.__file__
hub.build_folder(model_dir, folder, run_dir=run_dir, repo_id="someone/from-a-wheel")
"""


@pytest.mark.slow
def test_a_wheel_install_builds_the_hub_folder_and_its_card(run_dir, tmp_path):
    """The built wheel, installed alone into a fresh folder, renders the card in a clean process that cannot see the
    checkout: everything the package reads at run time ships inside it."""
    source = tmp_path / "source"  # a copy, so that the build's own folders land outside the checkout
    shutil.copytree(
        REPO_ROOT / "modeling_vit_custom", source / "modeling_vit_custom", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheels", source], check=True)
    (wheel,) = (tmp_path / "wheels").glob("vit_custom-*.whl")
    clean = tmp_path / "clean"
    subprocess.run([*pip, "install", "--no-deps", "--target", clean, wheel], check=True)

    folder = tmp_path / "repo"
    arguments = [str(clean), str(run_dir / "final"), str(run_dir), str(folder)]
    process = subprocess.run(
        [sys.executable, "-I", "-c", WHEEL_BUILD, *arguments],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert_fully_rendered(text)
    assert "# someone/from-a-wheel" in text and "load it with `trust_remote_code=True`" in text
