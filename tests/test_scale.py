"""Training as DeiT does at scale, launched for real: per-process randomness, repeated augmentation, EMA beside the
raw model, the learning-rate floor, streams of known length, unlabelled splits refused, and the dry-run plan."""

import json
import shutil
import sys
from pathlib import Path

import datasets
import pytest
from launch import LAUNCH, ROOT, TINY, events, execute, lr_by_step, run, train_command, write_split
from safetensors.torch import load_file

from modeling_vit_custom.data.sampling import EpochSampler

DRAWS = """
import json, sys
from accelerate import Accelerator
from accelerate.utils import set_seed
from modeling_vit_custom.data.arguments import AugmentArguments
from modeling_vit_custom.data.transforms import build_mixup
from modeling_vit_custom.modeling_vit_custom import ViTCustomDropPath
import torch

accelerator = Accelerator(cpu=True)
set_seed(7, device_specific=True)  # what scripts/train.py does
mixup = build_mixup(AugmentArguments(mixup=0.8, cutmix=1.0), num_classes=10)
drop_path = ViTCustomDropPath(0.5).train()
lam, cutmix = mixup._params_per_batch()
mask = (drop_path(torch.ones(16, 1, 1)) > 0).flatten().int().tolist()
with open(f"{sys.argv[1]}/rank_{accelerator.process_index}.json", "w") as f:  # one file a process: no interleaving
    json.dump({"lam": lam, "cutmix": bool(cutmix), "mask": mask}, f)
"""


def draws(tmp_path: Path, name: str) -> dict[int, dict]:
    script, out = tmp_path / "draws.py", tmp_path / name
    script.write_text(DRAWS)
    out.mkdir()
    run(
        [
            *LAUNCH,
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "0",
            str(script),
            str(out),
        ]
    )
    return {rank: json.loads((out / f"rank_{rank}.json").read_text()) for rank in (0, 1)}


@pytest.mark.slow
def test_each_process_draws_its_own_randomness_deterministically(tmp_path):
    first, second = draws(tmp_path, "first"), draws(tmp_path, "second")
    assert first == second  # deterministic in (seed, rank)
    assert (first[0]["lam"], first[0]["mask"]) != (first[1]["lam"], first[1]["mask"])
    assert first[0]["mask"] != first[1]["mask"]


@pytest.mark.slow
def test_two_process_kill_and_resume_is_bit_identical_with_per_process_randomness(image_folders, tmp_path):
    """2 processes, mixup, cutmix, erasing and drop-path on; the run stops at a checkpoint and resumes."""
    args = ("--num_train_epochs", "2", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5", "--mixup",
            "0.8", "--cutmix", "1.0", "--random_erasing", "0.25", "--model_config_overrides",
            TINY + ",drop_path_rate=0.2")  # fmt: skip
    reference = tmp_path / "reference"
    run(train_command(image_folders, reference, *args, processes=2))
    # The run as a kill at step 3 leaves it: that checkpoint (both processes' RNG states included) and nothing else.
    resumed = tmp_path / "resumed"
    shutil.copytree(reference / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    run(train_command(image_folders, resumed, *args, "--resume_from_checkpoint", "latest", processes=2))
    expected = load_file(reference / "final" / "model.safetensors")
    resumed = load_file(resumed / "final" / "model.safetensors")
    assert all((expected[name] == resumed[name]).all() for name in expected)


def test_repeated_augmentation_deals_copies_to_different_processes_as_deit():
    """DeiT's RASampler: 3 copies of each image in a row, dealt out to the processes in turn; an epoch keeps as
    many samples as without repetition; the order is a function of (seed, epoch)."""
    processes, batch = 3, 4
    sampler = EpochSampler(48, seed=5, repeats=3, num_replicas=processes, batch_size=batch)
    items = list(sampler)
    assert len(items) == len(sampler) == 48
    # accelerate gives process r the global batches r, r + 3, r + 6, ...
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    per_process = [[item for b in batches[r::processes] for item in b] for r in range(processes)]
    for r in range(processes):
        assert len(per_process[r]) == 16
    first_three = {}
    for r, share in enumerate(per_process):
        for _, index, copy in share:
            first_three.setdefault(index, {})[copy] = r
    full = [copies for copies in first_three.values() if len(copies) == 3]
    assert full and all(sorted(copies.values()) == [0, 1, 2] for copies in full)  # each copy on its own process
    assert len({index for _, index, _ in items}) == 16  # 48 samples of 16 images, 3 copies each
    again = EpochSampler(48, seed=5, repeats=3, num_replicas=processes, batch_size=batch)
    assert list(again) == items
    sampler.set_epoch(1)
    assert list(sampler) != items and all(epoch == 1 for epoch, _, _ in sampler)


def test_ema_is_measured_beside_the_raw_model_which_chooses_best(image_folders, tmp_path):
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--per_device_train_batch_size", "8", "--num_train_epochs", "2",
                      "--ema_decay", "0.9", "--ema_warmup"))  # fmt: skip
    evaluations = events(out, "eval")
    assert all({"eval_top1", "eval_ema_top1", "eval_ema_loss", "eval_ema_samples"} <= set(e) for e in evaluations)
    summary = events(out, "summary")[0]
    best = max(evaluations, key=lambda e: e["eval_top1"])
    assert summary["best_step"] == best["step"] and summary["best_eval_top1"] == best["eval_top1"]
    assert summary["final_eval_ema_top1"] == evaluations[-1]["eval_ema_top1"]
    raw, ema = (load_file(out / name / "model.safetensors") for name in ("final", "final_ema"))
    assert any((raw[name] != ema[name]).any() for name in raw)


