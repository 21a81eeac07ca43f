"""The life of a run, launched for real: finished runs resumed or extended, output folders that hold a run, bad
settings refused before any data is read, non-finite steps that never reach disk, faults during saving."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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
from PIL import Image
from safetensors.torch import load_file

from modeling_vit_custom.training.checkpoints import TRAINING_STATE, list_checkpoints


def fails(command: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    result = execute(command, timeout=timeout, env=env)
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def training_state(output_dir: Path, step: int) -> dict:
    return json.loads((output_dir / "checkpoints" / f"step_{step}" / TRAINING_STATE).read_text())


# A finished run of 4 steps at batch 8, 6 steps an epoch (so stopped in the middle of epoch 0), with checkpoints at
# steps 2 and 4. Trained once per module; each test that continues it, refuses it or writes over it takes a copy.
BASE = ("--per_device_train_batch_size", "8", "--checkpointing_steps", "2")
FINISHED = (*BASE, "--max_train_steps", "4")


@pytest.fixture(scope="module")
def finished(image_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run(train_command(image_folders, out, *FINISHED))
    return out


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_finished_run_resumes_as_complete_and_extends_from_where_it_stopped(finished, image_folders, tmp_path):
    """Resumed with its own settings the run is complete and nothing in it changes; extended to 9 steps, it continues
    from the middle of epoch 0, on a 9-step run's schedule, and its record says so."""
    out = copy_of(finished, tmp_path)
    # The epoch was cut short after 4 of its 6 batches: the checkpoint says so.
    assert training_state(out, 4) | {"epoch": 0, "samples_in_epoch": 32} == training_state(out, 4)
    record = {
        name: (out / name).read_bytes() for name in ("run_config.json", "metrics.jsonl", "final/model.safetensors")
    }

    same = run(train_command(image_folders, out, *FINISHED, "--resume_from_checkpoint", "latest"))
    assert "is complete: step_4 is step 4 of 4 and final/ is saved" in same.stderr
    assert {name: (out / name).read_bytes() for name in record} == record

    extended = run(train_command(image_folders, out, *BASE, "--max_train_steps", "9", "--resume_from_checkpoint",
                                 "latest"))  # fmt: skip
    assert "Extending the run from 4 to 9 optimizer steps" in extended.stderr
    assert events(out, "summary")[-1]["total_steps"] == 9
    assert [e["step"] for e in events(out, "train")] == list(range(1, 10))
    # Steps 5 and 6 finished epoch 0; steps 7-9 are the first 3 batches of epoch 1.
    assert training_state(out, 9) | {"epoch": 1, "samples_in_epoch": 24} == training_state(out, 9)
    # Extending is a length, not a recipe: the record says the new length with the same rate.
    config = json.loads((out / "run_config.json").read_text())
    assert config["max_train_steps"] == 9 and config["learning_rate"] == 0.1
    # The schedule after the extension is a 9-step run's.
    reference = tmp_path / "reference"
    run(train_command(image_folders, reference, *BASE, "--max_train_steps", "9"))
    assert [lr_by_step(out)[step] for step in range(5, 10)] == [lr_by_step(reference)[step] for step in range(5, 10)]


def test_a_non_finite_step_never_reaches_disk(image_folders, tmp_path):
    """No log, evaluation or checkpoint step inside the epoch: the loss turns non-finite at step 2 and the first save
    would be the end-of-epoch evaluation (best/) and checkpoint. Neither happens."""
    out = tmp_path / "run"
    args = ("--per_device_train_batch_size", "8", "--learning_rate", "1e38", "--num_warmup_steps", "0",
            "--logging_steps", "100", "--num_train_epochs", "1")  # fmt: skip
    result = fails(train_command(image_folders, out, *args))
    assert "Non-finite loss at step 2; stopping" in result.stderr
    assert list_checkpoints(out) == []
    assert not (out / "best").exists() and not (out / "final").exists()


