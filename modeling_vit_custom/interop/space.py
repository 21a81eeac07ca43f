"""A Gradio Space for a model repository: its folder (front matter, app.py, requirements.txt, this package's code and
example images), checked by starting the app locally and classifying an image through it."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from ..files import write_text

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DISTRIBUTION = "vit-custom"
# app.py loads the model from this local folder instead of the Hub when the variable is set (the check below).
LOCAL_MODEL_ENV = "VIT_CUSTOM_SPACE_MODEL"

APP = '''"""The Gradio demo of the model {repo_id} at revision {revision}, written by vit-custom's push_to_hub.py."""

import os
from pathlib import Path

from modeling_vit_custom.inference.demo import Classifier, build_app

MODEL_ID = "{repo_id}"
REVISION = "{revision}"  # the model's files are read at this revision only
# {env}: a local model folder in place of the repository (push_to_hub.py checks the Space
# with it before uploading).
local = os.environ.get("{env}")
classifier = Classifier.load(local or MODEL_ID, revision=None if local else REVISION)
examples = sorted(Path(__file__).with_name("examples").iterdir())
build_app(classifier, examples).launch()
'''


class SpaceError(RuntimeError):
    """The Space folder's app did not start, or did not classify an image as the model does."""


def requirements() -> list[str]:
    """What the Space installs: this package's dependencies and its `demo` extra, as the installed package
    declares them, less Gradio (the Space installs the front matter's `sdk_version`)."""
    from packaging.requirements import Requirement

    try:
        declared = [Requirement(line) for line in requires(DISTRIBUTION) or []]
    except PackageNotFoundError as error:
        raise RuntimeError(
            f"--space_dir: expected the {DISTRIBUTION} package installed (pip install -e .), got none"
        ) from error
    wanted = [r for r in declared if (r.marker is None or r.marker.evaluate({"extra": "demo"})) and r.name != "gradio"]
    return [str(Requirement(f"{r.name}{r.specifier}")) for r in wanted]


def write_space(
    folder: str | os.PathLike,
    repo_id: str,
    revision: str,
    examples: list[Path],
    title: str | None = None,
    license: str = "apache-2.0",
) -> Path:
    """Writes into the empty or new `folder` a Gradio Space that serves `repo_id` at `revision`: README.md (front
    matter), app.py, requirements.txt, a copy of this package's code (the page's code, run by app.py) and
    `examples/`."""
    if not examples:
        raise ValueError("examples: expected at least one example image for the Space, got none")
    import gradio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = SpaceCardData(
        title=title or repo_id.split("/")[-1],
        sdk="gradio",
        sdk_version=gradio.__version__,
        app_file="app.py",
        license=license,
        models=[repo_id],
        tags=["vit-custom", "image-classification"],
    )
    body = (
        f"\n# {data.title}\n\nTry [{repo_id}](https://huggingface.co/{repo_id}) (revision `{revision}`): upload an "
        "image and see its top classes, the class token's last-layer attention and the attention rollout over the "
        f"image, and the model's time. Written by vit-custom {version(DISTRIBUTION)}'s `push_to_hub.py --space_dir`; "
        "`modeling_vit_custom/` is that package's code, which `app.py` runs.\n"
    )
    SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}").save(folder / "README.md")
    write_text(folder / "app.py", APP.format(repo_id=repo_id, revision=revision, env=LOCAL_MODEL_ENV))
    write_text(folder / "requirements.txt", "".join(line + "\n" for line in requirements()))
    shutil.copytree(PACKAGE_DIR, folder / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "examples").mkdir()
    for path in examples:
        shutil.copyfile(path, folder / "examples" / Path(path).name)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SpaceError(
                f"app.py exited with code {process.returncode} before serving:\n{process.stderr.read()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SpaceError(f"app.py did not serve {url} within {timeout:.0f} s")


def verify_space(folder: str | os.PathLike, model_dir: str | os.PathLike, timeout: float = 300) -> dict:
    """Starts a copy of the Space's app.py (offline, its own HF_HOME, serving `model_dir` in place of the Hub
    repository) on 127.0.0.1, classifies its first example through the page's API with gradio_client, and checks
    the answer against the model's in this process. Returns {"image", "label", "score"}; raises SpaceError."""
    from gradio_client import Client, handle_file

    from ..inference.demo import Classifier

    folder = Path(folder)
    example = sorted((folder / "examples").iterdir())[0]
    expected = Classifier.load(model_dir)(example)
    with tempfile.TemporaryDirectory(prefix="vit-custom-space-") as tmp:
        copy = shutil.copytree(folder, Path(tmp) / "space")
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING", "PYTHON"))}
        env.update(
            HF_HUB_OFFLINE="1",
            HF_HOME=str(Path(tmp) / "hf_home"),
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(port),
            GRADIO_ANALYTICS_ENABLED="False",
            **{LOCAL_MODEL_ENV: str(Path(model_dir).resolve())},
        )
        # `python app.py` puts the Space's folder first on sys.path, as the Space runs it: its copy of the package
        # is the one imported.
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_until_serving(url, process, timeout)
            answer = Client(url, verbose=False).predict(handle_file(str(example)), api_name="/classify")
        finally:
            process.terminate()
            process.wait(timeout=30)
    label, status = answer[0] or {}, answer[-1]
    shown = {item["label"]: item["confidence"] for item in label.get("confidences", [])}
    if list(shown) != list(expected.scores) or any(abs(shown[k] - v) > 1e-4 for k, v in expected.scores.items()):
        raise SpaceError(
            f"{folder}: expected the Space to classify {example.name} as the model does, {expected.scores}, got "
            f"{shown} ({status})"
        )
    top = next(iter(shown), None)
    logger.info("checked the Space %s: %s -> %s (%s), %s", folder, example.name, top, shown.get(top), status)
    return {"image": example.name, "label": top, "score": shown.get(top), "status": status}
