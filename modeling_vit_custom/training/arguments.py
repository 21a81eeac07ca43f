"""The model and training flags of the scripts, and how a YAML recipe and the command line become them.

Nothing heavy is imported here, so `scripts/train.py --help` answers before torch, timm or the data code load."""

import dataclasses
import json
import os
import re
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
        default=None,
        metadata={
            "help": "A saved model folder to start from: another image_size resamples its position embeddings, "
            "another class count gives a new head, any other shape difference is refused."
        },
    )
    model_config_overrides: str | None = field(
        default=None, metadata={"help": "ViTCustomConfig fields, e.g. 'hidden_size=64,num_hidden_layers=2'."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel of our model while it trains: 'sdpa' (the default), 'eager' (explicit matmuls: "
            "faster for a few dozen tokens on CPU), 'flex_attention', 'flash_attention_2'. Not saved with the model."
        },
    )
    crop_pct: float = field(default=0.9, metadata={"help": "Eval: resize the short side to size / crop_pct."})
    interpolation: str = "bicubic"
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self):
        if self.model != "vit_custom" and not (self.model.startswith("timm:") and len(self.model) > len("timm:")):
            raise ValueError(f"--model: expected 'vit_custom' or 'timm:<name>', got {self.model!r}")
        if self.attn_implementation is not None and self.model != "vit_custom":
            raise ValueError(
                f"--attn_implementation: chooses our model's attention; --model {self.model} chooses its own, got "
                f"{self.attn_implementation!r}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"--crop_pct: expected a value in (0, 1], got {self.crop_pct!r}")
        if len(self.image_mean) != len(self.image_std) or len(self.image_mean) not in (1, 3):
            raise ValueError(
                f"--image_mean/--image_std: expected 1 or 3 values each (one per channel), got {self.image_mean} and "
                f"{self.image_std}"
            )
        if any(value <= 0 for value in self.image_std):
            raise ValueError(f"--image_std: expected positive values, got {self.image_std}")
        if self.model.startswith("timm:"):
            timm_kwargs(parse_config_overrides(self.model_config_overrides))
        elif self.model_config_overrides and not self.model_name_or_path:
            from ..configuration_vit_custom import ViTCustomConfig

            try:  # the model's own checks, before any data is read
                ViTCustomConfig(**parse_config_overrides(self.model_config_overrides))
            except ValueError as error:
                raise ValueError(f"--model_config_overrides: {error}") from None

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
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise lr decay for fine-tuning (BEiT): the head at the full lr, encoder layer i of L at "
            "decay ** (L - i), the embeddings at decay ** (L + 1); off if unset."
        },
    )
    optim: str = field(
        default="adamw",
        metadata={
            "help": "adamw, or muon: Muon (momentum orthogonalised by Newton-Schulz iterations) for the encoder's "
            "weight matrices, the linear layers between the patch embedding (or convolutional stem) and the "
            "classifier, and AdamW for the rest (training/muon.py)."
        },
    )
    muon_lr_scale: float = field(
        default=1.0,
        metadata={"help": "With --optim muon: Muon's learning rate as a multiple of AdamW's (--learning_rate's)."},
    )
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of the schedule's own arguments, e.g. '{\"min_lr\": 1e-5}' (cosine_with_min_lr)."
        },
    )
    num_warmup_steps: int = 0
    warmup_epochs: float = field(default=0.0, metadata={"help": "Added to num_warmup_steps in optimizer steps."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "EMA of the weights (e.g. 0.99996); off if unset."}
    )
    ema_warmup: bool = field(
        default=False, metadata={"help": "timm's EMA warm-up: the decay grows from 0 towards ema_decay early on."}
    )
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no | bf16 | fp16; default bf16 on GPU, no on CPU."}
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model in place (inductor: needs a C++ compiler, $CXX or g++)."},
    )
    gradient_checkpointing: bool = False
    channels_last: bool = field(
        default=False,
        metadata={
            "help": "Keep the model's convolution weights and the input batches in channels-last memory (timm's "
            "--channels-last): the faster layout for oneDNN's and cuDNN's convolutions, e.g. a convolutional stem."
        },
    )
    num_workers: int = 4
    logging_steps: int = 50
    synchronize_timing: bool = field(
        default=False,
        metadata={
            "help": "Synchronise the GPU at each phase of the loop, so that the summary's time split is exact (on CPU "
            "it always is); costs the overlap of consecutive steps."
        },
    )
    eval_steps: int | None = field(default=None, metadata={"help": "Also evaluate every N steps (always per epoch)."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Also checkpoint every N steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep the newest N checkpoints (N >= 1)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the previous run in output_dir instead of refusing to start."}
    )
    ddp_timeout: int = field(
        default=1800, metadata={"help": "Seconds a process waits for the others in a collective before it fails."}
    )
    report_to: str = "tensorboard"
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Build data, model, optimizer and schedule, time a few steps, print the plan; train nothing."
        },
    )
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    def __post_init__(self):
        """Every value checked here, before any data is read or compute spent; checks that need torch or the run
        directory are `training.models.check_run_settings`."""
        positive = [
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "checkpoints_total_limit",
            "ddp_timeout",
        ]
        for name in positive:
            _expect(self, name, getattr(self, name) >= 1, "a positive integer")
        for name in ("max_train_steps", "eval_steps", "checkpointing_steps"):
            value = getattr(self, name)
            _expect(self, name, value is None or value >= 1, "a positive integer or unset")
        _expect(self, "num_train_epochs", self.num_train_epochs > 0, "a positive number")
        _expect(self, "learning_rate", self.learning_rate > 0, "a positive learning rate per 512 images")
        for name in ("weight_decay", "max_grad_norm", "num_warmup_steps", "warmup_epochs", "num_workers"):
            _expect(self, name, getattr(self, name) >= 0, "a value >= 0")
        _expect(self, "optim", self.optim in ("adamw", "muon"), "adamw or muon")
        _expect(self, "muon_lr_scale", self.muon_lr_scale > 0, "a positive number")
        for name in ("adam_beta1", "adam_beta2"):
            _expect(self, name, 0.0 <= getattr(self, name) < 1.0, "a value in [0, 1)")
        _expect(
            self, "layer_decay", self.layer_decay is None or 0 < self.layer_decay <= 1, "a value in (0, 1] or unset"
        )
        _expect(self, "ema_decay", self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "a value in (0, 1) or unset")
        _expect(self, "mixed_precision", self.mixed_precision in (None, "no", "bf16", "fp16"), "no, bf16 or fp16")
        if self.lr_scheduler_kwargs is not None:
            try:
                kwargs = json.loads(self.lr_scheduler_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--lr_scheduler_kwargs: expected a JSON object, got invalid JSON ({error})"
                ) from None
            _expect(self, "lr_scheduler_kwargs", isinstance(kwargs, dict), "a JSON object")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub: expected --hub_model_id (e.g. user/vit-custom) to push to, got none")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError("--resume_from_checkpoint and --overwrite_output_dir: expected one of them, got both")


