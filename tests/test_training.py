"""The training script, launched for real with accelerate as its users launch it (1 and 2 CPU processes)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from launch import (
    ACCELERATE,
    ROOT,
    TINY,
    environment,
    events,
    execute,
    final_weights,
    kill_once_exists,
    lr_by_step,
    run,
    train_command,
    write_split,
)

from modeling_vit_custom.data.sampling import EpochSampler, SeededSamples
from modeling_vit_custom.training.arguments import parse_config_overrides
from modeling_vit_custom.training.checkpoints import TRAINING_STATE, list_checkpoints
from modeling_vit_custom.training.resume import resolve_checkpoint


@pytest.fixture(scope="module")
def single_run(image_folders, tmp_path_factory) -> Path:
    """One process, batch 8, no accumulation, 2 epochs of 6 steps: the reference for the other runs."""
    out = tmp_path_factory.mktemp("single") / "run"
    run(train_command(image_folders, out, "--per_device_train_batch_size", "8", "--num_train_epochs", "2",
                      "--checkpointing_steps", "4"))  # fmt: skip
    return out


def test_single_process_run_writes_everything(single_run):
    eval_events = events(single_run, "eval")
    assert [e["step"] for e in eval_events] == [6, 12]
    for e in eval_events:
        assert e["eval_samples"] == 101
        assert {"epoch", "eval_loss", "eval_top1", "eval_top5"} <= set(e)
    assert eval_events[-1]["eval_top1"] > 0.9  # the colours are easy: far above chance (1/3)
    train_events = events(single_run, "train")
    assert [e["step"] for e in train_events] == list(range(1, 13))
    assert all(np.isfinite(e["loss"]) and e["images_per_second"] > 0 for e in train_events)
    # checkpoints at steps 4 and 8 and at the ends of epochs (6, 12); the newest two are kept
    assert [p.name for p in list_checkpoints(single_run)] == ["step_8", "step_12"]
    assert (single_run / "training_curves.png").stat().st_size > 10_000
    summary = events(single_run, "summary")[0]
    assert summary["total_steps"] == 12 and summary["final_eval_top1"] == eval_events[-1]["eval_top1"]
    # Where the time went: every phase of the loop, adding up to (nearly all of) the run's time after set-up.
    seconds = summary["phase_seconds"]
    assert seconds.pop("compile") == 0  # an eager run compiles nothing
    assert set(seconds) == {"data", "augment", "forward_backward", "optimizer", "logging", "evaluation", "checkpoint"}
    assert all(value > 0 for value in seconds.values()) and summary["train_images"] == 12 * 8
    assert 0.8 * summary["train_runtime_s"] < sum(seconds.values()) <= summary["train_runtime_s"]
    config = json.loads((single_run / "run_config.json").read_text())
    assert config["global_batch_size"] == 8 and config["effective_learning_rate"] == pytest.approx(0.1 * 8 / 512)
    for folder in ("final", "best"):
        names = {p.name for p in (single_run / folder).iterdir()}
        assert {"config.json", "model.safetensors", "modeling_vit_custom.py", "preprocessor_config.json"} <= names
        assert json.loads((single_run / folder / "config.json").read_text())["id2label"] == {
            "0": "blue", "1": "green", "2": "red"
        }  # fmt: skip


def test_final_model_loads_in_a_clean_process(single_run, tmp_path):
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        "from PIL import Image\n"
        "model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "classify = pipeline('image-classification', model=sys.argv[1], trust_remote_code=True)\n"
        "image = Image.new('RGB', (20, 20), (230, 10, 10))\n"
        "print(type(model).__name__, classify(image)[0]['label'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(single_run / "final")],
        cwd=tmp_path, env={**environment(), "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["ViTCustomForImageClassification", "red"]


@pytest.mark.slow
def test_two_processes_sync_gradients_and_count_every_sample(single_run, image_folders, tmp_path):
    """2 processes x batch 4 = the single run's global batch 8: same schedule, same evaluation counts."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--num_train_epochs", "2", processes=2))
    summary = events(out, "summary")[0]
    assert summary["ranks_in_sync"] is True  # every parameter bit-identical on both ranks after training
    assert [e["eval_samples"] for e in events(out, "eval")] == [101, 101]
    assert lr_by_step(out) == pytest.approx(lr_by_step(single_run), rel=1e-12)
    # The same model evaluated by 1 and by 2 processes: same count, same top-1.
    results = []
    for processes in (1, 2):
        json_path = tmp_path / f"eval_{processes}.json"
        command = train_command(image_folders, out, processes=processes)
        launch = command[: command.index(str(ROOT / "scripts/train.py"))]
        run([*launch, str(ROOT / "scripts/evaluate_model.py"), "--model_name_or_path", str(out / "final"),
             "--validation_dir", str(image_folders[1]), "--per_device_eval_batch_size", "8", "--num_workers", "0",
             "--output_json", str(json_path)])  # fmt: skip
        results.append(json.loads(json_path.read_text()))
    assert results[0]["eval_samples"] == results[1]["eval_samples"] == 101
    assert results[0]["eval_top1"] == results[1]["eval_top1"]
    assert results[0]["eval_loss"] == pytest.approx(results[1]["eval_loss"], rel=1e-5)