def test_an_output_dir_holding_a_run_is_refused_unless_resumed_or_overwritten(finished, image_folders, tmp_path):
    out = copy_of(finished, tmp_path)
    metrics = (out / "metrics.jsonl").read_text()
    result = fails(train_command(image_folders, out, *FINISHED))
    # One line under `accelerate launch -q`, once: what the folder holds and how to train again.
    top1 = events(out, "summary")[0]["final_eval_top1"]
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith(
        f"train.py: error: --output_dir {out}: holds a finished run (top-1 {100 * top1:.2f}% after 4"
    )
    assert "to train again pass --overwrite_output_dir" in line and "Traceback" not in result.stderr
    assert (out / "metrics.jsonl").read_text() == metrics
    # An interrupted run (no final/) is named as such.
    shutil.rmtree(out / "final")
    result = fails(train_command(image_folders, out, *FINISHED))
    assert f"--output_dir {out}: expected a new or empty folder, got one holding a previous run" in result.stderr
    assert "pass --resume_from_checkpoint latest to continue it, or --overwrite_output_dir" in result.stderr

    run(train_command(image_folders, out, *BASE, "--max_train_steps", "3", "--overwrite_output_dir"))
    assert len(events(out, "summary")) == 1 and events(out, "summary")[0]["total_steps"] == 3
    assert [p.name for p in list_checkpoints(out)] == ["step_2", "step_3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--logging_steps", "0"], "--logging_steps: expected a positive integer, got 0"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit: expected a positive integer, got 0"),
        (["--learning_rate", "-1"], "--learning_rate: expected a positive learning rate per 512 images, got -1.0"),
        (["--push_to_hub"], "--push_to_hub: expected --hub_model_id"),
        (["--mixed_precision", "fp16"], "--mixed_precision fp16: expected a GPU"),
        (["--lr_scheduler_type", "cosin"], "--lr_scheduler_type: expected one of"),
        (["--report_to", "tensorbord"], "--report_to: expected one of"),
        (["--resume_from_checkpoint", "latest"], "--resume_from_checkpoint latest: no complete checkpoint"),
        (["--model", "timm"], "--model: expected 'vit_custom' or 'timm:<name>', got 'timm'"),
        (["--optim", "sgd"], "--optim: expected adamw or muon, got 'sgd'"),
    ],
)
def test_bad_settings_are_refused_before_any_data_is_read(tmp_path, flags, message):
    """The data folders do not exist: a message about the flag, not about the data, shows it was checked first."""
    missing = tmp_path / "no_such_folder"
    command = [sys.executable, str(ROOT / "scripts/train.py"), "--train_dir", str(missing), "--validation_dir",
               str(missing), "--output_dir", str(tmp_path / "run"), "--report_to", "none", *flags]  # fmt: skip
    result = fails(command, timeout=120)
    assert message in result.stderr
    assert "no_such_folder" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_torch_compile_without_a_cxx_compiler_is_refused_before_any_data_is_read(tmp_path):
    """Inductor would fail at the first training step, after the data is decoded; the run stops at the flag."""
    missing = tmp_path / "no_such_folder"
    command = [sys.executable, str(ROOT / "scripts/train.py"), "--train_dir", str(missing), "--validation_dir",
               str(missing), "--output_dir", str(tmp_path / "run"), "--report_to", "none"]  # fmt: skip
    result = fails([*command, "--torch_compile"], timeout=120, env={**environment(), "CXX": "no-such-compiler++"})
    assert "--torch_compile: torch.compile's inductor builds its kernels with a C++ compiler and found none" in (
        result.stderr
    )
    assert "CXX='no-such-compiler++'" in result.stderr
    assert "no_such_folder" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_data_problems_are_named(image_folders, tmp_path):
    missing = tmp_path / "missing"
    result = fails(train_command((missing, image_folders[1]), tmp_path / "a"))
    assert f"--train_dir {missing}: expected a folder of class subfolders, got no folder" in result.stderr

    train = tmp_path / "train"
    write_split(train, [4, 4, 4], seed=0)
    (train / "purple").mkdir()
    result = fails(train_command((train, image_folders[1]), tmp_path / "b"))
    assert "expected every class folder to hold images, got empty ones ['purple']" in result.stderr

    (train / "purple").rmdir()
    broken = train / "red" / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "c"
    result = run(
        train_command((train, image_folders[1]), out, "--max_train_steps", "2", "--max_bad_image_fraction", "0.5")
    )
    assert f"file {broken}" in result.stderr


