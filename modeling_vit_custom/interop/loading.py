"""Any model folder a user evaluates (ours, a `--model timm:` run's, one converted from timm or transformers) or a
timm model, with the preprocessing it expects, and the split as that model numbers its classes."""

from torch import nn

from .. import ViTCustomForImageClassification
from ..files import is_timm_folder
from ..image_processing import PreprocessSettings
from ..training.arguments import ModelArguments
from ..training.models import class_names_of, num_classes_of
from .timm_conversion import build_timm_model


def load_for_evaluation(args: ModelArguments, checkpoint: str | None) -> tuple[nn.Module, PreprocessSettings]:
    """A saved (or converted) model folder with its own preprocessing: ours, or a `--model timm:<name>` run's; or
    `timm:<name>` with timm's, optionally with weights from a checkpoint file (class count from its head)."""
    if args.model.startswith("timm:"):
        model = build_timm_model(args.model.removeprefix("timm:"), checkpoint=checkpoint)
        return model, PreprocessSettings.from_timm(model)
    if not args.model_name_or_path:
        raise ValueError("--model_name_or_path: a saved model folder is needed (or --model timm:<name>)")
    from transformers import AutoImageProcessor

    if is_timm_folder(args.model_name_or_path):
        import timm

        # Its config.json holds the data config the run trained with (transformers would read the folder's
        # preprocessor_config.json through its timm wrapper, which keeps no resample).
        model = timm.create_model(f"local-dir:{args.model_name_or_path}", pretrained=True)
        return model, PreprocessSettings.from_timm(model)
    model = ViTCustomForImageClassification.from_pretrained(args.model_name_or_path)
    try:
        settings = PreprocessSettings.from_image_processor(AutoImageProcessor.from_pretrained(args.model_name_or_path))
    except OSError:  # a folder saved without its image processor: the flags give the preprocessing
        settings = args.preprocess_settings(model.config.image_size)
    return model, settings


def split_for(model: nn.Module, splits):
    """The validation split of `splits` (a DatasetSplits) as `model` numbers its classes, after checking that the model
    was trained for it: the same class count, the same kind of labels (a model whose config says multi-label on a
    multi-label split, and only there), the same class names (remapped when only their order differs)."""
    from ..data.sources import align_classes

    num_classes = num_classes_of(model)
    if num_classes != len(splits.class_names):
        raise ValueError(
            f"The model predicts {num_classes} classes, the dataset has {len(splits.class_names)}: "
            "evaluate on the dataset the model was trained for"
        )
    if hasattr(model, "config") and (model.config.problem_type == "multi_label_classification") != splits.multi_label:
        raise ValueError(
            f"The model's problem_type is {model.config.problem_type!r}, the dataset's labels are "
            f"{'lists of classes (multi-label)' if splits.multi_label else 'one class per image'}: evaluate on the "
            "kind of dataset the model was trained for"
        )
    return align_classes(splits.validation, class_names_of(model), "the evaluated split")
