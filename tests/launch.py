"""Launch `scripts/train.py` as its users do (accelerate, CPU) on a tiny imagefolder: helpers shared by the tests."""

import functools
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from modeling_vit_custom.training.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# The `accelerate` command, as the README runs it. Its CLI imports every subcommand before parsing (in accelerate 1.16,
# `estimate` pulls in timm, torchvision's models and torch._dynamo), which costs each launch seconds; the tests launch
# with the same launcher run as a module, and the tests of the README's own commands with the command itself.
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
TINY = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
CLASSES = ["red", "green", "blue"]


def write_split(root: Path, per_class: list[int], seed: int):
    """An imagefolder whose classes differ by colour, so a tiny model learns them in a few steps."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(zip(CLASSES, per_class, strict=True)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 90, size=(20, 20, 3), dtype=np.uint8)
            pixels[..., c] += 140
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def write_multi_label_split(path: Path, count: int, seed: int):
    """A parquet file whose `labels` column (Sequence(ClassLabel)) lists the colours of the squares in each image: each
    of CLASSES is present with probability 1/2, as an 8x8 square in its own random quadrant of a dark 20x20 image."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        pixels = rng.integers(0, 60, size=(20, 20, 3), dtype=np.uint8)
        present = [c for c in range(len(CLASSES)) if rng.random() < 0.5]
        for c, quadrant in zip(present, rng.permutation(4), strict=False):
            top, left = 10 * (quadrant // 2) + 1, 10 * (quadrant % 2) + 1
            pixels[top : top + 8, left : left + 8] = 0
            pixels[top : top + 8, left : left + 8, c] = 230
        images.append(Image.fromarray(pixels))
        labels.append(present)
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=CLASSES))}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": images, "labels": labels}, features=features).to_parquet(str(path))


def train_command(
    data: tuple[Path, Path] | Path,
    output_dir: Path,
    *extra: str,
    processes: int = 1,
    fsdp: bool = False,
    launcher: list[str] = LAUNCH,
) -> list[str]:
    """The training command on (train, validation) image folders or parquet files, or on a dataset saved with
    `save_to_disk`; `launcher`: ACCELERATE for the `accelerate launch` command itself."""
    if isinstance(data, Path):
        source = ("--dataset_path", str(data))
    else:
        kind = "file" if data[0].suffix == ".parquet" else "dir"
        source = (f"--train_{kind}", str(data[0]), f"--validation_{kind}", str(data[1]))
    if fsdp:  # the shipped FSDP2 config on CPU processes, in fp32
        launch = [*launcher, "-q", "--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"),
                  "--num_processes", str(processes), "--mixed_precision", "no", "--main_process_port",
                  "0"]  # fmt: skip
    elif processes == 1:
        launch = [*launcher, "-q", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml")]
    else:
        launch = [
            *launcher,
            "-q",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            "0",
        ]
    return [
        *launch,
        str(ROOT / "scripts/train.py"),
        *source,
        "--model_config_overrides", TINY,
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "0.1",
        "--num_warmup_steps", "3",
        "--logging_steps", "1",
        "--num_workers", "0",
        "--report_to", "none",
        "--seed", "7",
        *extra,
    ]  # fmt: skip


def environment() -> dict:
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = execute(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def execute(
    command: list[str], timeout: float = 600, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Runs `command` in environment(), or `env`, and returns its exit code and output, as subprocess.run does.

    A script run by Python, directly or through accelerate's single-process launcher, runs in a new process forked
    from a server that has imported the libraries every script imports (torch, transformers, timm, datasets,
    accelerate, matplotlib: most of a tiny run's time here), with the command line, working folder, environment and
    exit code it would have had: accelerate's own code reads the launch flags and gives the command and environment
    its launcher would run. Anything else (several processes, `python -c`), and any command given its own `env` (the
    libraries read some variables as they import), runs in a new interpreter."""
    plain = None if env is not None else _as_script_command(command)
    if plain is None:
        env = environment() if env is None else env
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    argv, env = plain
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        process = _forkserver().Process(target=_run_script, args=(argv, env, str(cwd or os.getcwd()), out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(command, process.exitcode, out.read_text(), err.read_text())


# What every script imports, loaded once by the fork server, which reads environment() as it starts.
PRELOAD = ["torch", "torchvision.transforms.v2", "timm.data", "timm.utils", "transformers.modeling_utils",
           "transformers.optimization", "datasets", "accelerate", "matplotlib.pyplot"]  # fmt: skip


@functools.cache
def _forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with mock.patch.dict(os.environ, environment(), clear=True):
        multiprocessing.forkserver.ensure_running()
    return context


def _as_script_command(command: list[str]) -> tuple[list[str], dict] | None:
    """(python, script, args) and its environment for a script run by Python or by accelerate's single-process
    launcher; None for anything else."""
    if command[:3] == LAUNCH:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_simple_launcher_cmd_env

        with mock.patch.dict(os.environ, environment(), clear=True):
            args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
            if args.multi_gpu or args.use_fsdp or args.use_deepspeed or args.num_processes > 1:
                return None
            argv, env = prepare_simple_launcher_cmd_env(args)
    elif command[0] == sys.executable and command[1].endswith(".py"):
        argv, env = command, environment()
    else:
        return None
    return (argv, env) if argv[0] == sys.executable and argv[1].endswith(".py") else None


def _run_script(argv: list[str], env: dict, cwd: str, stdout: Path, stderr: Path) -> None:
    """In the forked process: what `python script args` would do, then exit with its code."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    if "OMP_NUM_THREADS" in env:  # what torch reads from it as it starts
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = argv[1:]
    sys.path.insert(0, str(Path(argv[1]).resolve().parent))
    code = 0
    try:
        runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def kill_once_exists(command: list[str], path: Path, poll_s: float = 0.05) -> None:
    """Start `command` and SIGKILL it (the launcher and its workers) as soon as `path` exists."""
    process = subprocess.Popen(
        command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, f"the run ended before {path} existed"
        time.sleep(poll_s)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def events(output_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(output_dir / "metrics.jsonl") if e["event"] == kind]


def lr_by_step(output_dir: Path) -> dict[int, float]:
    return {e["step"]: e["lr"] for e in events(output_dir, "train")}


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")


REMOTE_LOGITS = r"""
import sys
sys.modules["modeling_vit_custom"] = None  # the folder must load through its own code, not the installed package
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

folder, inputs_path, outputs_path = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    logits = model(load_file(inputs_path)["pixel_values"]).logits
save_file({"logits": logits.contiguous()}, outputs_path)
"""


def remote_logits(folder: Path, pixel_values: torch.Tensor, workdir: Path) -> torch.Tensor:
    """Logits of `folder` loaded with AutoModelForImageClassification and trust_remote_code in a clean `python -I`
    process (offline, its own HF_HOME, the package not importable)."""
    workdir.mkdir(parents=True, exist_ok=True)
    save_file({"pixel_values": pixel_values.contiguous()}, workdir / "inputs.safetensors")
    env = {key: value for key, value in environment().items() if not key.startswith("PYTHON")}
    env["HF_HOME"] = str(workdir / "hf_home")
    command = [sys.executable, "-I", "-c", REMOTE_LOGITS, str(folder), "inputs.safetensors", "outputs.safetensors"]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(workdir / "outputs.safetensors")["logits"]
