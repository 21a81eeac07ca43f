"""Share a model: assemble a self-contained Hub repository folder with a model card, verify it, upload it."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, is_offline_mode
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .configuration_vit_custom import AUTO_MAP

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# The template lives at the top of the repository, where users edit it; pass `template_path` to use another.
DEFAULT_TEMPLATE_PATH = PACKAGE_DIR.parent / "model_card.md"
MODEL_CODE_FILES = ("configuration_vit_custom.py", "modeling_vit_custom.py")
CURVES_FILE = "training_curves.png"
# Never copied into a card: run configs may carry credentials under these names.
SECRET_KEY_PARTS = ("token", "password", "secret")


class VerificationError(RuntimeError):
    """The exported folder does not load, or does not reproduce the source model, in a clean process."""


@dataclass
class RunRecord:
    """What a training run directory (`scripts/train.py`'s output_dir) says about the model trained in it."""

    run_dir: Path
    config: dict = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    summary: dict | None = None
    curves: Path | None = None

    def result_for(self, model_dir: Path) -> dict | None:
        """The evaluation of the checkpoint in `model_dir`: the best one for `run_dir/best`, else the last one."""
        if not self.evals and self.summary is None:
            return None
        is_best = model_dir.resolve() == (self.run_dir / "best").resolve()
        summary = self.summary or {}
        if is_best and "best_step" in summary:
            step = summary["best_step"]
            match = next((e for e in self.evals if e.get("step") == step), {})
            return {
                "checkpoint": "best",
                "step": step,
                "top1": summary.get("best_eval_top1", match.get("eval_top1")),
                "top5": match.get("eval_top5"),
                "samples": match.get("eval_samples"),
            }
        last = self.evals[-1] if self.evals else {}
        return {
            "checkpoint": "final",
            "step": summary.get("total_steps", last.get("step")),
            "top1": summary.get("final_eval_top1", last.get("eval_top1")),
            "top5": summary.get("final_eval_top5", last.get("eval_top5")),
            "samples": last.get("eval_samples"),
        }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: expected a JSON object, got invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Reads `run_config.json`, `metrics.jsonl` and `training_curves.png` from a run directory; each is optional."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: expected a training run directory, got {run_dir} (not a directory)")
    record = RunRecord(run_dir=run_dir)
    if (run_dir / "run_config.json").is_file():
        record.config = _read_json(run_dir / "run_config.json")
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                raise ValueError(f"{metrics_path}, line {number}: expected a JSON object, got {line[:80]!r}")
            if event.get("event") == "eval":
                record.evals.append(event)
            elif event.get("event") == "summary":
                record.summary = event
    if (run_dir / CURVES_FILE).is_file():
        record.curves = run_dir / CURVES_FILE
    return record


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files: `model.safetensors`, or the shards its index names (other safetensors files
    in the folder, an EMA copy say, are not the model)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(_read_json(index).get("weight_map", {}).values()))]
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


