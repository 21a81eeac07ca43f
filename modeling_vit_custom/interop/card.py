"""The model card of an exported model: its YAML metadata and text, derived from the folder, the training run and
the timm comparison, none of it invented."""

import json
import math
from pathlib import Path
from typing import NamedTuple

import jinja2
import jinja2.meta
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..configuration_vit_custom import ViTCustomConfig
from ..files import read_json, weight_files
from ..inference.images import pipeline_limitation
from ..training.run_log import RunRecord

# The template ships inside the package (package data), so an installed wheel renders cards; pass `template_path`
# (push_to_hub.py --template) to use your own.
DEFAULT_TEMPLATE_PATH = Path(__file__).with_name("model_card.md")


def count_parameters(folder: Path) -> int:
    """Number of parameters stored in the folder's safetensors file(s), read from their headers only."""
    total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as tensors:
            for name in tensors.keys():
                total += math.prod(tensors.get_slice(name).get_shape())
    return total


def _format_number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _format_setting(value) -> str:
    if value is None:
        return "off"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, sort_keys=True)}`"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _looks_like_hub_dataset(name: str) -> bool:
    return not Path(name).expanduser().exists() and not name.startswith(("/", ".", "~"))


def card_context(
    model_dir: Path,
    folder: Path,
    run: RunRecord | None,
    comparison: dict | None,
    conversion: dict | None,
    repo_id: str | None,
    revision: str | None,
    license: str,
    preprocessing_recorded: bool,
    model_name: str | None = None,
    dataset_label: str | None = None,
    has_attention_map: bool = False,
) -> tuple[ModelCardData, dict]:
    """The card's YAML metadata and the template's variables for the repository `folder` holds. The title is
    `model_name`, else the Hub id; `revision` is the tag the usage snippet pins (None: the reader picks a commit)."""
    name = card_title(repo_id, model_name)
    config = read_json(folder / "config.json")
    parameters = count_parameters(folder)
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 0)
    labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
    preprocess = read_json(folder / "preprocessor_config.json")
    origin = "trained" if run is not None else "converted" if conversion is not None else "unknown"
    context = {
        "model_name": name,
        "repo_id": repo_id or name,
        "revision": revision,
        "origin": origin,
        "architecture": _architecture(config, parameters, num_labels),
        "image_size": config["image_size"],
        "num_labels": num_labels,
        "preprocessing": _preprocessing(preprocess),
        "image_processor_type": preprocess["image_processor_type"],
        "preprocessing_recorded": preprocessing_recorded,
        "labels": ", ".join(f"`{label}`" for label in labels[:20]) + (", ..." if len(labels) > 20 else ""),
        "has_attention_map": has_attention_map,
        "pipeline_limitation": pipeline_limitation(config.get("num_channels", 3)),
        **_run_context(run, model_dir, num_labels, parameters, dataset_label),
        **_comparison_context(comparison, parameters),
        "timm_model": (conversion or {}).get("timm_model"),
        "checkpoint": (conversion or {}).get("checkpoint"),
    }
    tags = ["vision", "image-classification", "vit", "vit-custom", "custom_code"]
    if conversion is not None:
        tags.append("timm")
    hub_dataset = run.config.get("dataset_name") if run is not None else None
    eval_results = _eval_results(run, context)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        datasets=[hub_dataset] if hub_dataset and _looks_like_hub_dataset(hub_dataset) else None,
        tags=tags,
        metrics=sorted({metric.type for metric in context["metrics"]}) or None,
        model_name=name,
        eval_results=eval_results,
    )
    return card_data, context


def card_title(repo_id: str | None, model_name: str | None) -> str:
    """What the card is called: `model_name`, else the Hub id; a card without either would be named after a folder."""
    if not (model_name or repo_id):
        raise ValueError(
            "model card: expected --hub_model_id or --model_name to name the model in its card, got neither"
        )
    return model_name or repo_id


def _patch_embedding(config: dict) -> str:
    if not config.get("conv_stem_depth"):
        return f"linear, {config['patch_size']} x {config['patch_size']} patches"
    stem = ViTCustomConfig.from_dict(config)
    return (
        f"convolutional stem: {stem.conv_stem_depth} 3 x 3 convolutions of {_join(stem.stem_channels)} channels, "
        f"strides {_join(stem.stem_strides)}, then a 1 x 1 projection"
    )


def _join(values: list[int]) -> str:
    return "-".join(map(str, values))


def _architecture(config: dict, parameters: int, num_labels: int) -> list[tuple]:
    return [
        ("Parameters", _format_number(parameters)),
        ("Image size", f"{config['image_size']} x {config['image_size']}"),
        ("Patch embedding", _patch_embedding(config)),
        ("Hidden size", config["hidden_size"]),
        ("Layers", config["num_hidden_layers"]),
        ("Attention heads", config["num_attention_heads"]),
        ("MLP size", config["intermediate_size"]),
        ("Activation", config.get("hidden_act", "gelu")),
        ("Pooling", POOLING_NAMES[config.get("pooling", "cls")]),
        ("Features", _features(config)),
        ("QKV bias", config.get("qkv_bias", True)),
        (
            "Norm",
            f"{'RMSNorm' if config.get('norm_type') == 'rms_norm' else 'LayerNorm'}, eps "
            f"{config.get('layer_norm_eps', 1e-6):g}",
        ),
        ("Classes", num_labels),
    ]


POOLING_NAMES = {"cls": "class token", "mean": "mean of patch tokens", "map": "attention pooling of patch tokens"}


def _features(config: dict) -> str:
    """The timm-zoo features a config turns on (registers, LayerScale, ...), or "plain ViT"."""
    get = config.get
    registers, scale = get("num_register_tokens", 0), get("layer_scale_init_value")
    features = [
        (not get("class_token", True), "no class token"),
        (registers, f"{registers} register tokens"),
        (not get("prefix_position_embeddings", True) and (registers or get("class_token", True)),
         "patches alone position-embedded"),
        (get("pre_norm", False), "norm before the encoder (CLIP)"),
        (get("patch_norm", False), "norm after the patch embedding"),
        (not get("final_norm", True), "no final norm"),
        (get("fc_norm", False), "norm after pooling"),
        (scale is not None, f"LayerScale (from {scale})"),
        (get("qk_norm", False), "qk-norm"),
        (get("mlp_type", "plain") == "gated", "gated MLP"),
        (not get("proj_bias", True), "no projection biases"),
    ]  # fmt: skip
    return ", ".join(name for on, name in features if on) or "plain ViT"


def _preprocessing(preprocess: dict) -> str:
    """What the saved image processor does: ours (short side, crop_pct, center crop) or transformers' ViT one (straight
    to height x width)."""
    size = preprocess["size"]
    if "shortest_edge" in size:
        resize = (
            f"resize the short side to {size['shortest_edge']} / crop_pct ({preprocess.get('crop_pct')}), "
            f"center-crop {size['shortest_edge']}"
        )
    else:
        resize = f"resize to {size['height']} x {size['width']} (aspect ratio not kept)"
    return f"{resize}, normalise with mean {preprocess.get('image_mean')} and std {preprocess.get('image_std')}"


def _run_context(
    run: RunRecord | None, model_dir: Path, num_labels: int, parameters: int, dataset_label: str | None
) -> dict:
    """What the training run says: the recipe, the exported checkpoint's evaluation, dataset, steps, time, curves."""
    if run is None:
        return {
            "dataset": "an unnamed dataset",
            "evaluation_split": None,
            "total_steps": None,
            "recipe": [],
            "result": None,
            "metrics": [],
            "train_runtime": None,
            "has_curves": False,
        }
    # The card describes the checkpoint actually exported, which may be the run's best rather than its final.
    result = run.result_for(model_dir)
    summary = run.summary
    dataset = dataset_label or dataset_name(run.config) or "an unnamed dataset"
    return {
        "dataset": dataset,
        "evaluation_split": evaluation_split(run.config),
        "total_steps": summary.total_steps if summary else None,
        "recipe": recipe(run.config, parameters, dataset),
        "result": result,
        "metrics": _metrics(result, num_labels),
        "train_runtime": (
            f"{summary.train_runtime_s / 60:.1f} min" if summary and summary.train_runtime_s is not None else None
        ),
        "has_curves": run.curves is not None,
    }


def dataset_name(config: dict) -> str | None:
    """The data as the user named it: `dataset_label`, the Hub id, or the parent folder of the train folder (or of
    the train file, or the saved dataset's folder): a name, never a path."""
    if config.get("dataset_label"):
        return config["dataset_label"]
    if config.get("dataset_name"):
        return config["dataset_name"]
    for key in ("train_dir", "train_file"):
        if config.get(key):
            return Path(config[key]).resolve().parent.name
    return Path(config["dataset_path"]).name if config.get("dataset_path") else None


def source_type(config: dict) -> str | None:
    """The dataset's type in the card's metadata: the Hub id, else the builder that read the local data (imagefolder,
    parquet or arrow files, arrow for a saved dataset), else None."""
    if config.get("dataset_name"):
        return config["dataset_name"]
    if config.get("train_dir") or config.get("validation_dir"):
        return "imagefolder"
    files = config.get("train_file") or config.get("validation_file")
    if files:
        return "parquet" if files.endswith(".parquet") else "arrow"
    return "arrow" if config.get("dataset_path") else None


def evaluation_split(config: dict) -> str:
    """The evaluation data as the run read it, from its recorded flags (folder and file names, not paths)."""
    if config.get("validation_dir"):
        return f"the images of the `{Path(config['validation_dir']).name}` folder"
    if config.get("validation_file"):
        return f"`{Path(config['validation_file']).name}`"
    if "evaluation_split" in config:  # recorded by the run: what was read, not what could have been
        split = config["evaluation_split"]
        if split is not None:
            return f"its `{split}` split"
        return (
            f"a stratified {config.get('val_split_fraction', 0):.0%} of the training images held out "
            f"(seed {config.get('seed')})"
        )
    split = config.get("validation_split", "validation")
    fraction = config.get("val_split_fraction")
    if fraction is not None and (config.get("train_dir") or config.get("train_file")):
        return f"a stratified {fraction:.0%} of the training images held out (seed {config.get('seed')})"
    if fraction is not None:
        return (
            f"its `{split}` split, or where it has none a stratified {fraction:.0%} of its "
            f"`{config.get('train_split', 'train')}` split held out (seed {config.get('seed')})"
        )
    return f"its `{split}` split (its `test` split where it has no `{split}` split)"


# How the training images reached the model, as the run records it (`data_path`).
DATA_PATHS = {
    "memory": "decoded once into memory, cropped and flipped a batch at a time (the workers' boxes and flips)",
    "workers": "decoded and augmented in DataLoader workers",
    "stream": "streamed, decoded and augmented in DataLoader workers",
}


def recipe(config: dict, parameters: int, dataset: str) -> list[tuple[str, str]]:
    """The training settings a reader needs to redo the run, in words; no paths of the machine it ran on."""

    def get(key, default=None):
        value = config.get(key, default)
        return default if value is None else value

    processes = get("num_processes", 1)
    per_device, accumulation = get("per_device_train_batch_size"), get("gradient_accumulation_steps", 1)
    crop_scale = tuple(get("train_crop_scale", ()))
    augmentation = [
        "no random crop (the whole image)" if crop_scale == (1.0, 1.0) else f"random resized crop, scale {crop_scale}",
        f"horizontal flip {get('hflip', 0):g}",
    ]
    if get("repeated_augmentation", 1) > 1:
        augmentation.append(f"repeated augmentation x{get('repeated_augmentation')}")
    for key, name in (
        ("randaugment", "RandAugment"),
        ("color_jitter", "colour jitter"),
        ("mixup", "mixup alpha"),
        ("cutmix", "cutmix alpha"),
        ("label_smoothing", "label smoothing"),
        ("random_erasing", "random erasing"),
    ):
        if get(key):
            augmentation.append(f"{name} {_format_setting(get(key))}")
    schedule = f"{get('lr_scheduler_type', 'cosine')}, {get('num_warmup_steps', 0)} warm-up steps"
    if get("warmup_epochs"):
        schedule += f" + {get('warmup_epochs'):g} warm-up epochs"
    optimiser = "AdamW"
    if get("optim") == "muon":
        optimiser = f"Muon at {get('muon_lr_scale'):g}x the rate for the encoder's weight matrices, AdamW for the rest"
    rows = [
        ("Model", f"{_format_number(parameters)} parameters" + _overrides(config)),
        ("Data", f"{dataset}; evaluated on {evaluation_split(config)}"),
        ("Data path", DATA_PATHS.get(config.get("data_path"), "not recorded by this run")),
        ("Augmentation", ", ".join(augmentation)),
        (
            "Optimiser",
            f"{optimiser}, learning rate {get('learning_rate'):g} per 512 images "
            f"({get('effective_learning_rate', 0):.3g} at this batch), betas ({get('adam_beta1'):g}, "
            f"{get('adam_beta2'):g}), weight decay {get('weight_decay'):g}, "
            f"gradient clipping {_format_setting(get('max_grad_norm'))}, layer-wise rate decay "
            f"{_format_setting(config.get('layer_decay'))}",
        ),
        ("Schedule", schedule),
        (
            "Batch",
            f"{get('global_batch_size')} ({per_device} per process x {_plural(processes, 'process')} x "
            f"{_plural(accumulation, 'accumulation step')})",
        ),
        ("Epochs", f"{get('num_train_epochs', 0):g} ({get('max_train_steps')} optimizer steps)"),
        ("EMA of weights", _format_setting(config.get("ema_decay"))),
        ("Precision", {"no": "fp32"}.get(get("mixed_precision", "no"), get("mixed_precision"))),
        ("Hardware", _plural(processes, "process") + (f" on {config['device']}" if config.get("device") else "")),
        ("Seed", get("seed")),
    ]
    return [(name, str(value)) for name, value in rows]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


def _overrides(config: dict) -> str:
    if config.get("model_name_or_path"):
        return f", fine-tuned from `{Path(config['model_name_or_path']).name}`"
    if config.get("model_config_overrides"):
        return f"; `{config['model_config_overrides']}`"
    return ""


class Metric(NamedTuple):
    """One evaluation value of the card: its `model-index` type and name, its column in the results table."""

    type: str
    name: str
    column: str
    value: float

    @property
    def formatted(self) -> str:
        return _percent(self.value)


def _metrics(result: dict | None, num_labels: int) -> list[Metric]:
    """What the evaluation measured: mAP and F1 at 0.5 for a multi-label run; otherwise top-k accuracy for each k
    smaller than the number of labels (top-5 of 5 classes or fewer is always right and says nothing)."""
    if result is None:
        return []
    if result.get("map") is not None:
        measured = [Metric("map", "mAP", "mAP", result["map"]), Metric("f1", "F1 at 0.5", "F1 at 0.5", result["f1"])]
        return [metric for metric in measured if metric.value is not None]
    measured = [(1, Metric("accuracy", "Top-1 accuracy", "Top-1", result["top1"])),
                (5, Metric("top_5_accuracy", "Top-5 accuracy", "Top-5", result["top5"]))]  # fmt: skip
    return [metric for k, metric in measured if k < num_labels and metric.value is not None]


def _eval_results(run: RunRecord | None, context: dict) -> list[EvalResult] | None:
    if not context["metrics"]:
        return None
    dataset_type = source_type(run.config)
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=context["dataset"],
            metric_type=metric.type,
            metric_name=metric.name,
            metric_value=round(metric.value, 4),
        )
        for metric in context["metrics"]
    ]


def _comparison_context(comparison: dict | None, parameters: int) -> dict:
    """The rows of compare_timm.py's comparison.json, and the machine they were measured on."""
    comparison = comparison or {}
    rows = comparison.get("rows", [])
    measured_parameters = next((row.get("ours") for row in rows if row.get("metric") == "parameters"), None)
    return {
        "comparison_rows": [
            (
                row.get("metric"),
                _format_number(row.get("ours")),
                _format_number(row.get("timm")),
                "n/a" if row.get("ratio") is None else f"{row['ratio']:.3g}",
                row.get("unit") or "",
            )
            for row in rows
        ],
        "comparison_model": comparison.get("timm_model"),
        "comparison_batch_size": comparison.get("batch_size"),
        # compare_timm.py may have measured another size of the architecture than this checkpoint's.
        "comparison_other_size": (
            _format_number(measured_parameters)
            if measured_parameters is not None and measured_parameters != parameters
            else None
        ),
        "comparison_machine": ", ".join(f"{key}: {value}" for key, value in comparison.get("machine", {}).items())
        or None,
    }


def render_card(template_path: Path, card_data: ModelCardData, context: dict) -> ModelCard:
    """Renders the template through `ModelCard.from_template`, refusing a template that names unknown variables."""
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template: expected a file, got {template_path}")
    source = template_path.read_text(encoding="utf-8")
    provided = set(context) | set(card_data.to_dict()) | {"card_data"}
    unknown = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source)) - provided
    if unknown:
        raise ValueError(f"{template_path}: expected only variables {sorted(provided)}, got unknown {sorted(unknown)}")
    return ModelCard.from_template(card_data, template_path=str(template_path), **context)