def test_learning_rate_schedule_is_the_same_with_gradient_accumulation(single_run, image_folders, tmp_path):
    """Batch 4 x 2 accumulation steps = batch 8: the schedule is in optimizer steps, so the lr at each step agrees."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--gradient_accumulation_steps", "2", "--num_train_epochs", "2"))
    lr_accumulated, lr_reference = lr_by_step(out), lr_by_step(single_run)
    assert lr_accumulated == pytest.approx(lr_reference, rel=1e-12)
    peak = 0.1 * 8 / 512
    assert lr_reference[3] == pytest.approx(peak)  # end of the 3 warm-up steps
    assert lr_reference[12] == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0 at the last step


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(image_folders, tmp_path):
    """SIGKILL after a mid-epoch checkpoint, resume from `latest`: the same weights as a run never stopped, with
    random augmentation, mixup and drop-path on."""
    args = ("--num_train_epochs", "2", "--checkpointing_steps", "5", "--randaugment", "rand-m9-mstd0.5-inc1",
            "--random_erasing", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing", "0.1",
            "--model_config_overrides", TINY + ",drop_path_rate=0.1", "--checkpoints_total_limit", "5")  # fmt: skip
    reference = tmp_path / "reference"
    run(train_command(image_folders, reference, *args))

    interrupted = tmp_path / "interrupted"
    kill_once_exists(train_command(image_folders, interrupted, *args), interrupted / "checkpoints" / "step_5")
    assert not (interrupted / "final").exists()
    # A checkpoint folder left half-written by the kill (or by anything else) must not be picked as "latest".
    half_written = interrupted / "checkpoints" / "step_999"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"truncated")

    run(train_command(image_folders, interrupted, *args, "--resume_from_checkpoint", "latest"))
    assert all(np.isfinite(e["loss"]) for e in events(interrupted, "train"))
    expected, resumed = final_weights(reference), final_weights(interrupted)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    # No jump in the schedule: every logged lr after resuming is the uninterrupted run's.
    assert lr_by_step(interrupted) == lr_by_step(reference)


def test_latest_ignores_half_written_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("step_4", True), ("step_8", True), (".tmp_step_12", True), ("step_16", False)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / TRAINING_STATE).write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_8"]
    assert resolve_checkpoint(tmp_path, "latest").name == "step_8"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(root / "step_16"))


def test_epoch_sampler_and_seeded_samples_replay_any_batch():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    first, again = list(sampler), list(sampler)
    sampler.set_epoch(2)
    assert first == again and first != list(sampler)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {1}

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.rand(3) + np.random.rand() + random.random()

    samples = SeededSamples(Noise(), seed=5)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert torch.equal(samples[(1, 4)], samples[(1, 4)])
    assert not torch.equal(samples[(1, 4)], samples[(2, 4)])
    # The training process's generators (dropout, drop-path, mixup) are untouched.
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]
    # A worker process draws the same sample (there the global states are not put back: nothing else uses them).
    loader = torch.utils.data.DataLoader(samples, sampler=[(1, 4)], num_workers=1)
    assert torch.equal(next(iter(loader))[0], samples[(1, 4)])


def test_config_overrides_are_typed_and_checked():
    assert parse_config_overrides("hidden_size=64, qkv_bias=false,pooling=mean,drop_path_rate=0.1") == {
        "hidden_size": 64, "qkv_bias": False, "pooling": "mean", "drop_path_rate": 0.1
    }  # fmt: skip
    # A list keeps its commas: items are split only outside brackets.
    assert parse_config_overrides("conv_stem_channels=[16, 32,64],conv_stem_strides=[1,2,2],hidden_size=64") == {
        "conv_stem_channels": [16, 32, 64], "conv_stem_strides": [1, 2, 2], "hidden_size": 64
    }  # fmt: skip
    with pytest.raises(ValueError, match="'hidden' is not a ViTCustomConfig field"):
        parse_config_overrides("hidden=64")
    with pytest.raises(ValueError, match="expected 'key=value'"):
        parse_config_overrides("hidden_size")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(image_folders, tmp_path):
    out = tmp_path / "run"
    command = train_command(image_folders, out, "--learning_rate", "1e38", "--num_warmup_steps", "0",
                            "--checkpointing_steps", "1", "--logging_steps", "5",
                            "--max_train_steps", "10")  # fmt: skip
    result = execute(command, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("train.py: error: Non-finite loss at step 2; stopping") == 1
    # The step-1 checkpoint (finite loss) is complete and nothing after it was saved.
    assert [p.name for p in list_checkpoints(out)] == ["step_1"]
    assert json.loads((out / "checkpoints" / "step_1" / TRAINING_STATE).read_text())["step"] == 1
    assert not (out / "final").exists()


def test_streaming_run_counts_every_evaluation_sample(image_folders, tmp_path):
    """The same folders read as a stream: sharded by split_dataset_by_node, evaluated with padding dropped."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--streaming", "--max_train_steps", "6"))
    (evaluation,) = events(out, "eval")
    assert evaluation["step"] == 6 and evaluation["eval_samples"] == 101
    assert len(events(out, "train")) == 6


