"""Two machines simulated on localhost (2 launchers x 1 CPU process, gloo) train what one machine with 2 processes
trains."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from launch import LAUNCH, ROOT, environment, events, final_weights, run, train_command

ARGS = ("--num_train_epochs", "2")
# The shipped two-machine config with what differs here: the address, 2 processes in all, and fp32 (the config's bf16
# would autocast on the CPU, and the run it is compared with is fp32).
CONFIG_OVERRIDES = ("--config_file", str(ROOT / "configs/accelerate/multi_node.yaml"), "--mixed_precision", "no")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_command(
    image_folders: tuple[Path, Path], output_dir: Path, rank: int, port: int, launch_with: str
) -> list[str]:
    """`accelerate launch` as machine `rank` of 2 runs it, each machine with one process, from flags or from the
    shipped config; the rest of the command is `train_command`'s, so the flags are those of the one-machine run."""
    command = train_command(image_folders, output_dir, *ARGS, processes=2)
    script = command.index(str(ROOT / "scripts/train.py"))
    setup = ["--multi_gpu", "--num_machines", "2"] if launch_with == "flags" else list(CONFIG_OVERRIDES)
    launch = [*LAUNCH, *setup, "--num_processes", "2", "--machine_rank", str(rank),
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]  # fmt: skip
    return launch + command[script:]


@pytest.fixture(scope="module")
def one_machine(image_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_machine") / "run"
    run(train_command(image_folders, out, *ARGS, processes=2))
    assert [e["eval_samples"] for e in events(out, "eval")] == [101, 101]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("launch_with", ["flags", "config"])
def test_two_machines_train_what_one_machine_trains(one_machine, image_folders, tmp_path, launch_with):
    """Same world size, same ranks, same gloo all-reduce: weights and logged losses bit-identical to one machine's.
    Both machine ranks share one output_dir (a shared file system, which checkpoints need: every rank writes its RNG
    state into them); only the global main process writes the rest."""
    two_machines = tmp_path / "run"
    port = free_port()
    machines = [
        subprocess.Popen(machine_command(image_folders, two_machines, rank, port, launch_with), env=environment(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = []
    try:
        for machine in machines:
            outputs.append(machine.communicate(timeout=600))
    finally:
        for machine in machines:
            if machine.poll() is None:  # a launcher whose peer failed waits for it: end it with its workers
                os.killpg(machine.pid, signal.SIGKILL)
                machine.wait()
    for rank, (machine, (stdout, stderr)) in enumerate(zip(machines, outputs, strict=True)):
        assert machine.returncode == 0, f"machine_rank {rank}:\n{stdout[-2000:]}\n{stderr[-6000:]}"

    summary = events(two_machines, "summary")
    assert len(summary) == 1 and summary[0]["ranks_in_sync"] is True
    assert [e["eval_samples"] for e in events(two_machines, "eval")] == [101, 101]
    last_checkpoint = two_machines / "checkpoints" / "step_12"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in last_checkpoint.iterdir()}
    expected, trained = final_weights(one_machine), final_weights(two_machines)
    assert expected.keys() == trained.keys()
    for name in expected:
        assert torch.equal(expected[name], trained[name]), name
    assert [e["loss"] for e in events(two_machines, "train")] == [e["loss"] for e in events(one_machine, "train")]
