"""Where the model looks: attention rollout, and the class token's (or the attention pooling's) last attention, drawn
over the image's patches (register tokens are not image patches and are left out)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..files import replacing
from .images import find_images, load_classifier, read_image
from .predict import scores_of

logger = logging.getLogger(__name__)


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per layer (B, heads, N, N) -> (B, N, N), how much each token's
    output draws on each input token through every layer. Each layer's heads are averaged, the identity is added
    for the residual connection, the rows are renormalised to sum to 1, and the layers are multiplied in order."""
    result = None
    for weights in attentions:
        mixed = weights.float().mean(dim=1)  # (B, N, N)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("attentions: expected the maps of at least one layer, got none")
    return result


def token_relevance(
    attentions: Sequence[torch.Tensor],
    pooling: str,
    num_prefix_tokens: int = 1,
    pool_attention: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-patch maps (B, ..., N) from the attention maps of every layer, (B, heads, P + N, P + N) each, P prefix
    tokens (class token, registers) first: `rollout` (B, N) for the pooled output (the class token's row, or the
    mean of the patch tokens' rows for `pooling="mean"` and `"map"`); with class-token pooling also
    `last_layer_heads` (B, heads, N), the class token's attention in the last layer, and `last_layer` (B, N), its
    mean over heads; with attention pooling (`"map"`), those two are the pooling query's attention over the patches,
    `pool_attention` (B, heads, N)."""
    rolled, p = rollout(attentions), num_prefix_tokens
    if pooling == "cls":
        heads = attentions[-1][:, :, 0, p:].float()
        return {"rollout": rolled[:, 0, p:], "last_layer": heads.mean(dim=1), "last_layer_heads": heads}
    if pooling not in ("mean", "map"):
        raise ValueError(f"pooling: expected 'cls', 'mean' or 'map', got {pooling!r}")
    maps = {"rollout": rolled[:, p:, p:].mean(dim=1)}
    if pooling == "map":
        if pool_attention is None:
            raise ValueError("pool_attention: expected the attention pooling's weights for pooling 'map', got None")
        heads = pool_attention.float()
        maps |= {"last_layer": heads.mean(dim=1), "last_layer_heads": heads}
    return maps


def to_image(
    tokens: torch.Tensor, grid: tuple[int, int], stride: int, size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Patch values (..., gh * gw), in row-major token order, -> (..., H, W) over the image: each token covers
    `stride` x `stride` pixels, the grid is upsampled by `stride` and cropped to the image (a convolutional stem
    rounds its grid up, so the last row and column of tokens may overhang)."""
    gh, gw = grid
    height, width = size
    if tokens.shape[-1] != gh * gw:
        raise ValueError(f"tokens: expected {gh} x {gw} = {gh * gw} patch values, got {tokens.shape[-1]}")
    if not (gh - 1) * stride < height <= gh * stride or not (gw - 1) * stride < width <= gw * stride:
        raise ValueError(f"size: expected an image that a {gh} x {gw} grid of stride {stride} covers, got {size}")
    lead = tokens.shape[:-1]
    maps = tokens.reshape(-1, 1, gh, gw).float()
    maps = F.interpolate(maps, scale_factor=stride, mode=mode)[..., :height, :width]
    return maps.reshape(*lead, height, width)


def token_layout(model, height: int, width: int) -> tuple[tuple[int, int], int]:
    """(token grid, pixels per token) of `model` for an image of height x width."""
    embeddings = model.vit.embeddings
    return embeddings.grid(height, width), embeddings.pixels_per_token


@dataclass
class AttentionMaps:
    """What one image's figure shows: `image` (H, W, C) in [0, 1] as the model saw it, `rollout` (H, W),
    `last_layer` (H, W) and `last_layer_heads` (heads, H, W) (the class token's, or the attention pooling's query's
    with `pooling="map"`; None for a mean-pooled model), `pooling`, the prediction and
    `scores` (num_labels,), the pipeline's (softmax, or sigmoid for a multi-label model)."""

    image: np.ndarray
    rollout: torch.Tensor
    last_layer: torch.Tensor | None
    last_layer_heads: torch.Tensor | None
    label: str
    score: float
    scores: torch.Tensor | None = None
    pooling: str = "cls"


@torch.no_grad()
def attention_maps(model, pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list:
    """The AttentionMaps of a batch (B, C, H, W) normalised with `mean` and `std`; another size than the model's
    runs with interpolated position embeddings."""
    height, width = pixel_values.shape[-2:]
    config = model.config
    native = (height, width) == (config.image_size, config.image_size)
    # output_attentions takes the eager path for this forward only, whatever attn_implementation the model loaded with.
    pooling = config.pooling
    output = model(
        pixel_values,
        output_attentions=True,
        output_hidden_states=pooling == "map",
        interpolate_pos_encoding=not native,
    )
    pool_attention = None
    if pooling == "map":  # the pooling's query over the patches, from the tokens it pools
        pool_attention = model.vit.pooler.attention_weights(model.vit.norm(output.hidden_states[-1]))
    grid, stride = token_layout(model, height, width)
    relevance = token_relevance(output.attentions, pooling, config.num_prefix_tokens, pool_attention)
    maps = {name: to_image(values, grid, stride, (height, width)).cpu() for name, values in relevance.items()}
    probabilities = scores_of(output.logits, config).cpu()
    shift = torch.tensor(mean).view(1, -1, 1, 1)
    scale = torch.tensor(std).view(1, -1, 1, 1)
    images = (pixel_values.float().cpu() * scale + shift).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    results = []
    for i, image in enumerate(images):
        top = int(probabilities[i].argmax())
        results.append(
            AttentionMaps(
                image=image,
                rollout=maps["rollout"][i],
                last_layer=maps["last_layer"][i] if "last_layer" in maps else None,
                last_layer_heads=maps["last_layer_heads"][i] if "last_layer_heads" in maps else None,
                label=config.id2label[top],
                score=float(probabilities[i, top]),
                scores=probabilities[i],
                pooling=pooling,
            )
        )
    return results


def draw(maps: AttentionMaps, title: str):
    """A matplotlib figure: the image, then each map over it (each scaled to its own range); the heads on a second
    row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("rollout (all layers)", maps.rollout)]
    if maps.pooling == "cls":
        panels.insert(0, ("class token, last layer\n(mean of heads)", maps.last_layer))
    else:
        panels[0] = (f"rollout of the patch tokens\n({maps.pooling}-pooled: no class token)", maps.rollout)
    if maps.pooling == "map":
        panels.insert(0, ("attention pooling's query\n(mean of heads)", maps.last_layer))
    heads = [] if maps.last_layer_heads is None else list(maps.last_layer_heads)
    columns = max(1 + len(panels), len(heads))
    rows = 2 if heads else 1
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    image = maps.image[..., 0] if maps.image.shape[-1] == 1 else maps.image
    axes[0, 0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[0, 0].set_title("image")
    for ax, (name, values) in zip(axes[0, 1:], panels, strict=False):
        _overlay(ax, image, values)
        ax.set_title(name, fontsize=9)
    for h, (ax, values) in enumerate(zip(axes[1] if heads else [], heads, strict=False)):
        _overlay(ax, image, values)
        ax.set_title(f"head {h}", fontsize=9)
    fig.suptitle(f"{title}: {maps.label} ({100 * maps.score:.1f}%)", fontsize=10)
    fig.tight_layout()
    return fig


def _overlay(ax, image: np.ndarray, values: torch.Tensor):
    values = values.numpy()
    low, high = values.min(), values.max()
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.imshow((values - low) / (high - low) if high > low else np.zeros_like(values), cmap="inferno", alpha=0.6)


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with replacing(path) as staging:
        fig.savefig(staging, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def write_attention_figures(
    model_dir: str | Path,
    patterns: list[str],
    output_dir: str | Path,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> list[Path]:
    """One PNG per image named by `patterns` (files, folders, globs) in `output_dir`, `<image stem>.png` (with the
    image's index when two stems are equal); `image_size` runs the model at another resolution."""
    if image_size is not None and image_size <= 0:
        raise ValueError(f"--image_size: expected a positive number of pixels, got {image_size}")
    paths = find_images(patterns)
    stems = [path.stem for path in paths]
    names = [stem if stems.count(stem) == 1 else f"{stem}_{i}" for i, stem in enumerate(stems)]
    return draw_attention(model_dir, paths, [Path(output_dir) / f"{name}.png" for name in names], image_size, device)


def draw_attention(
    model_dir: str | Path,
    images: list[Path],
    outputs: list[Path],
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> list[Path]:
    """The figure of each image in `images`, saved as the PNG at the same place in `outputs`."""
    model, processor = load_classifier(model_dir, image_size=image_size)
    config = model.config
    if image_size is not None and not config.conv_stem_depth and image_size % config.patch_size:
        raise ValueError(f"--image_size: expected a multiple of patch_size {config.patch_size}, got {image_size}")
    pictures = []
    for path in images:
        try:
            pictures.append(read_image(path, config.num_channels))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: expected a readable image, got {type(error).__name__}: {error}") from error
    if config.pooling == "mean":
        logger.info("%s is mean-pooled: drawing attention rollout only (no class token predicts)", model_dir)
    elif config.pooling == "map":
        logger.info("%s is attention-pooled: drawing its pooling query's attention and the rollout", model_dir)
    model.to(device)
    for path, picture, output in zip(images, pictures, outputs, strict=True):
        pixel_values = processor(picture, return_tensors="pt")["pixel_values"].to(device)
        (maps,) = attention_maps(model, pixel_values, processor.image_mean, processor.image_std)
        save_figure(draw(maps, path.name), output)
        logger.info("%s: %s (%.1f%%) -> %s", path, maps.label, 100 * maps.score, output)
    return [Path(output) for output in outputs]