def _expect(args, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"--{name}: expected {expected}, got {getattr(args, name)!r}")


class FlagParser(HfArgumentParser):
    """transformers' dataclass parser whose errors are one line, `prog: error: ...`, without the usage block (some
    sixty lines of flags here, which `--help` shows)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(dataclass_types: Sequence[type], argv: list[str] | None = None) -> tuple:
    """Parse a YAML recipe (`--config FILE`, every key a flag) and the command line, which wins over the recipe."""
    parser = FlagParser(dataclass_types)
    parser.add_argument("--config", default=None, help="A YAML recipe; every key is also a command-line flag.")
    argv = sys.argv[1:] if argv is None else argv
    config_path = parser.parse_known_args(argv)[0].config
    if config_path is not None:
        parser.set_defaults(**load_recipe(config_path, parser))
    try:
        *parsed, _ = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # a value the dataclasses refuse: the usage line and the message, exit code 2
        parser.error(str(error))
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
    """'hidden_size=64,qkv_bias=false,conv_stem_strides=[1,2]' -> {'hidden_size': 64, 'qkv_bias': False,
    'conv_stem_strides': [1, 2]} (values read as YAML; items split at the commas outside brackets)."""
    if not overrides:
        return {}
    from ..configuration_vit_custom import ViTCustomConfig

    fields = set(ViTCustomConfig().to_dict())
    result = {}
    for item in re.split(r",(?![^\[]*\])", overrides):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model_config_overrides: expected 'key=value' items, got {item!r}")
        if key not in fields:
            raise ValueError(f"--model_config_overrides: {key!r} is not a ViTCustomConfig field")
        result[key] = yaml.safe_load(value)
    return result


# The config fields that `--model timm:<name>` applies, and the timm.create_model arguments each becomes (timm's
# VisionTransformer drops at the positions, after attention's projection and the MLP, as ours at hidden_dropout_prob).
TIMM_OVERRIDES = {
    "drop_path_rate": ("drop_path_rate",),
    "attention_probs_dropout_prob": ("attn_drop_rate",),
    "hidden_dropout_prob": ("proj_drop_rate", "pos_drop_rate"),
}


def timm_kwargs(overrides: dict) -> dict:
    """timm.create_model's arguments for `--model_config_overrides` under `--model timm:<name>`; a field timm's
    model is not built from is refused by name (the architecture is the timm name's)."""
    ignored = sorted(set(overrides) - set(TIMM_OVERRIDES))
    if ignored:
        raise ValueError(
            f"--model_config_overrides: {', '.join(ignored)} cannot apply to --model timm:<name> (its architecture is "
            f"the name's); expected only {', '.join(TIMM_OVERRIDES)}"
        )
    return {kwarg: value for field, value in overrides.items() for kwarg in TIMM_OVERRIDES[field]}


def to_jsonable(*dataclass_objects) -> dict:
    return {k: v for obj in dataclass_objects for k, v in dataclasses.asdict(obj).items()}


def check_environment(args: TrainingArguments) -> None:
    """The checks of the training flags that need torch or the libraries (run before any data is read): settings
    this machine cannot apply are refused by name, not silently replaced."""
    import torch
    from accelerate.utils import LoggerType
    from huggingface_hub import is_offline_mode
    from transformers import SchedulerType

    schedulers = [kind.value for kind in SchedulerType]
    if args.lr_scheduler_type not in schedulers:
        raise ValueError(f"--lr_scheduler_type: expected one of {schedulers}, got {args.lr_scheduler_type!r}")
    trackers = ["none", *(kind.value for kind in LoggerType)]
    if args.report_to not in trackers:
        raise ValueError(f"--report_to: expected one of {trackers}, got {args.report_to!r}")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError(
            "--mixed_precision fp16: expected a GPU (fp16 autocast with loss scaling runs on CUDA), got none; on CPU "
            "use bf16 or no"
        )
    if args.push_to_hub and is_offline_mode():
        raise ValueError(
            f"--push_to_hub: HF_HUB_OFFLINE is set, so the upload to {args.hub_model_id!r} would fail after training; "
            "unset it, or train without --push_to_hub and run scripts/push_to_hub.py later"
        )
    if args.torch_compile:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            raise ValueError(
                "--torch_compile: torch.compile's inductor builds its kernels with a C++ compiler and found none "
                f"(it runs $CXX, else g++; CXX={os.environ.get('CXX')!r}); install one (Debian: apt-get install g++) "
                "or train without --torch_compile"
            ) from None
