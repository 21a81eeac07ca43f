"""A Gradio page for one model: upload an image, see its top classes, where the model looked, and how long it took."""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attention_maps import attention_maps
from .images import is_hub_id, load_classifier, pipeline_limitation, read_image

logger = logging.getLogger(__name__)

# Photos that ship with matplotlib (a dependency): examples that need no download.
SAMPLE_PHOTOS = ("grace_hopper.jpg",)
TOP_K = 5
OVERLAY_ALPHA = 0.6  # the map's weight over the image, as in visualize_attention.py's figures
DISPLAY_SIZE = 224  # a smaller model's images are enlarged by whole pixels to at least this, so its patches show


def sample_photos() -> list[Path]:
    """The real photos shipped in matplotlib's sample data."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def overlay(image: np.ndarray, values: torch.Tensor, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """`image` (H, W, C) in [0, 1] with `values` (H, W), scaled to their own range, drawn over it in matplotlib's
    "inferno" colours -> (H, W, 3) uint8."""
    from matplotlib import colormaps

    values = values.numpy()
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    colours = colormaps["inferno"](scaled)[..., :3]
    return to_rgb8((1 - alpha) * image + alpha * colours)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) in [0, 1] -> (H * k, W * k, 3) uint8, each pixel repeated k times along both axes, k the least
    whole number that makes the short side at least DISPLAY_SIZE."""
    scale = max(1, math.ceil(DISPLAY_SIZE / min(image.shape[:2])))
    image = np.broadcast_to(image, (*image.shape[:2], 3)).repeat(scale, axis=0).repeat(scale, axis=1)
    return (image.clip(0, 1) * 255).round().astype(np.uint8)


@dataclass
class Prediction:
    """One image's answer: `scores` {label: probability} shown (the top 5, or a multi-label model's classes above
    the threshold), `image` as the model saw it, `last_layer` and `rollout` overlays, each (H * k, W * k, 3) uint8
    for the model's input of H x W (k: see `to_rgb8`; `last_layer` None for a mean-pooled model), the model's time
    in milliseconds."""

    scores: dict[str, float]
    label: str
    score: float
    image: np.ndarray
    last_layer: np.ndarray | None
    rollout: np.ndarray
    milliseconds: float


class Classifier:
    """A loaded model and its image processor: image file -> Prediction."""

    def __init__(self, model, processor, name: str, device: torch.device | str = "cpu", threshold: float = 0.5):
        if not 0 < threshold < 1:
            raise ValueError(f"--threshold: expected a probability in (0, 1), got {threshold}")
        self.model, self.processor, self.name = model.to(device), processor, name
        self.device, self.threshold = torch.device(device), threshold
        self.config = model.config
        self.multi_label = self.config.problem_type == "multi_label_classification"

    @classmethod
    def load(cls, model: str | Path, revision: str | None = None, device="cpu", threshold: float = 0.5):
        """The model in a saved folder, or a Hub id at `revision` (from the local cache when offline)."""
        loaded, processor = load_classifier(model, flag="MODEL", revision=revision)
        name = str(model) if is_hub_id(model) else Path(model).resolve().name
        return cls(loaded, processor, name, device, threshold)

    def describe(self) -> str:
        """What the page says about the model, in Markdown."""
        config = self.config
        lines = [
            f"A vit-custom image classifier: {config.num_labels} classes, {config.image_size} x {config.image_size} "
            f"pixels, {config.num_channels} channel{'s' if config.num_channels > 1 else ''}. Upload an image or pick "
            "an example: the page shows the top classes, where the model looked and how long it took."
        ]
        if self.multi_label:
            lines.append(f"Multi-label: each class on its own, shown when its probability is above {self.threshold}.")
        if config.pooling == "mean":
            lines.append("Mean-pooled (no class token predicts): attention rollout only.")
        limitation = pipeline_limitation(config.num_channels)
        if limitation:
            lines.append(f"Images are read in grayscale: {limitation}.")
        return "\n\n".join(lines)

    def __call__(self, path: str | Path) -> Prediction:
        """Raises ValueError naming the file when it is not a readable image."""
        try:
            image = read_image(Path(path), self.config.num_channels)
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for damaged files
            raise ValueError(
                f"{Path(path).name}: expected an image file (JPEG, PNG, ...), could not read it"
            ) from error
        pixel_values = self.processor(image, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        (maps,) = attention_maps(self.model, pixel_values, self.processor.image_mean, self.processor.image_std)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        milliseconds = 1000 * (time.perf_counter() - start)
        ranked = maps.scores.argsort(descending=True).tolist()
        if self.multi_label:
            ranked = [i for i in ranked if maps.scores[i] > self.threshold]
        else:
            ranked = ranked[:TOP_K]
        return Prediction(
            scores={self.config.id2label[i]: float(maps.scores[i]) for i in ranked},
            label=maps.label,
            score=maps.score,
            image=to_rgb8(maps.image),
            last_layer=None if maps.last_layer is None else overlay(maps.image, maps.last_layer),
            rollout=overlay(maps.image, maps.rollout),
            milliseconds=milliseconds,
        )

    def timing(self, prediction: Prediction) -> str:
        return (
            f"Model time: **{prediction.milliseconds:.1f} ms** on {self.device.type} "
            "(one forward pass, attention maps included)."
        )


def build_app(classifier: Classifier, examples: list[Path] = ()):
    """The Gradio Blocks page of `classifier`; its one API endpoint is `/classify` (file -> scores, image as seen,
    last-layer overlay, rollout overlay, status)."""
    import gradio as gr

    mean_pooled = classifier.config.pooling == "mean"

    def classify(path):
        empty = (None, None, None, None)
        if path is None:
            return (*empty, "")
        try:
            prediction = classifier(path)
        except ValueError as error:
            return (*empty, f"**Could not classify:** {error}")
        if classifier.multi_label and not prediction.scores:
            status = f"No class above {classifier.threshold}. " + classifier.timing(prediction)
        else:
            status = classifier.timing(prediction)
        return prediction.scores, prediction.image, prediction.last_layer, prediction.rollout, status

    with gr.Blocks(title=f"{classifier.name}: vit-custom") as app:
        gr.Markdown(f"# {classifier.name}\n\n{classifier.describe()}", elem_id="about")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="upload")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=upload, label="Examples")
            with gr.Column():
                label = gr.Label(
                    num_top_classes=None if classifier.multi_label else TOP_K, label="Prediction", elem_id="prediction"
                )
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            seen = gr.Image(label="As the model saw it", type="numpy", format="png", elem_id="seen")
            last_layer = gr.Image(
                label="Class token, last layer (mean of heads)",
                type="numpy",
                format="png",
                visible=not mean_pooled,
                elem_id="last_layer",
            )
            rollout = gr.Image(
                label="Rollout of the patch tokens (mean-pooled)" if mean_pooled else "Attention rollout (all layers)",
                type="numpy",
                format="png",
                elem_id="rollout",
            )
        upload.change(classify, inputs=upload, outputs=[label, seen, last_layer, rollout, status], api_name="classify")
    return app
