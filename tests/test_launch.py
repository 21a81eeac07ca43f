"""The tests' launcher (tests/launch.py): a script runs in a process of its own, forked from a server that has imported
the libraries, with the command line, working folder, environment and exit code a new interpreter would have had."""

import json
import sys

from launch import LAUNCH, ROOT, environment, execute

SCRIPT = r"""
import json, os, sys
warm = "torch" in sys.modules  # imported before this line only by the fork server
print(json.dumps({"warm": warm, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "env": {k: os.environ.get(k) for k in ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "CXX")}}))
sys.exit(int(sys.argv[1]))
"""


def test_a_script_runs_warm_with_its_own_argv_folder_environment_and_exit_code(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    direct = execute([sys.executable, str(script), "3", "--flag"], cwd=tmp_path)
    assert direct.returncode == 3
    seen = json.loads(direct.stdout)
    assert seen["warm"] and seen["argv"] == [str(script), "3", "--flag"]
    assert seen["cwd"] == str(tmp_path) and seen["path0"] == str(tmp_path)

    launched = execute([*LAUNCH, "-q", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"), str(script), "0"])
    assert launched.returncode == 0
    seen = json.loads(launched.stdout)
    assert seen["warm"] and seen["env"]["ACCELERATE_USE_CPU"] == "True"
    assert seen["env"]["ACCELERATE_MIXED_PRECISION"] == "no"


def test_a_command_with_its_own_environment_gets_a_new_interpreter(tmp_path):
    """What the libraries read as they import (here, inductor's C++ compiler) must reach them."""
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    probed = execute([sys.executable, str(script), "0"], env={**environment(), "CXX": "no-such-compiler++"})
    seen = json.loads(probed.stdout)
    assert not seen["warm"] and seen["env"]["CXX"] == "no-such-compiler++"