def _card_context(
    model_dir: Path,
    folder: Path,
    config: dict,
    run: RunRecord | None,
    comparison: dict | None,
    conversion: dict | None,
    repo_id: str,
    revision: str,
    license: str,
    preprocessing_recorded: bool,
) -> tuple[ModelCardData, dict]:
    """The card's YAML metadata and the template's variables, all derived from files, none invented."""
    preprocess = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    parameters = count_parameters(folder)
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 0)
    labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
    architecture = [
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
    preprocessing = (
        f"resize the short side to {preprocess['size']['shortest_edge']} / crop_pct "
        f"({preprocess.get('crop_pct')}), center-crop {preprocess['size']['shortest_edge']}, "
        f"normalise with mean {preprocess.get('image_mean')} and std {preprocess.get('image_std')}"
    )

    hyperparameters, result, dataset, steps = [], None, None, None
    if run is not None:
        hyperparameters = [
            (key, _format_setting(value))
            for key, value in run.config.items()
            if not any(part in key.lower() for part in SECRET_KEY_PARTS)
        ]
        # The card describes the checkpoint actually exported, which may be the run's best rather than its final.
        result = run.result_for(model_dir)
        dataset = run.config.get("dataset_name") or (
            Path(run.config["train_dir"]).name if run.config.get("train_dir") else None
        )
        steps = (run.summary or {}).get("total_steps")

    eval_results = None
    if result is not None and result["top1"] is not None:
        dataset_type = run.config.get("dataset_name") or "imagefolder"
        measured = [
            ("accuracy", "Top-1 accuracy", result["top1"]),
            ("top_5_accuracy", "Top-5 accuracy", result["top5"]),
        ]
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_type,
                dataset_name=dataset or dataset_type,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(value, 4),
            )
            for metric_type, metric_name, value in measured
            if value is not None
        ]
    origin = "trained" if run is not None else "converted" if conversion is not None else "unknown"
    tags = ["vision", "image-classification", "vit", "vit-custom", "custom_code"]
    if conversion is not None:
        tags.append("timm")
    hub_dataset = run.config.get("dataset_name") if run is not None else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        datasets=[hub_dataset] if hub_dataset and _looks_like_hub_dataset(hub_dataset) else None,
        tags=tags,
        metrics=["accuracy"] if eval_results else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results,
    )

    comparison_rows, comparison_parameters = [], None
    if comparison is not None:
        comparison_parameters = next(
            (row.get("ours") for row in comparison.get("rows", []) if row.get("metric") == "parameters"), None
        )
        for row in comparison.get("rows", []):
            comparison_rows.append(
                (
                    row.get("metric"),
                    _format_number(row.get("ours")),
                    _format_number(row.get("timm")),
                    "n/a" if row.get("ratio") is None else f"{row['ratio']:.3g}",
                    row.get("unit") or "",
                )
            )
    context = {
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "revision": revision,
        "origin": origin,
        "architecture": architecture,
        "image_size": config["image_size"],
        "num_labels": num_labels,
        "preprocessing": preprocessing,
        "preprocessing_recorded": preprocessing_recorded,
        "labels": ", ".join(f"`{label}`" for label in labels[:20]) + (", ..." if len(labels) > 20 else ""),
        "dataset": dataset or "an unnamed dataset",
        "total_steps": steps,
        "hyperparameters": hyperparameters,
        "result": result,
        "top1": _percent(result["top1"]) if result else "n/a",
        "top5": _percent(result["top5"]) if result else "n/a",
        "train_runtime": (
            f"{run.summary['train_runtime_s'] / 60:.1f} min"
            if run is not None and run.summary and run.summary.get("train_runtime_s") is not None
            else None
        ),
        "has_curves": run is not None and run.curves is not None,
        "comparison_rows": comparison_rows,
        "comparison_model": (comparison or {}).get("timm_model"),
        "comparison_batch_size": (comparison or {}).get("batch_size"),
        # compare_timm.py may have measured another size of the architecture than this checkpoint's.
        "comparison_other_size": (
            _format_number(comparison_parameters)
            if comparison_parameters is not None and comparison_parameters != parameters
            else None
        ),
        "comparison_machine": (
            ", ".join(f"{key}: {value}" for key, value in (comparison or {}).get("machine", {}).items()) or None
        ),
        "timm_model": (conversion or {}).get("timm_model"),
        "checkpoint": (conversion or {}).get("checkpoint"),
    }
    return card_data, context


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