@pytest.mark.slow
def test_timm_run_saves_class_names_and_evaluates_from_its_folder(image_folders, tmp_path):
    """A `--model timm:<name>` run's final/ records the class names and evaluates through evaluate_model.py, as a
    folder (timm's local-dir), as `--model timm:<name> --checkpoint` and converted to our architecture, with the
    numbers the run logged. Tools that take only our folders (predict.py) refuse it by name, with that conversion."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--model", "timm:vit_tiny_patch16_224", "--max_train_steps", "2",
                      "--max_eval_samples", "16", "--model_config_overrides", "drop_path_rate=0.1"))  # fmt: skip
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["pretrained_cfg"]["label_names"] == ["blue", "green", "red"]  # what timm's loader reads back
    logged = events(out, "eval")[-1]
    data = ["--validation_dir", str(image_folders[1]), "--max_eval_samples", "16", "--num_workers", "0"]
    routes = {
        "folder": ["--model_name_or_path", str(out / "final")],
        "checkpoint": ["--model", "timm:vit_tiny_patch16_224", "--checkpoint", str(out / "final/model.safetensors")],
        "converted": ["--model_name_or_path", str(tmp_path / "converted")],
    }
    refused = execute([sys.executable, str(ROOT / "scripts/predict.py"), "--model", str(out / "final"),
                       "--output", str(tmp_path / "preds.jsonl"), str(image_folders[1])])  # fmt: skip
    conversion = f"python scripts/convert_timm.py --timm_model local-dir:{out / 'final'} --pretrained --output_dir DIR"
    assert refused.returncode != 0 and "--model: expected a vit-custom model folder, got a timm one" in refused.stderr
    assert conversion in refused.stderr and not (tmp_path / "preds.jsonl").exists()
    run([sys.executable, str(ROOT / "scripts/convert_timm.py"), "--timm_model", f"local-dir:{out / 'final'}",
         "--pretrained", "--output_dir", str(tmp_path / "converted")])  # fmt: skip
    converted = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert converted["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    for name, model in routes.items():
        json_path = tmp_path / f"{name}.json"
        run([sys.executable, str(ROOT / "scripts/evaluate_model.py"), *model, *data, "--output_json", str(json_path)])
        result = json.loads(json_path.read_text())
        assert result["eval_samples"] == 16 and result["eval_top1"] == logged["eval_top1"], name
        assert result["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-5), name


def test_timm_models_get_the_overrides_that_apply_and_refuse_the_rest():
    """drop_path_rate reaches every timm block (it once became Identity while run_config.json said 0.1); a field
    timm's named architecture is not built from is refused by name, before any data is read."""
    from modeling_vit_custom.training.arguments import ModelArguments
    from modeling_vit_custom.training.models import build_model

    args = ModelArguments(model="timm:vit_tiny_patch16_224",
                          model_config_overrides="drop_path_rate=0.1,attention_probs_dropout_prob=0.2")  # fmt: skip
    model, _ = build_model(args, ["a", "b"])
    drop_paths = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]  # Identity at 0
    assert drop_paths == pytest.approx([0.1 * i / 11 for i in range(12)])  # timm's linear rule up to the rate
    assert model.blocks[0].attn.attn_drop.p == 0.2
    with pytest.raises(ValueError, match="hidden_size, patch_size cannot apply to --model timm:<name>"):
        ModelArguments(model="timm:vit_tiny_patch16_224", model_config_overrides="hidden_size=64,patch_size=4")


