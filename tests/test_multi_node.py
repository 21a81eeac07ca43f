"""Two machines simulated on localhost (2 launchers x 1 CPU process, gloo) train what one machine with 2 processes
trains."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from launch import ACCELERATE, ROOT, environment, events, final_weights, run, train_command

ARGS = ("--num_train_epochs", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_command(image_folders: tuple[Path, Path], output_dir: Path, rank: int, port: int) -> list[str]:
    """`accelerate launch` as machine `rank` of 2 runs it, each machine with one process; the rest of the command is
    `train_command`'s, so the flags are those of the one-machine run."""
    command = train_command(image_folders, output_dir, *ARGS, processes=2)
    script = command.index(str(ROOT / "scripts/train.py"))
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
              "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
              "--main_process_port", str(port)]  # fmt: skip
    return launch + command[script:]


@pytest.mark.slow
def test_two_machines_train_what_one_machine_trains(image_folders, tmp_path):
    """Same world size, same ranks, same gloo all-reduce: the weights are bit-identical to one machine's, and both
    machine ranks share one output_dir, where only the global main process writes."""
    one_machine = tmp_path / "one_machine"
    run(train_command(image_folders, one_machine, *ARGS, processes=2))

    two_machines = tmp_path / "two_machines"
    port = free_port()
    machines = [
        subprocess.Popen(
            machine_command(image_folders, two_machines, rank, port),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
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
    assert [e["eval_samples"] for e in events(one_machine, "eval")] == [101, 101]
    expected, trained = final_weights(one_machine), final_weights(two_machines)
    assert expected.keys() == trained.keys()
    for name in expected:
        assert torch.equal(expected[name], trained[name]), name
    assert [e["loss"] for e in events(two_machines, "train")] == [e["loss"] for e in events(one_machine, "train")]
