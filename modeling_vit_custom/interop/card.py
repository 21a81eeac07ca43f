"""The model card of an exported model: its YAML metadata and text, derived from the folder, the training run and
the timm comparison, none of it invented."""

import json
import math
from pathlib import Path

import jinja2
import jinja2.meta
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..files import read_json
from ..training.run_log import RunRecord

# The template lives at the top of the repository, where users edit it; pass `template_path` to use another.
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_card.md"
# Never copied into a card: run configs may carry credentials under these names.
SECRET_KEY_PARTS = ("token", "password", "secret")


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files: `model.safetensors`, or the shards its index names (other safetensors files
    in the folder, an EMA copy say, are not the model)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(read_json(index).get("weight_map", {}).values()))]
    return [model_dir / "model.safetensors"] if (model_dir / "model.safetensors").is_file() else []


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
    repo_id: str,
    revision: str,
    license: str,
    preprocessing_recorded: bool,
) -> tuple[ModelCardData, dict]:
    """The card's YAML metadata and the template's variables for the repository `folder` holds."""
    config = read_json(folder / "config.json")
    parameters = count_parameters(folder)
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 0)
    labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
    origin = "trained" if run is not None else "converted" if conversion is not None else "unknown"
    context = {
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "revision": revision,
        "origin": origin,
        "architecture": _architecture(config, parameters, num_labels),
        "image_size": config["image_size"],
        "num_labels": num_labels,
        "preprocessing": _preprocessing(read_json(folder / "preprocessor_config.json")),
        "preprocessing_recorded": preprocessing_recorded,
        "labels": ", ".join(f"`{label}`" for label in labels[:20]) + (", ..." if len(labels) > 20 else ""),
        **_run_context(run, model_dir),
        **_comparison_context(comparison, parameters),
        "timm_model": (conversion or {}).get("timm_model"),
        "checkpoint": (conversion or {}).get("checkpoint"),
    }
    tags = ["vision", "image-classification", "vit", "vit-custom", "custom_code"]
    if conversion is not None:
        tags.append("timm")
    hub_dataset = run.config.get("dataset_name") if run is not None else None
    eval_results = _eval_results(run, context["result"])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        datasets=[hub_dataset] if hub_dataset and _looks_like_hub_dataset(hub_dataset) else None,
        tags=tags,
        metrics=["accuracy"] if eval_results else None,
        model_name=context["model_name"],
        eval_results=eval_results,
    )
    return card_data, context


def _architecture(config: dict, parameters: int, num_labels: int) -> list[tuple]:
    return [
        ("Parameters", _format_number(parameters)),
        ("Image size", f"{config['image_size']} x {config['image_size']}"),
        (
            "Patch embedding",
            f"convolutional stem, {config['conv_stem_depth']} stride-2 3 x 3 convolutions"
            if config.get("conv_stem_depth")
            else f"linear, {config['patch_size']} x {config['patch_size']} patches",
        ),
        ("Hidden size", config["hidden_size"]),
        ("Layers", config["num_hidden_layers"]),
        ("Attention heads", config["num_attention_heads"]),
        ("MLP size", config["intermediate_size"]),
        ("Activation", config.get("hidden_act", "gelu")),
        ("Pooling", "class token" if config.get("pooling", "cls") == "cls" else "mean of patch tokens"),
        ("QKV bias", config.get("qkv_bias", True)),
        ("LayerNorm eps", f"{config.get('layer_norm_eps', 1e-6):g}"),
        ("Classes", num_labels),
    ]


def _preprocessing(preprocess: dict) -> str:
    return (
        f"resize the short side to {preprocess['size']['shortest_edge']} / crop_pct "
        f"({preprocess.get('crop_pct')}), center-crop {preprocess['size']['shortest_edge']}, "
        f"normalise with mean {preprocess.get('image_mean')} and std {preprocess.get('image_std')}"
    )


def _run_context(run: RunRecord | None, model_dir: Path) -> dict:
    """What the training run says: settings, the exported checkpoint's evaluation, dataset, steps, time, curves."""
    if run is None:
        return {
            "dataset": "an unnamed dataset",
            "total_steps": None,
            "hyperparameters": [],
            "result": None,
            "top1": "n/a",
            "top5": "n/a",
            "train_runtime": None,
            "has_curves": False,
        }
    # The card describes the checkpoint actually exported, which may be the run's best rather than its final.
    result = run.result_for(model_dir)
    summary = run.summary
    return {
        "dataset": _dataset_name(run) or "an unnamed dataset",
        "total_steps": summary.total_steps if summary else None,
        "hyperparameters": [
            (key, _format_setting(value))
            for key, value in run.config.items()
            if not any(part in key.lower() for part in SECRET_KEY_PARTS)
        ],
        "result": result,
        "top1": _percent(result["top1"]) if result else "n/a",
        "top5": _percent(result["top5"]) if result else "n/a",
        "train_runtime": (
            f"{summary.train_runtime_s / 60:.1f} min" if summary and summary.train_runtime_s is not None else None
        ),
        "has_curves": run.curves is not None,
    }


def _dataset_name(run: RunRecord) -> str | None:
    return run.config.get("dataset_name") or (
        Path(run.config["train_dir"]).name if run.config.get("train_dir") else None
    )


def _eval_results(run: RunRecord | None, result: dict | None) -> list[EvalResult] | None:
    if result is None or result["top1"] is None:
        return None
    dataset_type = run.config.get("dataset_name") or "imagefolder"
    measured = [("accuracy", "Top-1 accuracy", result["top1"]), ("top_5_accuracy", "Top-5 accuracy", result["top5"])]
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=_dataset_name(run) or dataset_type,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(value, 4),
        )
        for metric_type, metric_name, value in measured
        if value is not None
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