def _copy_model_files(model_dir: Path, folder: Path) -> bool:
    """Copies config, code, weights and preprocessor; returns whether the preprocessor came with the model."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: expected a saved model folder with config.json, found none")
    config = _read_json(config_path)
    if config.get("model_type") != "vit_custom":
        raise ValueError(f"{config_path}: expected model_type 'vit_custom', got {config.get('model_type')!r}")
    # Every Auto class the two code files serve, whatever subset save_pretrained happened to write.
    config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    weights = weight_files(model_dir)
    missing = [path.name for path in weights if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir}: expected the shards named in model.safetensors.index.json, missing {missing}"
        )
    if not weights:
        pickled = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt*"))
        raise FileNotFoundError(
            f"{model_dir}: expected weights in model.safetensors, got {pickled or 'no weights'} "
            "(pickled weights are never exported; re-save with save_pretrained)"
        )
    for path in weights + sorted(model_dir.glob("model.safetensors.index.json")):
        shutil.copyfile(path, folder / path.name)
    for name in MODEL_CODE_FILES:
        # The folder's own copy is the code its weights were saved with; the package copy only fills a gap.
        source = model_dir / name if (model_dir / name).is_file() else PACKAGE_DIR / name
        if source.parent == PACKAGE_DIR:
            logger.warning("%s has no %s; exporting the installed package's copy", model_dir, name)
        shutil.copyfile(source, folder / name)

    if (model_dir / "preprocessor_config.json").is_file():
        shutil.copyfile(model_dir / "preprocessor_config.json", folder / "preprocessor_config.json")
        return True
    from .image_processing import PreprocessSettings

    logger.warning("%s has no preprocessor_config.json; exporting the default evaluation preprocessing", model_dir)
    PreprocessSettings(image_size=config["image_size"]).to_image_processor().save_pretrained(folder)
    return False


def build_folder(
    model_dir: str | os.PathLike,
    folder: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    comparison_path: str | os.PathLike | None = None,
    repo_id: str | None = None,
    revision: str = "main",
    license: str = "apache-2.0",
    template_path: str | os.PathLike = DEFAULT_TEMPLATE_PATH,
) -> Path:
    """Writes the repository's files into the empty or new `folder`: config.json with the full auto_map, the two
    model code files, model.safetensors, preprocessor_config.json, README.md (the model card) and, for a training
    run, training_curves.png."""
    model_dir, folder = Path(model_dir), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing_recorded = _copy_model_files(model_dir, folder)
    run = read_run(run_dir) if run_dir is not None else None
    if comparison_path is None and run is not None and (run.run_dir / "comparison.json").is_file():
        comparison_path = run.run_dir / "comparison.json"
    comparison = _read_json(Path(comparison_path)) if comparison_path is not None else None
    conversion = _read_json(model_dir / "conversion.json") if (model_dir / "conversion.json").is_file() else None
    if run is not None and run.curves is not None:
        shutil.copyfile(run.curves, folder / CURVES_FILE)
    config = _read_json(folder / "config.json")
    card_data, context = _card_context(
        model_dir,
        folder,
        config,
        run,
        comparison,
        conversion,
        repo_id=repo_id or str(folder.resolve()),
        revision=revision,
        license=license,
        preprocessing_recorded=preprocessing_recorded,
    )
    render_card(Path(template_path), card_data, context).save(folder / "README.md")
    return folder


_VERIFY_SCRIPT = r"""
import json, sys
sys.modules["modeling_vit_custom"] = None  # the folder must load through its own code, not the installed package
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

