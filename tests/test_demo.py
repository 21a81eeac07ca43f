"""Tests of the Gradio demo: its answers against the pipeline and the model, every kind of model the tools load, the
script's refusals, and the page itself in headless Chromium."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from PIL import Image
from transformers import pipeline

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.inference.demo import Classifier, sample_photos

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Where the browser test leaves its screenshots (runs/ is ignored by git).
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO_ROOT / "runs" / "test-artifacts"))


def save_model(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    config = ViTCustomConfig(**{**TINY_CONFIG, "id2label": dict(enumerate(LABELS)), **overrides})
    ViTCustomForImageClassification(config).save_pretrained(folder)
    channels = config.num_channels
    PreprocessSettings(image_size=config.image_size, mean=(0.5,) * channels, std=(0.5,) * channels).to_image_processor(
    ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def photo() -> Path:
    (path,) = sample_photos()  # matplotlib's grace_hopper.jpg: a real photo, 512 x 600, shipped with a dependency
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "vit-custom-demo", image_size=64)


def test_answers_equal_the_pipeline_and_overlays_cover_the_input(model_dir, photo):
    classifier = Classifier.load(model_dir)
    prediction = classifier(photo)
    expected = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)(str(photo), top_k=5)
    assert list(prediction.scores) == [p["label"] for p in expected]
    assert list(prediction.scores.values()) == pytest.approx([p["score"] for p in expected], abs=1e-5)
    assert (prediction.label, prediction.score) == (
        expected[0]["label"],
        pytest.approx(expected[0]["score"], abs=1e-5),
    )
    # 64 x 64 input, shown 4x enlarged: every pixel of the crop is a 4 x 4 block.
    for image in (prediction.image, prediction.last_layer, prediction.rollout):
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert (prediction.image[::4, ::4] == prediction.image[3::4, 3::4]).all()
    assert 0 < prediction.milliseconds < 10_000


@pytest.mark.parametrize("kind", ["one_channel", "conv_stem_mean_pooled", "multi_label"])
def test_every_kind_of_model(tmp_path, photo, kind):
    overrides = {
        "one_channel": {"num_channels": 1},
        "conv_stem_mean_pooled": {"conv_stem_depth": 3, "pooling": "mean"},
        "multi_label": {"problem_type": "multi_label_classification"},
    }[kind]
    folder = save_model(tmp_path / kind, **overrides)
    classifier = Classifier.load(folder, threshold=0.5)
    prediction = classifier(photo)
    model = ViTCustomForImageClassification.from_pretrained(folder).eval()
    image = Image.open(photo).convert("L" if kind == "one_channel" else "RGB")
    with torch.no_grad():
        logits = model(**classifier.processor(image, return_tensors="pt")).logits[0]
    if kind == "multi_label":
        probabilities = logits.sigmoid()
        above = {LABELS[i]: float(p) for i, p in enumerate(probabilities) if p > 0.5}
        assert prediction.scores == pytest.approx(dict(sorted(above.items(), key=lambda item: -item[1])), abs=1e-5)
        assert 0 < len(above) < 10  # the threshold keeps some classes and drops others
        assert "above 0.5" in classifier.describe()
    else:
        probabilities = logits.softmax(-1)
        top = probabilities.topk(5)
        assert list(prediction.scores) == [LABELS[i] for i in top.indices]
        assert list(prediction.scores.values()) == pytest.approx(top.values.tolist(), abs=1e-5)
    if kind == "one_channel":
        assert (prediction.image[..., 0] == prediction.image[..., 2]).all()  # grayscale, shown as RGB
        assert "cannot serve it" in classifier.describe()
    if kind == "conv_stem_mean_pooled":
        assert prediction.last_layer is None and prediction.rollout.shape == (224, 224, 3)
        assert "rollout only" in classifier.describe()


def test_unreadable_file_is_named(model_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"^notes.png: expected an image file \(JPEG, PNG, ...\), could not read it$"):
        Classifier.load(model_dir)(bad)


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_script_answers_help_fast_and_refuses_bad_input_before_loading(tmp_path):
    start = time.perf_counter()
    process = run_demo("--help")
    assert process.returncode == 0 and "--share" in process.stdout and "MODEL" in process.stdout
    assert time.perf_counter() - start < 2
    process = run_demo(str(tmp_path), "--port", "70000")
    assert process.returncode == 2 and "--port: expected a port number in 1-65535, got 70000" in process.stderr
    process = run_demo(str(tmp_path))
    assert process.returncode == 1
    assert f"MODEL: expected a saved model folder with config.json, got {tmp_path}" in process.stderr


def test_gradio_is_imported_only_by_the_demo():
    """The package, every module in it but the demo, and every other script import without Gradio."""
    code = f"""
import importlib, pkgutil, runpy, sys
import modeling_vit_custom
for module in pkgutil.walk_packages(modeling_vit_custom.__path__, "modeling_vit_custom."):
    if module.name != "modeling_vit_custom.inference.demo":
        importlib.import_module(module.name)
from pathlib import Path
for script in sorted(Path({str(REPO_ROOT / "scripts")!r}).glob("*.py")):
    if script.name != "demo.py":
        runpy.run_path(str(script), run_name="not_main")
assert "gradio" not in sys.modules, "imported gradio"
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0 and process.stdout.strip() == "ok", process.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium or chromedriver not found: install Debian's chromium and chromium-driver (make setup)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def demo_url(model_dir, browser):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), str(model_dir), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def upload(browser, url: str, path: Path, timeout: float = 60) -> str:
    """Opens the page, uploads `path` and returns the status line once the answer is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, timeout).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))
    WebDriverWait(browser, timeout).until(lambda b: b.find_element(By.ID, "status").text.strip())
    return browser.find_element(By.ID, "status").text


@pytest.mark.slow
def test_page_classifies_a_photo_as_the_pipeline_does(browser, demo_url, model_dir, photo):
    from selenium.webdriver.common.by import By

    status = upload(browser, demo_url, photo)
    assert status.startswith("Model time: ") and " ms on cpu" in status, status
    top = browser.find_element(By.CSS_SELECTOR, "#prediction [data-testid=label-output-value]").text
    shown = browser.find_elements(By.CSS_SELECTOR, "#prediction meter")
    expected = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)(str(photo), top_k=5)
    assert top == expected[0]["label"]
    assert [m.get_attribute("aria-label") for m in shown] == [p["label"] for p in expected]
    assert [float(m.get_attribute("value")) for m in shown] == pytest.approx([p["score"] for p in expected], abs=1e-5)
    for element in ("seen", "last_layer", "rollout"):
        source = browser.find_element(By.CSS_SELECTOR, f"#{element} img").get_attribute("src")
        with urllib.request.urlopen(source, timeout=10) as response:
            image = Image.open(io.BytesIO(response.read()))
        assert image.size == (256, 256), element  # the 64 x 64 input, enlarged 4x
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "demo.png"))


@pytest.mark.slow
def test_page_says_when_an_upload_is_not_an_image(browser, demo_url, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"%PDF-1.7 not an image")
    status = upload(browser, demo_url, bad)
    assert status == "Could not classify: holiday.jpg: expected an image file (JPEG, PNG, ...), could not read it"
    assert not browser.find_elements(By.CSS_SELECTOR, "#rollout img")
    browser.save_screenshot(str(ARTIFACTS / "demo_unreadable.png"))
