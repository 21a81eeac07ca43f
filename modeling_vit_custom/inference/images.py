"""The image files named on a command line, and a saved model folder loaded with the preprocessing saved beside it."""

import glob
import logging
import re
from pathlib import Path

import torch
from transformers import AutoImageProcessor
from transformers.image_utils import load_image

from ..files import check_model_folder

logger = logging.getLogger(__name__)

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


# A Hub model id: `name` or `owner/name`, letters, digits, `-`, `_` and `.` (what huggingface_hub accepts).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def read_image(path: Path, num_channels: int = 3):
    """The image with the model's `num_channels`: for 3, as `pipeline("image-classification")` reads a path (EXIF
    orientation applied, RGB); for 1, the same image converted to grayscale ("L"), as training reads it."""
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: expected 1 or 3, got {num_channels}")
    image = load_image(str(path))
    return image if num_channels == 3 else image.convert("L")


def pipeline_limitation(num_channels: int) -> str | None:
    """One line saying why `pipeline("image-classification")` cannot serve a model of `num_channels`, or None when
    it can."""
    if num_channels == 3:
        return None
    return (
        f"this model takes {num_channels}-channel (grayscale) images; transformers' "
        'pipeline("image-classification") converts every image to RGB and cannot serve it: use the image processor '
        "and the model directly"
    )


def is_hub_id(model: str | Path) -> bool:
    """Whether `model`, not a folder here, reads as a Hub model id (`owner/name`)."""
    return not Path(model).exists() and HUB_ID.fullmatch(str(model)) is not None


def load_classifier(
    model_dir: str | Path, flag: str = "model", image_size: int | None = None, revision: str | None = None
):
    """(model in eval mode, image processor) of a saved model folder, or of a Hub model id at `revision` (from the
    local cache when offline); `image_size` makes the processor crop to another size than the model was trained at.
    Errors name `--flag` (an upper-case `flag` is a positional argument's name, used as it is). A model that
    `pipeline` cannot serve is said so in one line."""
    from .. import ViTCustomForImageClassification

    label = flag if flag.isupper() else f"--{flag}"
    overrides = {} if image_size is None else {"size": {"shortest_edge": image_size}}
    if is_hub_id(model_dir):
        source = str(model_dir)
        try:
            model = ViTCustomForImageClassification.from_pretrained(source, revision=revision).eval()
            processor = AutoImageProcessor.from_pretrained(source, revision=revision, **overrides)
        except OSError as error:
            reason = str(error).strip().splitlines()[0]
            raise FileNotFoundError(
                f"{label}: expected a saved model folder or a Hub model id with config.json and "
                f"preprocessor_config.json, got {source!r} (no such folder here; the Hub: {reason})"
            ) from error
    else:
        source = Path(model_dir)
        check_model_folder(source, label, ("config.json", "preprocessor_config.json"))
        model = ViTCustomForImageClassification.from_pretrained(source).eval()
        processor = AutoImageProcessor.from_pretrained(source, **overrides)
    limitation = pipeline_limitation(model.config.num_channels)
    if limitation:
        logger.info("%s: %s", source, limitation)
    return model, processor


def device_of(name: str | None) -> torch.device:
    """`name`, or the first GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