folder, inputs_path, outputs_path = sys.argv[1:4]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
pixel_values = load_file(inputs_path)["pixel_values"]
size = config.image_size
yy, xx = np.mgrid[0 : size + 9, 0 : 2 * size + 5]
image = Image.fromarray(np.stack([xx * 7 % 256, yy * 5 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8))
processor = AutoImageProcessor.from_pretrained(folder)
with torch.no_grad():
    logits = model(pixel_values).logits.float()
    pooled = backbone(pixel_values).pooler_output.float()
    pooled_in_classifier = model.base_model(pixel_values).pooler_output.float()
    image_logits = model(**processor(image, return_tensors="pt")).logits.float()
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
predictions = classifier(image, top_k=min(5, config.num_labels))
outputs = dict(logits=logits, pooled=pooled, pooled_in_classifier=pooled_in_classifier, image_logits=image_logits)
save_file({name: tensor.contiguous() for name, tensor in outputs.items()}, outputs_path)
classes = [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, backbone, model)]
print(json.dumps({"classes": classes, "predictions": predictions, "id2label": config.id2label}))
"""


def verify_folder(folder: str | os.PathLike, source_model_dir: str | os.PathLike, atol: float = 1e-5) -> dict:
    """Loads a temporary copy of `folder` in a clean `python -I` process (offline, fresh HF_HOME, the package not
    importable) through AutoConfig, AutoModel, AutoModelForImageClassification and `pipeline`, and checks its logits
    against the source model. Returns the measurements; raises VerificationError on any failure."""
    from .modeling_vit_custom import ViTCustomForImageClassification

    folder = Path(folder)
    source = ViTCustomForImageClassification.from_pretrained(source_model_dir).eval()
    config = source.config
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=generator)
    with torch.no_grad():
        expected = source(pixel_values.to(source.dtype)).logits.float()

    with tempfile.TemporaryDirectory(prefix="vit-custom-verify-") as tmp:
        tmp = Path(tmp)
        copy = shutil.copytree(folder, tmp / "repo")
        save_file({"pixel_values": pixel_values}, tmp / "inputs.safetensors")
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
        # No token, no cache and no network: the check sees only what the repository itself holds.
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
        command = [sys.executable, "-I", "-c", _VERIFY_SCRIPT, str(copy), "inputs.safetensors", "outputs.safetensors"]
        process = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        if process.returncode != 0:
            raise VerificationError(
                f"{folder}: the exported folder failed to load or run in a clean process "
                f"(exit code {process.returncode}):\n{process.stderr[-3000:]}"
            )
        report = json.loads(process.stdout.strip().splitlines()[-1])
        outputs = load_file(tmp / "outputs.safetensors")

    problems = []
    for name in report["classes"]:
        if not name.startswith("transformers_modules."):
            problems.append(f"expected {name.rsplit('.', 1)[-1]} to load from the folder's remote code, got {name}")
    logit_diff = (outputs["logits"] - expected).abs().max().item()
    if not logit_diff <= atol:
        problems.append(f"expected logits within {atol} of the source model, got max abs difference {logit_diff:.3g}")
    pooled_diff = (outputs["pooled"] - outputs["pooled_in_classifier"]).abs().max().item()
    if not pooled_diff <= atol:
        problems.append(f"expected AutoModel to match the classifier's backbone, got difference {pooled_diff:.3g}")
    probabilities = outputs["image_logits"][0].softmax(-1)
    top = int(probabilities.argmax())
    predicted = report["predictions"][0] if report["predictions"] else {}
    if predicted.get("label") != report["id2label"][str(top)] or abs(predicted["score"] - probabilities[top]) > 1e-4:
        problems.append(
            f"expected the pipeline's top prediction {report['id2label'][str(top)]!r} "
            f"({probabilities[top]:.4f}), got {predicted}"
        )
    if problems:
        raise VerificationError(f"{folder}: " + "; ".join(problems))
    logger.info("verified %s in a clean process: max abs logit difference %.3g", folder, logit_diff)
    return {"max_abs_logit_diff": logit_diff, "pipeline": report["predictions"], "classes": report["classes"]}


def upload(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    revision_tag: str | None = None,
) -> str:
    """Creates the repo if needed and uploads `folder` in one commit, then tags it; returns the commit's URL. The
    token is whatever huggingface_hub finds (HF_TOKEN or the saved login); it is never read here."""
    api = HfApi()
    repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message or f"Upload vit-custom model from {Path(folder).name}",
    )
    if revision_tag is not None:
        api.create_tag(repo_id, tag=revision_tag, revision=commit.oid, repo_type="model")
    logger.info("uploaded %s to %s", folder, commit.commit_url)
    return commit.commit_url


def push_run(
    model_dir: str | os.PathLike,
    run_dir: str | os.PathLike | None,
    hub_model_id: str | None,
    private: bool = False,
    revision_tag: str | None = None,
    dry_run: bool = False,
    output_dir: str | os.PathLike | None = None,
    comparison_path: str | os.PathLike | None = None,
    commit_message: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    template_path: str | os.PathLike = DEFAULT_TEMPLATE_PATH,
) -> Path | str:
    """Builds the repository folder, verifies it in a clean process, and uploads it unless there is no
    `hub_model_id` or `dry_run`. Returns the folder (built only) or the commit URL (uploaded).

    The folder goes to `output_dir` (written whole or not at all), or to a temporary folder when uploading only; a
    dry run without `output_dir` keeps its temporary folder and returns it."""
    if hub_model_id is None and output_dir is None:
        raise ValueError("push_run: expected output_dir (build only) or hub_model_id (upload), got neither")
    upload_wanted = hub_model_id is not None and not dry_run
    if upload_wanted and is_offline_mode():
        raise RuntimeError(
            f"HF_HUB_OFFLINE is set: cannot upload to {hub_model_id!r}; pass --dry_run or --output_dir without "
            "--hub_model_id to build the folder only"
        )
    model_dir = Path(model_dir)
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise FileExistsError(f"output_dir: expected a folder, got the file {output_dir}")
        if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"output_dir: expected a new or empty folder, got {output_dir} (pass overwrite)")
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix="vit-custom-hub-"))
    try:
        build_folder(
            model_dir,
            staging,
            run_dir=run_dir,
            comparison_path=comparison_path,
            repo_id=hub_model_id or (str(output_dir.resolve()) if output_dir is not None else None),
            revision=revision_tag or "main",
            license=license,
            template_path=template_path,
        )
        verify_folder(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    folder = staging
    if output_dir is not None:
        staging.chmod(0o755)  # mkdtemp makes it private to the user; the export is an ordinary folder
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
        folder = output_dir
    if not upload_wanted:
        logger.info("built %s (not uploaded)", folder)
        return folder
    try:
        return upload(folder, hub_model_id, private=private, commit_message=commit_message, revision_tag=revision_tag)
    finally:
        if output_dir is None:
            shutil.rmtree(staging, ignore_errors=True)
