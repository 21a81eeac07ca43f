"""Share a model: assemble a self-contained Hub repository folder with its model card, verify it in a clean process,
upload it."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, is_offline_mode
from safetensors.torch import load_file, save_file

from ..configuration_vit_custom import AUTO_MAP
from ..files import check_output_folder, read_json, replacing, weight_files, write_json
from ..inference.attention_maps import draw_attention
from ..inference.demo import sample_photos
from ..inference.images import IMAGE_SUFFIXES, pipeline_limitation
from ..training.run_log import CURVES_FILE, read_run
from .card import DEFAULT_TEMPLATE_PATH, card_context, card_title, render_card
from .timm_conversion import CONVERSION_FILE

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ATTENTION_MAP_FILE = "attention_map.png"
MODEL_CODE_FILES = ("configuration_vit_custom.py", "modeling_vit_custom.py")


class VerificationError(RuntimeError):
    """The exported folder does not load, or does not reproduce the source model, in a clean process."""


def _copy_model_files(model_dir: Path, folder: Path) -> bool:
    """Copies config, code, weights and preprocessor; returns whether the preprocessor came with the model."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: expected a saved model folder with config.json, found none")
    config = read_json(config_path)
    if config.get("model_type") != "vit_custom":
        raise ValueError(f"{config_path}: expected model_type 'vit_custom', got {config.get('model_type')!r}")
    # Every Auto class the two code files serve, whatever subset save_pretrained happened to write.
    config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
    write_json(config, folder / "config.json")

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
    from ..image_processing import PreprocessSettings

    logger.warning("%s has no preprocessor_config.json; exporting the default evaluation preprocessing", model_dir)
    PreprocessSettings(image_size=config["image_size"]).to_image_processor().save_pretrained(folder)
    return False


def build_folder(
    model_dir: str | os.PathLike,
    folder: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    comparison_path: str | os.PathLike | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    license: str = "apache-2.0",
    template_path: str | os.PathLike = DEFAULT_TEMPLATE_PATH,
    model_name: str | None = None,
    dataset_label: str | None = None,
    attention_image: str | os.PathLike | None = None,
) -> Path:
    """Writes the repository's files into the empty or new `folder`: config.json with the full auto_map, the two
    model code files, model.safetensors, preprocessor_config.json, README.md (the model card) and, for a training
    run, training_curves.png and attention_map.png (of `attention_image`, by default the first image of the run's
    validation folder when it is on this machine). The card is titled `model_name`, else `repo_id`."""
    card_title(repo_id, model_name)
    model_dir, folder = Path(model_dir), Path(folder)
    run = read_run(run_dir) if run_dir is not None else None
    if attention_image is None and run is not None:
        attention_image = _first_validation_image(run.config)
    if attention_image is not None and not Path(attention_image).is_file():
        raise FileNotFoundError(f"attention_image: expected an image file, got {attention_image}")
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing_recorded = _copy_model_files(model_dir, folder)
    if comparison_path is None and run is not None and (run.run_dir / "comparison.json").is_file():
        comparison_path = run.run_dir / "comparison.json"
    comparison = read_json(Path(comparison_path)) if comparison_path is not None else None
    conversion = read_json(model_dir / CONVERSION_FILE) if (model_dir / CONVERSION_FILE).is_file() else None
    if run is not None and run.curves is not None:
        shutil.copyfile(run.curves, folder / CURVES_FILE)
    if attention_image is not None:
        draw_attention(model_dir, [Path(attention_image)], [folder / ATTENTION_MAP_FILE])
    card_data, context = card_context(
        model_dir,
        folder,
        run,
        comparison,
        conversion,
        repo_id=repo_id,
        revision=revision,
        license=license,
        preprocessing_recorded=preprocessing_recorded,
        model_name=model_name,
        dataset_label=dataset_label,
        has_attention_map=attention_image is not None,
    )
    render_card(Path(template_path), card_data, context).save(folder / "README.md")
    return folder


def _first_validation_image(run_config: dict) -> Path | None:
    """The first image (in sorted order) of the run's validation folder, when the run read one and it is here."""
    folder = run_config.get("validation_dir")
    if not folder or not Path(folder).is_dir():
        return None
    images = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return images[0] if images else None


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
if config.num_channels == 1:  # read as the model's tools read images: grayscale
    image = image.convert("L")
