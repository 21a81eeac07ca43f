"""Every script answers `--help` before it imports torch or the other heavy libraries (they load after the flags are
read), so help is instant on a busy machine; asserted on imports, not on seconds, so it cannot flake."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))
# Seconds each: torch and what stands on it, and gradio. transformers' own package (lazy, no torch) may load: the
# training flags are its HfArgumentParser dataclasses; its model code may not.
HEAVY = {"torch", "torchvision", "timm", "datasets", "accelerate", "gradio", "transformers.modeling_utils"}


def imported_modules(importtime: str) -> set[str]:
    """The modules `python -X importtime` reports, with each top-level package they belong to."""
    modules = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and not line.endswith("| package"):
            name = line.rsplit("|", 1)[1].strip()
            modules |= {name, name.split(".")[0]}
    return modules


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_help_answers_before_the_heavy_imports(script):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: ")
    assert HEAVY.isdisjoint(imported_modules(done.stderr)), sorted(HEAVY & imported_modules(done.stderr))
