"""The image files named on a command line, and a saved model folder loaded with the preprocessing saved beside it."""

import glob
from pathlib import Path

import torch
from transformers import AutoImageProcessor
from transformers.image_utils import load_image

from ..files import check_model_folder

# What a folder given on the command line is searched for (a file named directly is read whatever its suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def find_images(patterns: list[str], flag: str = "images") -> list[Path]:
    """Files named by `patterns`: a file, a folder (its images, recursively) or a glob (`**` recurses), in order,
    each once. A pattern that names nothing is an error naming it."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        else:
            raise FileNotFoundError(f"{flag}: expected an image file, a folder or a glob pattern, got {pattern!r}")
        if not matches:
            raise FileNotFoundError(f"{flag}: expected {pattern!r} to match image files, got none")
        found.update(dict.fromkeys(matches))
    return list(found)


def read_image(path: Path):
    """The image as `pipeline("image-classification")` reads a path (EXIF orientation applied, RGB)."""
    return load_image(str(path))


def load_classifier(model_dir: str | Path, flag: str = "model", image_size: int | None = None):
    """(model in eval mode, image processor) of a saved model folder; `image_size` makes the processor crop to
    another size than the model was trained at."""
    from .. import ViTCustomForImageClassification

    model_dir = Path(model_dir)
    check_model_folder(model_dir, f"--{flag}", ("config.json", "preprocessor_config.json"))
    model = ViTCustomForImageClassification.from_pretrained(model_dir).eval()
    overrides = {} if image_size is None else {"size": {"shortest_edge": image_size}}
    processor = AutoImageProcessor.from_pretrained(model_dir, **overrides)
    return model, processor


def device_of(name: str | None) -> torch.device:
    """`name`, or the first GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