processor = AutoImageProcessor.from_pretrained(folder)
with torch.no_grad():
    logits = model(pixel_values).logits.float()
    pooled = backbone(pixel_values).pooler_output.float()
    pooled_in_classifier = model.base_model(pixel_values).pooler_output.float()
    image_logits = model(**processor(image, return_tensors="pt")).logits.float()
predictions = None  # pipeline reads every image as RGB: it serves 3-channel models only
if config.num_channels == 3:
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
    from .. import ViTCustomForImageClassification

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
    # pipeline's own choice: independent sigmoid scores for a multi-label model, a softmax otherwise.
    logits = outputs["image_logits"][0]
    multi_label = config.problem_type == "multi_label_classification"
    probabilities = logits.sigmoid() if multi_label else logits.softmax(-1)
    top = int(probabilities.argmax())
    predicted = report["predictions"][0] if report["predictions"] else {}
    if report["predictions"] is None:
        logger.info("%s: pipeline not checked: %s", folder, pipeline_limitation(config.num_channels))
    elif predicted.get("label") != report["id2label"][str(top)] or abs(predicted["score"] - probabilities[top]) > 1e-4:
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
    model_name: str | None = None,
    dataset_label: str | None = None,
    attention_image: str | os.PathLike | None = None,
    space_dir: str | os.PathLike | None = None,
) -> Path | str:
    """Builds the repository folder, verifies it in a clean process, and uploads it unless there is no
    `hub_model_id` or `dry_run`. Returns the folder (built only) or the commit URL (uploaded).

    The folder goes to `output_dir` (written whole or not at all), or to a temporary folder when uploading only; a
    dry run without `output_dir` keeps its temporary folder and returns it. With `space_dir`, a Gradio Space that
    serves `hub_model_id` at `revision_tag` is written there too (whole or not at all) and checked by starting its
    app on the built folder, before anything is uploaded."""
    if hub_model_id is None and output_dir is None:
        raise ValueError("push_run: expected output_dir (build only) or hub_model_id (upload), got neither")
    if space_dir is not None and (hub_model_id is None or revision_tag is None):
        raise ValueError(
            "--space_dir: expected --hub_model_id and --revision_tag (the repository and revision the Space serves), "
            f"got {hub_model_id!r} and {revision_tag!r}"
        )
    if space_dir is not None:
        check_output_folder(space_dir, overwrite, "--space_dir")
    upload_wanted = hub_model_id is not None and not dry_run
    if upload_wanted and is_offline_mode():
        raise RuntimeError(
            f"HF_HUB_OFFLINE is set: cannot upload to {hub_model_id!r}; pass --dry_run or --output_dir without "
            "--hub_model_id to build the folder only"
        )
    card_title(hub_model_id, model_name)
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if config_path.is_file() and (limitation := pipeline_limitation(read_json(config_path).get("num_channels", 3))):
        logger.info("%s: %s (the card says so)", model_dir, limitation)

    def build_and_verify(folder: Path):
        build_folder(
            model_dir,
            folder,
            run_dir=run_dir,
            comparison_path=comparison_path,
            repo_id=hub_model_id,
            revision=revision_tag,
            license=license,
            template_path=template_path,
            model_name=model_name,
            dataset_label=dataset_label,
            attention_image=attention_image,
        )
        verify_folder(folder, model_dir)
        if space_dir is not None:
            build_space(folder)

    def build_space(model_folder: Path):
        from .space import verify_space, write_space

        examples = ([Path(attention_image)] if attention_image is not None else []) + sample_photos()
        with replacing(space_dir, folder=True) as staging:
            write_space(staging, hub_model_id, revision_tag, examples, title=model_name, license=license)
            verify_space(staging, model_folder)
        logger.info("wrote the Space %s (upload: hf upload --repo-type space SPACE_ID %s)", space_dir, space_dir)

    if output_dir is not None:
        folder = check_output_folder(output_dir, overwrite)
        with replacing(folder, folder=True) as staging:
            build_and_verify(staging)
    else:
        folder = Path(tempfile.mkdtemp(prefix="vit-custom-hub-"))
        try:
            build_and_verify(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    if not upload_wanted:
        logger.info("built %s (not uploaded)", folder)
        return folder
    try:
        return upload(folder, hub_model_id, private=private, commit_message=commit_message, revision_tag=revision_tag)
    finally:
        if output_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