def test_cosine_with_a_floor_starts_above_zero_and_ends_at_the_floor(image_folders, tmp_path):
    """transformers' cosine_warmup_with_min_lr: the first step at peak / warm-up steps, the peak at the last warm-up
    step, the floor at the last step. metrics.jsonl logs at step k the lr of step k + 1 (the schedule has stepped)."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--per_device_train_batch_size", "8", "--max_train_steps", "6",
                      "--lr_scheduler_type", "cosine_warmup_with_min_lr", "--lr_scheduler_kwargs",
                      '{"min_lr": 1e-4}'))  # fmt: skip
    lr = lr_by_step(out)
    peak = 0.1 * 8 / 512
    assert lr[1] == pytest.approx(2 / 3 * peak)  # step 2 of 3 warm-up steps (step 1 ran at peak / 3)
    assert lr[2] == pytest.approx(peak)  # step 3, the last warm-up step
    assert lr[5] == pytest.approx(1e-4)  # step 6, the last step: the floor
    assert all(value > 0 for value in lr.values())


@pytest.fixture(scope="module")
def saved_dataset(image_folders, tmp_path_factory) -> Path:
    """The image folders saved with save_to_disk: a source that knows its length, also when streamed. 97 validation
    images: 49 and 48 on 2 processes, 7 and 6 batches of 8."""
    root = tmp_path_factory.mktemp("saved")
    train = datasets.load_dataset("imagefolder", data_dir=str(image_folders[0]), split="train")
    validation = datasets.load_dataset("imagefolder", data_dir=str(image_folders[1]), split="train").select(range(97))
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(root / "data")
    return root / "data"


@pytest.mark.slow
def test_a_stream_of_known_length_trains_in_epochs_and_counts_every_sample(saved_dataset, tmp_path):
    """48 training images on 2 processes x batch 4: 6 steps an epoch, 2 epochs, warm-up of 1 epoch."""
    out = tmp_path / "run"
    run(train_command(saved_dataset, out, "--streaming", "--num_train_epochs", "2", "--warmup_epochs", "1",
                      "--num_warmup_steps", "0", processes=2))  # fmt: skip
    assert [e["step"] for e in events(out, "eval")] == [6, 12]
    assert [e["eval_samples"] for e in events(out, "eval")] == [97, 97]
    assert lr_by_step(out)[6] == pytest.approx(0.1 * 8 / 512)  # the end of the 1-epoch warm-up
    assert events(out, "summary")[0]["total_steps"] == 12


def test_a_stream_of_unknown_length_refuses_epoch_settings(tmp_path):
    """Image folders streamed before anything has read them (a folder read once records its length in the datasets
    cache; parquet files record theirs in their footers): nothing says how many images they hold."""
    folders = (tmp_path / "train", tmp_path / "validation")
    write_split(folders[0], [8, 8, 8], seed=0)
    write_split(folders[1], [4, 4, 4], seed=1)
    command = train_command(folders, tmp_path / "run", "--streaming", "--max_train_steps", "4",
                            "--warmup_epochs", "1")  # fmt: skip
    result = execute(command, timeout=300)
    assert result.returncode != 0
    assert "--streaming from a source that does not record its length: epochs cannot be counted" in result.stderr
    assert "warmup_epochs=1.0" in result.stderr


@pytest.mark.parametrize("streaming", [False, True], ids=["table", "stream"])
def test_an_unlabelled_split_is_refused(image_folders, tmp_path, streaming):
    """ImageNet-1k's test split has label -1 everywhere."""
    train = datasets.load_dataset("imagefolder", data_dir=str(image_folders[0]), split="train")
    test = train.select(range(8)).map(lambda row: {"label": -1}, features=train.features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "data")
    extra = ["--validation_split", "test", *(["--streaming", "--max_train_steps", "2"] if streaming else [])]
    result = execute(train_command(tmp_path / "data", tmp_path / "run", *extra), timeout=300)
    assert result.returncode != 0
    where = "stream position 0" if streaming else "split 'test'"
    assert f"{where}: expected labels in [0, 3), got -1" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# DeiT-B's published settings (Touvron et al. 2021, Table 9, and DeiT's main.py defaults).