def test_streaming_with_accumulation_steps_every_epoch_whole(image_folders, tmp_path):
    """48 images, batch 4: 12 batches an epoch, accumulated 5 at a time, is 3 optimizer steps (5 + 5 + 2) an epoch,
    streamed or not. The stream once carried each epoch's last 2 batches into the next epoch: 5 steps in 2 epochs,
    evaluations at epochs 0.67 and 1.67."""
    import datasets

    files = []
    for folder in image_folders:  # parquet: a stream whose length the footers record
        files.append(tmp_path / f"{folder.name}.parquet")
        datasets.load_dataset("imagefolder", data_dir=str(folder), split="train").to_parquet(str(files[-1]))
    runs = {}
    for name, extra in {"stream": ("--streaming",), "map": ()}.items():
        out = tmp_path / name
        run(train_command(tuple(files), out, *extra, "--gradient_accumulation_steps", "5", "--num_train_epochs", "2",
                          "--checkpoints_total_limit", "4"))  # fmt: skip
        runs[name] = out
        assert [(e["step"], e["epoch"]) for e in events(out, "eval")] == [(3, 1.0), (6, 2.0)], name
        assert events(out, "summary")[-1]["total_steps"] == 6
        state = json.loads((out / "checkpoints" / "step_3" / TRAINING_STATE).read_text())
        assert (state["epoch"], state["samples_in_epoch"]) == (1, 0)
    assert [e["step"] for e in events(runs["stream"], "train")] == [e["step"] for e in events(runs["map"], "train")]


@pytest.mark.slow
def test_the_readmes_own_images_command_learns_on_a_50_image_folder(tmp_path):
    """README, "Train on your own images": the recipe on a flat 50-image, 3-class folder (no validation folder: a
    fifth held out) learns, at its batch of 16 and the rate per 512 that gives 1e-3 there."""
    write_split(tmp_path / "my_images", [17, 17, 16], seed=3)
    readme = (ROOT / "README.md").read_text()
    command = "scripts/train.py --config configs/own_images.yaml --train_dir my_images"
    assert command in readme
    out = tmp_path / "runs" / "own_images"
    result = subprocess.run(
        [*ACCELERATE, "-q", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
         str(ROOT / "scripts/train.py"), "--config", str(ROOT / "configs/own_images.yaml"),
         "--train_dir", "my_images", "--report_to", "none"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "run_config.json").read_text())
    assert config["global_batch_size"] == 16 and config["effective_learning_rate"] == pytest.approx(1e-3)
    final = events(out, "eval")[-1]
    assert final["eval_samples"] == 10 and final["eval_top1"] > 0.6  # chance is 1/3


def test_the_first_steps_rate_is_what_docs_training_says_for_each_schedule():
    """The default cosine warms up from 0 (the first step trains at 0), DeiT's cosine_warmup_with_min_lr from
    peak / warm-up steps; docs/training.md once said peak / warm-up steps for both."""
    from modeling_vit_custom.training.arguments import TrainingArguments
    from modeling_vit_custom.training.models import create_scheduler
    from modeling_vit_custom.training.plan import lr_of_step

    first = {}
    for schedule, kwargs in {"cosine": None, "cosine_warmup_with_min_lr": '{"min_lr_rate": 0.01}'}.items():
        args = TrainingArguments(lr_scheduler_type=schedule, lr_scheduler_kwargs=kwargs, num_warmup_steps=4)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        first[schedule] = lr_of_step(create_scheduler(optimizer, args, 10, 100), 1)
    assert first == {"cosine": 0.0, "cosine_warmup_with_min_lr": pytest.approx(1e-3 / 4)}
    docs = " ".join((ROOT / "docs" / "training.md").read_text().split())
    assert "`cosine_warmup_with_min_lr` starts at peak / warm-up steps, the default `cosine`" in docs
    assert "at 0" in docs
