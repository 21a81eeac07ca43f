"""The model and training flags of the scripts, and how a YAML recipe and the command line become them.

Nothing heavy is imported here, so `scripts/train.py --help` answers before torch, timm or the data code load."""

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser


@dataclass
class ModelArguments:
    model: str = field(
        default="vit_custom", metadata={"help": "'vit_custom', or 'timm:<name>' to train timm's model in this loop."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved model folder to start from (new head if the label count differs)."}
    )
    model_config_overrides: str | None = field(
        default=None, metadata={"help": "ViTCustomConfig fields, e.g. 'hidden_size=64,num_hidden_layers=2'."}
    )
    crop_pct: float = field(default=0.9, metadata={"help": "Eval: resize the short side to size / crop_pct."})
    interpolation: str = "bicubic"
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def preprocess_settings(self, image_size: int):
        from ..image_processing import PreprocessSettings

        return PreprocessSettings(
            image_size=image_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=tuple(self.image_mean),
            std=tuple(self.image_std),
        )


@dataclass
class TrainingArguments:
    output_dir: str = "runs/vit"
    seed: int = 0
    num_train_epochs: float = 1.0
    max_train_steps: int | None = field(default=None, metadata={"help": "Overrides num_train_epochs when set."})
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    learning_rate: float = field(default=5e-4, metadata={"help": "Per 512 images of global batch (DeiT's rule)."})
    weight_decay: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "cosine"
    num_warmup_steps: int = 0
    warmup_epochs: float = field(default=0.0, metadata={"help": "Added to num_warmup_steps in optimizer steps."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "EMA of the weights (e.g. 0.99996); off if unset."}
    )
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no | bf16 | fp16; default bf16 on GPU, no on CPU."}
    )
    torch_compile: bool = False
    gradient_checkpointing: bool = False
    num_workers: int = 4
    logging_steps: int = 50
    eval_steps: int | None = field(default=None, metadata={"help": "Also evaluate every N steps (always per epoch)."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Also checkpoint every N steps."})
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    report_to: str = "tensorboard"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False


def parse_args(dataclass_types: Sequence[type], argv: list[str] | None = None) -> tuple:
    """Parse a YAML recipe (`--config FILE`, every key a flag) and the command line, which wins over the recipe."""
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="A YAML recipe; every key is also a command-line flag.")
    argv = sys.argv[1:] if argv is None else argv
    config_path = parser.parse_known_args(argv)[0].config
    if config_path is not None:
        parser.set_defaults(**load_recipe(config_path, parser))
    *parsed, _ = parser.parse_args_into_dataclasses(args=argv)
    return tuple(parsed)


def load_recipe(path: str, parser: HfArgumentParser) -> dict:
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as err:
        raise FileNotFoundError(f"--config {path}: cannot read the recipe ({err.strerror})") from err
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values, got {type(recipe).__name__}")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; every key must be a flag of the script")
    return recipe


def parse_config_overrides(overrides: str | None) -> dict:
    """'hidden_size=64,qkv_bias=false' -> {'hidden_size': 64, 'qkv_bias': False} (values read as YAML scalars)."""
    if not overrides:
        return {}
    from ..configuration_vit_custom import ViTCustomConfig

    fields = set(ViTCustomConfig().to_dict())
    result = {}
    for item in overrides.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model_config_overrides: expected 'key=value' items, got {item!r}")
        if key not in fields:
            raise ValueError(f"--model_config_overrides: {key!r} is not a ViTCustomConfig field")
        result[key] = yaml.safe_load(value)
    return result


def to_jsonable(*dataclass_objects) -> dict:
    return {k: v for obj in dataclass_objects for k, v in dataclasses.asdict(obj).items()}