def test_prepared_copy_never_has_more_shards_than_images_and_is_written_whole(tmp_path):
    data = tmp_path / "data"
    write_split(data / "train", [4, 3, 3], seed=0)
    write_split(data / "validation", [1, 1, 1], seed=1)
    out = tmp_path / "prepared"
    command = [sys.executable, str(ROOT / "scripts/prepare_dataset.py"), "--train_dir", str(data / "train"),
               "--validation_dir", str(data / "validation"), "--output_dir", str(out)]  # fmt: skip
    run(command)
    assert sorted(p.name for p in out.iterdir()) == [f"train-{i:05d}-of-00010.parquet" for i in range(10)] + [
        f"validation-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    # A failure half-way (an image folder without labels for validation) leaves no partial copy behind.
    Image.new("RGB", (8, 8)).save(data / "validation" / "stray.png")
    failed = tmp_path / "failed"
    fails([*command[:-1], str(failed)])
    assert not failed.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_as_latest(image_folders, tmp_path):
    """The run is killed while the second checkpoint's weights are being written (a model of 3M parameters, so the
    write takes long enough to be caught in the middle)."""
    out = tmp_path / "run"
    wide = TINY.replace("hidden_size=32", "hidden_size=384").replace("intermediate_size=64", "intermediate_size=1536")
    args = ("--per_device_train_batch_size", "8", "--checkpointing_steps", "2", "--num_train_epochs", "2",
            "--checkpoints_total_limit", "1", "--model_config_overrides", wide)  # fmt: skip
    staging = out / "checkpoints" / ".tmp_step_4"
    kill_once_exists(train_command(image_folders, out, *args), staging / "model.safetensors", poll_s=0.0005)
    assert not (out / "checkpoints" / "step_4").exists(), "the kill came after the checkpoint was complete"
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]
    result = run(train_command(image_folders, out, *args, "--resume_from_checkpoint", "latest"))
    assert f"Resumed from {out / 'checkpoints' / 'step_2'} at step 2" in result.stderr
    assert events(out, "summary")[-1]["total_steps"] == 12