DEIT_B = {
    "learning rate per 512": "0.0005",
    "warm-up steps": "30",  # 5 epochs of 6 steps in this test's tiny data
    "schedule": 'cosine_warmup_with_min_lr {"min_lr_rate": 0.01}',
    "weight decay": "0.05",
    "drop-path": "0.1",
    "EMA decay": "0.99996",
    "gradient clipping": "off",
    "epochs": "300",
}
DEIT_B_AUGMENTATION = ["RandAugment rand-m9-mstd0.5-inc1", "mixup 0.8", "cutmix 1", "label smoothing 0.1",
                       "random erasing 0.25", "repeated augmentation 3"]  # fmt: skip


def test_dry_run_plan_of_the_deit_recipe_matches_deits_settings(image_folders, tmp_path):
    """The shipped recipe on tiny data and a tiny model (the settings, not the size, are checked); nothing written."""
    out = tmp_path / "run"
    recipe = ROOT / "configs/deit_base_patch16_224.yaml"
    command = [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(recipe),
               "--train_dir", str(image_folders[0]), "--validation_dir", str(image_folders[1]),
               "--model_config_overrides", TINY + ",drop_path_rate=0.1", "--per_device_train_batch_size", "8",
               "--num_workers", "0", "--report_to", "none", "--output_dir", str(out), "--dry_run"]  # fmt: skip
    refused = execute(command, timeout=300)
    # DeiT's absolute floor is above this batch's peak (5e-4 x 8 / 512): the schedule would climb to it. Refused.
    assert refused.returncode == 2 and "--lr_scheduler_kwargs min_lr 1e-05: expected a floor below the peak" in (
        refused.stderr
    )
    assert "got a peak of 7.81e-06" in refused.stderr and not out.exists()
    # The same floor as a fraction of the peak (1e-5 of DeiT's 1e-3 at batch 1024) scales with the batch.
    result = run([*command, "--lr_scheduler_kwargs", '{"min_lr_rate": 0.01}'])
    rows = dict(
        line.strip("|").split("|", 1)
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    )
    plan = {key.strip(): value.strip() for key, value in rows.items()}
    for key, value in DEIT_B.items():
        assert plan[key] == value, key
    assert all(piece in plan["augmentation"] for piece in DEIT_B_AUGMENTATION)
    assert plan["eval crop"] == "16 px, crop_pct 0.875, bicubic"
    assert plan["lr of the last step"] == "7.813e-08" and float(plan["lr of step 1"]) > 0
    assert float(plan["measured seconds per optimizer step"]) > 0
    assert not out.exists()
