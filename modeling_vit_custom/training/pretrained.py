"""A run's starting weights from a saved model folder: position embeddings resampled to another resolution, a new head
for another class count, any other difference refused by name before any data is read."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..files import read_json, weight_files
from ..modeling_vit_custom import resample_position_embeddings

logger = logging.getLogger(__name__)

POSITION_EMBEDDINGS = "vit.embeddings.position_embeddings"
HEAD = ("head.weight", "head.bias")
MAX_PROBLEMS_SHOWN = 8  # a ViT-B with another width differs in all of its 152 tensors


@dataclass(frozen=True)
class CheckpointFit:
    """How a saved folder's weights go into the run's model: `source` is the folder's config, `config` the run's."""

    folder: Path
    source: ViTCustomConfig
    config: ViTCustomConfig

    @property
    def new_head(self) -> bool:
        return self.source.num_labels != self.config.num_labels

    @property
    def grids(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The token grid of the checkpoint's position embeddings and of the run's model."""
        old, new = (c.image_size // c.patch_size for c in (self.source, self.config))
        return (old, old), (new, new)


def model_folder(model_name_or_path: str) -> Path:
    """A local folder as it is; a Hub model id (`user/name`, no such local path) downloaded to the Hub cache (only its
    config, code and safetensors files), or its cached copy when offline."""
    path = Path(model_name_or_path)
    if path.exists() or model_name_or_path.count("/") != 1:
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(model_name_or_path, allow_patterns=["*.json", "*.py", "*.safetensors"]))
    except (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path!r}: no such local folder, and not a Hub model that can be "
            f"read ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from None


def fit_checkpoint(model_name_or_path: str, overrides: dict, class_names: list[str] | None = None) -> CheckpointFit:
    """The run's config (the folder's, with `overrides` and, given `class_names`, those classes) and a check, from the
    safetensors headers alone, that every tensor of the folder fits it: the same names and shapes, except the
    position embeddings (another image_size: resampled) and the head (another class count: new). Anything else is
    a ValueError naming the tensors (the first few) with both shapes."""
    folder = model_folder(model_name_or_path)
    files = weight_files(folder) if (folder / "config.json").is_file() else []
    if not files:
        raise ValueError(
            f"--model_name_or_path: expected a saved model folder with config.json and model.safetensors, "
            f"got {model_name_or_path!r}"
        )
    model_type = read_json(folder / "config.json").get("model_type")
    if model_type != ViTCustomConfig.model_type:
        raise ValueError(
            f"--model_name_or_path {folder}: expected a vit_custom model folder, got model_type {model_type!r} "
            "(convert a timm or transformers ViT with scripts/convert_timm.py)"
        )
    source = ViTCustomConfig.from_pretrained(folder)
    values = {**source.to_dict(), **overrides}
    if class_names is not None:
        values["id2label"] = dict(enumerate(class_names))
        values["label2id"] = {name: i for i, name in enumerate(class_names)}
    fit = CheckpointFit(folder, source, ViTCustomConfig.from_dict(values))

    found = {}
    for path in files:
        with safe_open(path, framework="pt") as tensors:
            found |= {name: tuple(tensors.get_slice(name).get_shape()) for name in tensors.keys()}
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        model = ViTCustomForImageClassification(fit.config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    skip = set(HEAD) if fit.new_head else set()
    problems = []
    missing, unexpected = sorted(expected.keys() - found.keys() - skip), sorted(found.keys() - expected.keys() - skip)
    if missing:
        problems.append(f"the model's {missing} are not in the checkpoint")
    if unexpected:
        problems.append(f"the checkpoint's {unexpected} are not in the model")
    (old_grid, _), width = fit.grids, fit.config.hidden_size
    prefix = fit.config.num_prefix_tokens if fit.config.prefix_position_embeddings else 0
    resampled = (1, prefix + old_grid[0] * old_grid[1], width)  # the checkpoint's own grid, in the run's width
    for name in sorted(expected.keys() & found.keys() - skip):
        if found[name] != expected[name] and not (name == POSITION_EMBEDDINGS and found[name] == resampled):
            problems.append(f"{name} is {found[name]} in the checkpoint, {expected[name]} in the model")
    if problems:
        if len(problems) > MAX_PROBLEMS_SHOWN:
            problems = problems[:MAX_PROBLEMS_SHOWN] + [f"{len(problems) - MAX_PROBLEMS_SHOWN} more"]
        raise ValueError(
            f"--model_name_or_path {folder}: the checkpoint does not fit the model with --model_config_overrides "
            f"{overrides or {}}: " + "; ".join(problems) + ". Only image_size (position embeddings, resampled) and "
            "the class count (the head, re-initialised) may differ"
        )
    return fit


def load_pretrained(
    model_name_or_path: str, overrides: dict, class_names: list[str]
) -> ViTCustomForImageClassification:
    """The run's model with the folder's weights: position embeddings resampled bicubically to the run's grid as
    timm loads a checkpoint at another size (`resample_abs_pos_embed`, antialiased, the rows of the class and
    register tokens kept apart), and a
    new head (the model's initialisation) when the class count differs. See `fit_checkpoint` for what is refused."""
    fit = fit_checkpoint(model_name_or_path, overrides, class_names)
    model = ViTCustomForImageClassification(fit.config)
    state_dict = {}
    for path in weight_files(fit.folder):
        state_dict |= load_file(path)
    old_grid, new_grid = fit.grids
    if old_grid != new_grid:
        config = fit.config
        state_dict[POSITION_EMBEDDINGS] = resample_position_embeddings(
            state_dict[POSITION_EMBEDDINGS],
            old_grid,
            new_grid,
            antialias=True,
            num_prefix_tokens=config.num_prefix_tokens if config.prefix_position_embeddings else 0,
        )
        logger.info(
            "%s: position embeddings resampled from a %dx%d to a %dx%d grid (bicubic; image_size %d -> %d)",
            fit.folder, *old_grid, *new_grid, fit.source.image_size, fit.config.image_size,
        )  # fmt: skip
    if fit.new_head:
        state_dict = {name: t for name, t in state_dict.items() if name not in HEAD}
        state_dict |= {name: t for name, t in model.state_dict().items() if name in HEAD}
        logger.info(
            "%s: new head for %d classes (the checkpoint's has %d), initialised at random",
            fit.folder, fit.config.num_labels, fit.source.num_labels,
        )  # fmt: skip
    model.load_state_dict(state_dict, strict=True)
    return model