def test_a_failing_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(finished, image_folders, tmp_path):
    """The finished run is extended while the file system refuses the next checkpoint (an immutable folder where it
    must be staged, which even root cannot write into)."""
    out = copy_of(finished, tmp_path)
    blocked = out / "checkpoints" / ".tmp_step_6"
    blocked.mkdir()
    if subprocess.run(["chattr", "+i", str(blocked)], capture_output=True).returncode != 0:
        pytest.skip("this file system cannot make a folder immutable (chattr +i)")
    try:
        result = fails(train_command(image_folders, out, *BASE, "--max_train_steps", "8", "--resume_from_checkpoint",
                                     "latest"))  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
    assert f"Could not write the checkpoint of step 6 to {blocked}" in result.stderr
    assert f"The previous checkpoint {out / 'checkpoints' / 'step_4'} is intact" in result.stderr
    assert [p.name for p in list_checkpoints(out)] == ["step_2", "step_4"]
    assert training_state(out, 4)["step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_resume_on_another_process_count_continues_the_same_global_order(image_folders, tmp_path, before, after):
    """Global batch 8 as 2 processes x 4, or 1 process x 4 x 2 accumulation steps: the same samples make each step
    (augmentation is seeded per sample, erasing is off), so a run resumed on the other layout ends with the weights
    of the uninterrupted one, up to the order of float additions."""
    layouts = {1: ("--gradient_accumulation_steps", "2"), 2: ()}
    args = ("--num_train_epochs", "2", "--checkpointing_steps", "4", "--checkpoints_total_limit", "5",
            "--random_erasing", "0")  # fmt: skip
    reference = tmp_path / "reference"
    run(train_command(image_folders, reference, *args, *layouts[before], processes=before))

    resumed = tmp_path / "resumed"
    shutil.copytree(reference / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    result = run(train_command(image_folders, resumed, *args, *layouts[after], "--resume_from_checkpoint", "latest",
                               processes=after))  # fmt: skip
    assert "at step 4 (epoch 0, batch " in result.stderr
    expected, got = final_weights(reference), final_weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=2e-5, msg=name)
    assert lr_by_step(resumed) == {step: lr for step, lr in lr_by_step(reference).items() if step > 4}


def test_a_refused_resume_changes_nothing_and_names_what_differs(finished, image_folders, tmp_path):
    """Extending the finished run at another global batch, with another recipe or another optimizer is refused before
    anything in the run directory changes, naming what differs."""
    out = copy_of(finished, tmp_path)
    record = {name: (out / name).read_bytes() for name in ("run_config.json", "metrics.jsonl")}
    resume = (*BASE, "--max_train_steps", "6", "--resume_from_checkpoint", "latest")

    result = fails(train_command(image_folders, out, *resume, "--per_device_train_batch_size", "4"))
    assert "the checkpoint was trained at global batch 8 (1 processes), this run's is 4" in result.stderr
    assert "the learning rate, the schedule and the samples of each step would differ" in result.stderr
    result = fails(train_command(image_folders, out, *resume, "--learning_rate", "0.05", "--weight_decay", "0.1",
                                 "--layer_decay", "0.75"))  # fmt: skip
    changed = "--layer_decay None -> 0.75; --learning_rate 0.1 -> 0.05; --weight_decay 0.05 -> 0.1"
    assert f"the checkpoint was trained with other settings ({changed})" in result.stderr
    result = fails(train_command(image_folders, out, *resume, "--optim", "muon"))
    refusal = "--optim muon: the checkpoint was trained with adamw, whose state this optimizer cannot continue"
    assert refusal in result.stderr and "resume with --optim adamw" in result.stderr
    assert {name: (out / name).read_bytes() for name in record} == record
    assert [p.name for p in list_checkpoints(out)] == ["step_2", "step_4"]

    # A checkpoint that did not record its settings is still refused by its optimizer's groups.
    state_file = out / "checkpoints" / "step_4" / TRAINING_STATE
    state_file.write_text(json.dumps({k: v for k, v in json.loads(state_file.read_text()).items() if k != "settings"}))
    result = fails(train_command(image_folders, out, *resume, "--layer_decay", "0.75"))
    refusal = "the checkpoint's optimizer has param groups of [10, 22] tensors, this run's of [1, 3, 4, 8, 4, 8, 1, 3]"
    assert refusal in result.stderr and "(another --layer_decay, other trainable weights)" in result.stderr
    assert len(events(out, "summary")) == 1


def test_resuming_an_earlier_versions_muon_checkpoint_is_refused_saying_why(image_folders, tmp_path):
    """Until its training state recorded the param groups, Muon also stepped the convolutional stem: such a
    checkpoint's state does not fit this version's groups, and torch's own error would not say why."""
    out = tmp_path / "run"
    run(train_command(image_folders, out, "--optim", "muon", "--max_train_steps", "2"))
    (checkpoint,) = (out / "checkpoints").iterdir()
    state = json.loads((checkpoint / "training_state.json").read_text())
    del state["optimizer_groups"]
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    result = fails(train_command(image_folders, out, "--optim", "muon", "--max_train_steps", "4",
                                 "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert "the checkpoint's Muon state is from an earlier version, which did not record its param groups" in (
        result.stderr
    )
    assert [path.name for path in (out / "checkpoints").iterdir()] == [checkpoint.name]
    assert len(events(out, "summary")) == 1


@pytest.mark.slow
def test_a_dead_process_stops_the_other_within_the_timeout(image_folders, tmp_path):
    """Rank 1 is SIGKILLed in the middle of training: the run ends, with an error, well within --ddp_timeout."""
    out = tmp_path / "run"
    command = train_command(image_folders, out, "--num_train_epochs", "50", "--ddp_timeout", "30", processes=2)
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints").is_dir():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.1)
        workers = [
            p for p in psutil.Process(process.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())
        ]
        (rank_1,) = [p for p in workers if p.environ().get("RANK") == "1"]
        rank_1.kill()
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        assert time.monotonic() - killed < 30
        assert process.returncode != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "final").exists()


# 12 steps (2 epochs of 6) with checkpoints every 3 and an EMA: the eager run the compiled one is held against, and
# the timeline an earlier checkpoint is resumed from (on a copy).
TWELVE = ("--per_device_train_batch_size", "8", "--checkpointing_steps", "3", "--checkpoints_total_limit", "10",
          "--ema_decay", "0.9")  # fmt: skip


@pytest.fixture(scope="module")
def twelve_steps(image_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twelve_steps") / "run"
    run(train_command(image_folders, out, *TWELVE, "--max_train_steps", "12"))
    return out


@pytest.mark.slow
def test_torch_compile_trains_saves_and_resumes_like_eager(twelve_steps, image_folders, tmp_path):
    """Compiled in place on CPU: the same losses as eager within float tolerance, best/ and final/ saved as plain
    model folders, and a compiled run resumed from its mid-run checkpoint."""
    eager, compiled = twelve_steps, tmp_path / "compiled"
    run(train_command(image_folders, compiled, *TWELVE, "--max_train_steps", "12", "--torch_compile"))
    eager_losses = [e["loss"] for e in events(eager, "train")]
    assert [e["loss"] for e in events(compiled, "train")] == pytest.approx(eager_losses, rel=1e-4)
    # The first step's and the first evaluation's compilation is timed apart from the steps that follow it.
    seconds = events(compiled, "summary")[0]["phase_seconds"]
    assert seconds["compile"] > 5 * seconds["forward_backward"] > 0
    assert events(eager, "summary")[0]["phase_seconds"]["compile"] == 0
    for folder in ("best", "final", "final_ema"):
        weights = load_file(compiled / folder / "model.safetensors")
        assert not any("_orig_mod" in name for name in weights)
        for name, value in load_file(eager / folder / "model.safetensors").items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-4, msg=name)

    shutil.rmtree(compiled / "final")
    for later in list_checkpoints(compiled)[1:]:
        shutil.rmtree(later)
    result = run(train_command(image_folders, compiled, *TWELVE, "--max_train_steps", "12", "--torch_compile",
                               "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert "at step 3" in result.stderr
    assert events(compiled, "summary")[-1]["total_steps"] == 12
    assert (compiled / "final" / "model.safetensors").is_file()


def test_resuming_from_an_earlier_checkpoint_sets_the_later_timeline_aside(twelve_steps, image_folders, tmp_path):
    """Resumed by path from step_3 for 8 steps, then from latest for 10: latest is the new timeline's step_8, not the
    abandoned step_12, and the abandoned models are kept apart."""
    out = copy_of(twelve_steps, tmp_path)
    assert [p.name for p in list_checkpoints(out)] == ["step_3", "step_6", "step_9", "step_12"]

    shorter = run(train_command(image_folders, out, *TWELVE, "--max_train_steps", "8",
                                "--resume_from_checkpoint", str(out / "checkpoints" / "step_3")))  # fmt: skip
    assert "Shortening the run from 12 to 8 optimizer steps" in shorter.stderr
    aside = out / "checkpoints" / "abandoned_after_step_3"
    assert sorted(p.name for p in aside.iterdir()) == ["best", "final", "final_ema", "step_12", "step_6", "step_9"]
    assert [p.name for p in list_checkpoints(out)] == ["step_3", "step_6", "step_8"]
    assert events(out, "summary")[-1]["total_steps"] == 8
    assert [e["step"] for e in events(out, "eval")] == [6, 8]  # the abandoned evaluations left the log
    assert events(out, "summary")[-1]["best_step"] in (6, 8) and (out / "best").is_dir()

    extended = run(train_command(image_folders, out, *TWELVE, "--max_train_steps", "10",
                                 "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert "Resumed from" in extended.stderr and "step_8 at step 8" in extended.stderr
    assert "Extending the run from 8 to 10 optimizer steps" in extended.stderr
    assert events(out, "summary")[-1]["total_steps"] == 10
    assert [e["step"] for e in events(out, "train")] == list(range(1, 11))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("flat", "--train_dir {train}: expected a folder of class subfolders ({train}/cat/1.jpg"),
        ("missing", "--train_dir {train}: expected a folder of class subfolders, got no folder"),
    ],
)
def test_a_refusal_under_accelerate_launch_is_one_line_once(tmp_path, layout, message):
    """The reason, on one line, printed once, last, with no traceback (accelerate launch -q, as the README says)."""
    train = tmp_path / "images"
    if layout == "flat":
        train.mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8)).save(train / f"{i}.png")
    result = fails(train_command((train, train), tmp_path / "run", "--max_train_steps", "1", launcher=ACCELERATE))
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: " + message.format(train=train))
    assert result.stderr.rstrip().endswith(lines[0]) and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_checkpoint_write_failing_on_one_process_stops_every_process_at_once(image_folders, tmp_path):
    """Two processes; only process 1's part of the step-4 checkpoint (its RNG state) cannot be written: an immutable
    file stands where it goes. Both stop at once with process 1's reason, well within --ddp_timeout."""
    out = tmp_path / "run"
    args = ("--checkpointing_steps", "2", "--ddp_timeout", "1800")
    run(train_command(image_folders, out, *args, "--max_train_steps", "2", processes=2))
    staging = out / "checkpoints" / ".tmp_step_4"
    staging.mkdir()
    blocked = staging / "random_states_1.pkl"
    blocked.write_bytes(b"")
    if subprocess.run(["chattr", "+i", str(blocked)], capture_output=True).returncode != 0:
        pytest.skip("this file system cannot make a file immutable (chattr +i)")
    start = time.monotonic()
    try:
        result = fails(train_command(image_folders, out, *args, "--max_train_steps", "6",
                                     "--resume_from_checkpoint", "latest", processes=2), timeout=240)  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
    assert time.monotonic() - start < 240
    assert f"Could not write the checkpoint of step 4 to {staging} (process 1: " in result.stderr
    assert f"The previous checkpoint {out / 'checkpoints' / 'step_2'} is intact" in result.stderr
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]
