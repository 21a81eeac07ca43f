"""Top-k predictions of a saved model for many image files, as `pipeline("image-classification")` would give them."""

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import write_text
from .images import find_images, load_classifier, read_image

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".jsonl", ".csv")


class ImageFiles(Dataset):
    """Image files -> (index, pixel_values (C, H, W) from the model's image processor, or None and the reason the file
    could not be read); each image is read with the model's `num_channels`."""

    def __init__(self, paths: list[Path], processor, num_channels: int = 3):
        self.paths, self.processor, self.num_channels = paths, processor, num_channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = read_image(self.paths[index], self.num_channels)
            return index, self.processor(image, return_tensors="pt")["pixel_values"][0], None
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for damaged files
            return index, None, f"{type(error).__name__}: {error}"


def collate(items: list[tuple]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of the readable images, their pixel_values (B, C, H, W) or None, [(index, error)] of the others)."""
    readable = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    errors = [(index, error) for index, pixels, error in items if pixels is None]
    pixel_values = torch.stack([pixels for _, pixels in readable]) if readable else None
    return [index for index, _ in readable], pixel_values, errors


def scores_of(logits: torch.Tensor, config) -> torch.Tensor:
    """Scores (B, num_labels) from logits, as the image-classification pipeline computes them: sigmoid for
    multi-label or one-label models, the logits themselves for regression, softmax otherwise."""
    logits = logits.float()
    if config.problem_type == "regression":
        return logits
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return logits.sigmoid()
    return logits.softmax(dim=-1)


def check_output_path(path: str | Path, flag: str = "output") -> Path:
    path = Path(path)
    if path.suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--{flag}: expected a file ending in {' or '.join(OUTPUT_FORMATS)}, got {path}")
    if path.is_dir():
        raise ValueError(f"--{flag}: expected a file, got the folder {path}")
    return path


@torch.no_grad()
def predict(
    model_dir: str | Path,
    patterns: list[str],
    top_k: int = 5,
    batch_size: int = 32,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Iterator[dict]:
    """One row per image named by `patterns` (files, folders, globs), in order: {"path", "labels", "scores"} with the
    `top_k` best labels, or {"path", "error"} for a file that cannot be read as an image."""
    if top_k <= 0 or batch_size <= 0 or num_workers < 0:
        raise ValueError(
            "--top_k, --batch_size, --num_workers: expected positive, positive, non-negative, "
            f"got {top_k}, {batch_size}, {num_workers}"
        )
    paths = find_images(patterns)
    model, processor = load_classifier(model_dir)
    model.to(device)
    config = model.config
    if top_k > config.num_labels:
        logger.info("--top_k %d: the model has %d labels; giving all of them", top_k, config.num_labels)
        top_k = config.num_labels
    loader = DataLoader(
        ImageFiles(paths, processor, config.num_channels),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.device(device).type == "cuda",
    )
    with tqdm(total=len(paths), unit="image", desc="predict", disable=not progress) as bar:
        for indices, pixel_values, errors in loader:
            rows = {index: {"path": str(paths[index]), "error": error} for index, error in errors}
            if pixel_values is not None:
                logits = model(pixel_values.to(device)).logits
                scores, labels = scores_of(logits, config).topk(top_k, dim=-1)
                for index, row_scores, row_labels in zip(indices, scores.tolist(), labels.tolist(), strict=True):
                    rows[index] = {
                        "path": str(paths[index]),
                        "labels": [config.id2label[label] for label in row_labels],
                        "scores": row_scores,
                    }
            bar.update(len(rows))
            yield from (rows[index] for index in sorted(rows))


def write_predictions(rows: list[dict], path: str | Path) -> Path:
    """JSON lines (one row a line) or CSV (path, label_1, score_1, ..., error), written whole or not at all."""
    path = check_output_path(path)
    if path.suffix == ".jsonl":
        return write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    top_k = max((len(row.get("labels", [])) for row in rows), default=0)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path"] + [f"{kind}_{k}" for k in range(1, top_k + 1) for kind in ("label", "score")] + ["error"])
    for row in rows:
        ranked = [value for pair in zip(row.get("labels", []), row.get("scores", []), strict=True) for value in pair]
        writer.writerow([row["path"], *ranked, *[""] * (2 * top_k - len(ranked)), row.get("error", "")])
    return write_text(path, text.getvalue())
