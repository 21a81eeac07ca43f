"""FSDP2 launched for real on 2 CPU processes with the shipped config: the model and its EMA really sharded, the same
losses as DDP, a stopped run resumed from its sharded checkpoint, gathered folders that load as remote code."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest
import torch
from launch import TINY, environment, events, execute, run, train_command
from safetensors.torch import load_file

# 6 steps of 2 processes x 4 images (one epoch of the 48), checkpoints at steps 3 (mid-epoch) and 6; EMA, mixup and
# drop-path on, so that the comparisons also cover each process's own randomness and its restored RNG state.
ARGS = ("--max_train_steps", "6", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5", "--ema_decay",
        "0.9", "--mixup", "0.8", "--model_config_overrides", TINY + ",drop_path_rate=0.1")  # fmt: skip

# Runs in `python -I`: each gathered folder loads as remote code, and its logits equal those of the trained model,
# read back from the sharded checkpoint of the last step (weights the run never gathered itself).
LOADER = """
import json, sys
import torch
import torch.distributed.checkpoint as dcp
from torch.func import functional_call
from transformers import AutoModelForImageClassification

run, checkpoint = sys.argv[1], sys.argv[2]
report = {}
for folder, shards in (("final", "pytorch_model_fsdp_0"), ("final_ema", "pytorch_model_fsdp_1")):
    model = AutoModelForImageClassification.from_pretrained(f"{run}/{folder}", trust_remote_code=True).eval()
    trained = {name: torch.empty_like(value) for name, value in model.state_dict().items()}
    dcp.load({"model": trained}, checkpoint_id=f"{checkpoint}/{shards}")
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, expected = model(pixels).logits, functional_call(model, trained, (pixels,)).logits
    report[folder] = {"class": type(model).__name__, "equal": torch.equal(logits, expected),
                      "std": float(logits.std())}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def fsdp_run(image_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    run(train_command(image_folders, out, *ARGS, processes=2, fsdp=True))
    return out


def test_fsdp_shards_the_model_and_saves_gathered_folders(fsdp_run, tmp_path):
    config = json.loads((fsdp_run / "run_config.json").read_text())
    assert config["distributed_type"] == "FSDP"
    held, total = config["parameters_per_process"], config["num_parameters"]
    assert sum(held) == total and all(0.4 * total < count < 0.6 * total for count in held)  # about half each
    assert events(fsdp_run, "summary")[0]["ranks_in_sync"] is True
    checkpoint = fsdp_run / "checkpoints" / "step_6"
    for shards in ("pytorch_model_fsdp_0", "pytorch_model_fsdp_1", "optimizer_0"):  # model, EMA, optimizer
        assert sorted(p.name for p in (checkpoint / shards).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(fsdp_run), str(checkpoint)],
        cwd=tmp_path, env={**environment(), "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    for folder in ("final", "final_ema"):
        assert report[folder]["class"] == "ViTCustomForImageClassification"
        assert report[folder]["equal"] is True
    assert report["final"]["std"] != report["final_ema"]["std"]  # the EMA is its own model
    auto_map = json.loads((fsdp_run / "final" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_vit_custom.ViTCustomForImageClassification"
    best, final = (load_file(fsdp_run / folder / "model.safetensors") for folder in ("best", "final"))
    assert all(torch.equal(best[name], final[name]) for name in final)  # the one evaluation, at step 6


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_where_it_stopped(fsdp_run, image_folders, tmp_path):
    """The same seed under DDP: the same losses (fp32), weights and EMA within summation-order rounding. A copy of
    the run as stopped at step 3 (its sharded checkpoint, nothing else) resumed: the same steps, the same weights."""
    ddp = tmp_path / "ddp"
    run(train_command(image_folders, ddp, *ARGS, processes=2))
    fsdp_losses = [e["loss"] for e in events(fsdp_run, "train")]
    assert fsdp_losses == pytest.approx([e["loss"] for e in events(ddp, "train")], rel=1e-6, abs=0)
    for folder in ("final", "final_ema"):
        sharded, replicated = (load_file(out / folder / "model.safetensors") for out in (fsdp_run, ddp))
        assert sharded.keys() == replicated.keys()
        for name in sharded:
            torch.testing.assert_close(sharded[name], replicated[name], rtol=0, atol=1e-5)
    assert events(fsdp_run, "eval")[-1]["eval_ema_top1"] == events(ddp, "eval")[-1]["eval_ema_top1"]
    config = json.loads((ddp / "run_config.json").read_text())
    assert config["distributed_type"] == "MULTI_CPU"
    assert config["parameters_per_process"] == [config["num_parameters"]] * 2  # DDP: every process holds all
    assert events(ddp, "summary")[0]["ranks_in_sync"] is True

    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp_run / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    run(train_command(image_folders, resumed, *ARGS, "--resume_from_checkpoint", "latest", processes=2, fsdp=True))
    assert [e["loss"] for e in events(resumed, "train")] == fsdp_losses[3:]
    for folder in ("final", "final_ema"):
        expected, got = (load_file(out / folder / "model.safetensors") for out in (fsdp_run, resumed))
        assert all(torch.equal(expected[name], got[name]) for name in expected), folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "message"),
    [
        # Under FSDP every forward pass is a collective, and a stream's evaluation shards are uneven.
        ("--streaming", "--streaming with FSDP: expected a table, got a stream"),
        ("--channels_last", "--channels_last with FSDP: expected it off, got on"),
        ("--optim=muon", "--optim with FSDP: expected adamw, got 'muon'"),
    ],
)
def test_fsdp_refuses_what_it_cannot_run_before_reading_data(image_folders, tmp_path, flag, message):
    command = train_command(image_folders, tmp_path / "run", flag, "--max_train_steps", "2", processes=2, fsdp=True)
    result = execute(command, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_fsdp_on_cpu_refuses_an_accelerate_it_is_not_tested_with():
    """The CPU FSDP switch sets accelerate's internal state: another release stops it loudly, naming both versions."""
    from modeling_vit_custom.training.sharding import FSDP_ON_CPU_ACCELERATE, check_fsdp_on_cpu_accelerate

    check_fsdp_on_cpu_accelerate(accelerate.__version__)
    with pytest.raises(RuntimeError, match=r"expected accelerate<1\.17,>=1\.15, .* got accelerate 2\.0\.0"):
        check_fsdp_on_cpu_accelerate("2.0.0")
    assert "1.17.0" not in FSDP_ON_CPU_ACCELERATE
