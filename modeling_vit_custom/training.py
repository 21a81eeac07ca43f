"""Training-side parts of scripts/train.py and scripts/evaluate.py: arguments, model, optimizer, checkpoints, logs."""

import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from transformers import HfArgumentParser, get_scheduler

from .configuration_vit_custom import ViTCustomConfig
from .image_processing import PreprocessSettings
from .modeling_vit_custom import ViTCustomForImageClassification

METRIC_PATH = str(Path(__file__).parent / "metrics" / "top_k_accuracy.py")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINING_STATE = "training_state.json"
# Dense bf16 / fp16 tensor throughput of the accelerators MFU is reported for (FLOP/s).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


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

    def preprocess_settings(self, image_size: int) -> PreprocessSettings:
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


def build_model(args: ModelArguments, class_names: list[str]) -> tuple[nn.Module, PreprocessSettings]:
    """Our model (from overrides or a saved folder) or `timm:<name>`, with the preprocessing it expects."""
    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    overrides = parse_config_overrides(args.model_config_overrides)
    if args.model.startswith("timm:"):
        import timm

        from .conversion import preprocess_settings_from_timm

        model = timm.create_model(args.model.removeprefix("timm:"), pretrained=False, num_classes=len(class_names))
        return model, preprocess_settings_from_timm(model)
    if args.model != "vit_custom":
        raise ValueError(f"--model: expected 'vit_custom' or 'timm:<name>', got {args.model!r}")
    if args.model_name_or_path:
        model = ViTCustomForImageClassification.from_pretrained(
            args.model_name_or_path,
            num_labels=len(class_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            **overrides,
        )
    else:
        config = ViTCustomConfig(num_labels=len(class_names), id2label=id2label, label2id=label2id, **overrides)
        model = ViTCustomForImageClassification(config)
    settings = args.preprocess_settings(model.config.image_size)
    if len(settings.mean) != model.config.num_channels:
        raise ValueError(
            f"--image_mean/--image_std: expected {model.config.num_channels} values (num_channels), "
            f"got {len(settings.mean)}"
        )
    return model, settings


def model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of our model (an output object) or of a timm model (a tensor)."""
    output = model(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same loss for both models: cross-entropy on class indices or on soft targets (mixup, smoothing)."""
    return ViTCustomForImageClassification.compute_loss(logits, labels)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (biases, norms) nor on the position embedding and class token."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_token = name in skip or name.split(".")[-1] in skip
        (no_decay if param.ndim < 2 or is_token else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_learning_rate(lr_per_512: float, global_batch_size: int) -> float:
    return lr_per_512 * global_batch_size / 512


def create_optimizer(model: nn.Module, args: TrainingArguments, lr: float) -> torch.optim.AdamW:
    # The fused kernel exists for CPU and CUDA; on this project's 2-core CPU it steps ViT-B's 86M parameters 8x
    # faster than the default foreach path (0.28 s against 2.3 s).
    return torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=lr, betas=(args.adam_beta1, args.adam_beta2), fused=True
    )


def create_scheduler(optimizer, args: TrainingArguments, steps_per_epoch: int, max_train_steps: int):
    """transformers' schedule, defined in optimizer steps: the training loop steps it once per optimizer step."""
    warmup = args.num_warmup_steps + round(args.warmup_epochs * steps_per_epoch)
    return get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_train_steps
    )


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) in a permutation fixed by (seed, epoch), so any epoch can be replayed from any batch.

    The epoch travels with each index to the workers, where `SeededSamples` seeds the augmentation of that sample:
    with persistent workers there is no other way for them to know the epoch.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        return ((self.epoch, i) for i in order)


class SeededSamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by (epoch, index) whose random augmentation is a function of (seed, epoch, index),
    so that a resumed run sees exactly the samples of an uninterrupted one, whatever the worker layout."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sample_seed = hash((self.seed, epoch, index)) % 2**32
        # timm's transforms draw from all three generators. In the training process (num_workers=0, where the loader
        # prefetches a batch ahead of the step) their global states are put back afterwards, so that the dropout /
        # mixup randomness a checkpoint restores is not shifted; a worker process has no other use for them.
        in_worker = torch.utils.data.get_worker_info() is not None
        states = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.default_generator.manual_seed(sample_seed)  # torch.manual_seed also seeds CUDA: 100x slower
        try:
            return self.dataset[index]
        finally:
            if states is not None:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: int) -> Path:
    """`accelerator.save_state` into checkpoints/step_N, written under a temporary name and renamed when complete,
    so an interrupted save never looks like a checkpoint; keeps the newest `total_limit`."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / TRAINING_STATE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, half-written folders never match)."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if CHECKPOINT_PATTERN.match(p.name) and (p / TRAINING_STATE).is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path:
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}/checkpoints"
            )
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {TRAINING_STATE})")
    return path


def read_training_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINING_STATE).read_text())


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, event: str, **values):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, **values}) + "\n")


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(metrics_path: Path, output_path: Path):
    """Loss, accuracy and learning rate against step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(metrics_path)
    train = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], label="train")
    axes[0].plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval")
    axes[0].set(title="loss", xlabel="step")
    axes[1].plot([e["step"] for e in evals], [100 * e["eval_top1"] for e in evals], "o-", label="top-1")
    axes[1].plot([e["step"] for e in evals], [100 * e["eval_top5"] for e in evals], "o-", label="top-5")
    axes[1].set(title="eval accuracy (%)", xlabel="step")
    axes[2].plot([e["step"] for e in train], [e["lr"] for e in train])
    axes[2].set(title="learning rate", xlabel="step")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    tmp = output_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, output_path)


def forward_flops_per_image(model: nn.Module, settings: PreprocessSettings, num_channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, num_channels, settings.image_size, settings.image_size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()  # no dropout: the count must not draw from the RNG that a resumed run has just restored
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in an epoch of `num_batches` per-process batches (a trailing partial accumulation steps too)."""
    return math.ceil(num_batches / gradient_accumulation_steps)


def to_jsonable(*dataclass_objects) -> dict:
    return {k: v for obj in dataclass_objects for k, v in dataclasses.asdict(obj).items()}


def build_dataloaders(splits, settings: PreprocessSettings, num_channels: int, aug_args, data_args, args, accelerator):
    """Train and eval DataLoaders that decode in workers; returns (train, eval, the object that takes set_epoch)."""
    from .data import ImageClassificationDataset, StreamingImageClassificationDataset, collate
    from .transforms import build_eval_transform, build_train_transform

    train_transform = build_train_transform(settings, num_channels, aug_args)
    eval_transform = build_eval_transform(settings, num_channels)
    workers = args.num_workers
    common = {
        "num_workers": workers,
        "collate_fn": collate,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
        "prefetch_factor": 4 if workers else None,
    }
    max_bad = data_args.max_bad_image_fraction
    if data_args.streaming:
        rank, world = accelerator.process_index, accelerator.num_processes
        train = StreamingImageClassificationDataset(
            splits.train, train_transform, rank=rank, world_size=world, seed=args.seed, max_bad_fraction=max_bad
        )
        train.check_workers(workers)
        evaluation = StreamingImageClassificationDataset(
            splits.validation, eval_transform, rank=rank, world_size=world, shuffle=False, max_bad_fraction=max_bad
        )
        train_loader = torch.utils.data.DataLoader(
            train, batch_size=args.per_device_train_batch_size, drop_last=True, **common
        )
        epoch_source = train
    else:
        train = ImageClassificationDataset(splits.train, train_transform, max_bad_fraction=max_bad)
        evaluation = ImageClassificationDataset(splits.validation, eval_transform, max_bad_fraction=max_bad)
        epoch_source = EpochSampler(len(train), seed=args.seed)
        train_loader = torch.utils.data.DataLoader(
            SeededSamples(train, args.seed),
            batch_size=args.per_device_train_batch_size,
            sampler=epoch_source,
            drop_last=True,  # mixup and cutmix pair samples within a batch, and an odd last batch cannot be paired
            # Worker seeds come from this generator, not from the global RNG that dropout and mixup use.
            generator=torch.Generator().manual_seed(args.seed),
            **common,
        )
    eval_loader = torch.utils.data.DataLoader(evaluation, batch_size=args.per_device_eval_batch_size, **common)
    return train_loader, eval_loader, epoch_source


@torch.no_grad()
def run_evaluation(model: nn.Module, loader, normalize: Callable, accelerator, prepared: bool = True) -> dict:
    """Loss, top-1 and top-5 over the whole split on any number of processes, counting each sample once; `normalize`
    turns the loader's uint8 batches into the model's input."""
    import evaluate

    metric = evaluate.load(METRIC_PATH, keep_in_memory=True)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    num_ranked = 5
    for batch in loader:
        pixel_values = normalize(batch["pixel_values"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            logits = model_logits(model, pixel_values).float()
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        num_ranked = min(5, logits.shape[-1])
        ranked = logits.topk(num_ranked, dim=-1).indices  # (B, k): only the ranking travels between processes
        if prepared:
            # Drops the samples the prepared loader repeated to give every process equal batches.
            ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
        else:
            # Streaming shards are disjoint but uneven: pad to equal size, gather, drop the padding.
            padded = [accelerator.pad_across_processes(t, dim=0, pad_index=-1) for t in (ranked, labels, losses)]
            ranked, labels, losses = accelerator.gather(padded)
            keep = labels >= 0
            ranked, labels, losses = ranked[keep], labels[keep], losses[keep]
        metric.add_batch(predictions=ranked.cpu().numpy(), references=labels.cpu().numpy())
        total_loss += losses.double().sum()
    result = metric.compute(k=[1, num_ranked])
    samples = result["samples"]
    model.train(was_training)
    return {
        "eval_loss": float(total_loss) / max(samples, 1),
        "eval_top1": result["top1"],
        "eval_top5": result[f"top{num_ranked}"],
        "eval_samples": samples,
    }


def save_model_folder(accelerator, model: nn.Module, settings: PreprocessSettings, path: Path):
    """A self-contained model folder (weights, config, code, image processor), replaced atomically."""
    path = Path(path)
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed: every rank calls it
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        tmp, old = path.with_name(f".tmp_{path.name}"), path.with_name(f".old_{path.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(unwrapped, ViTCustomForImageClassification):
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
        else:
            from timm.models import save_for_hf

            save_for_hf(unwrapped, str(tmp), safe_serialization=True)
        settings.to_image_processor().save_pretrained(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def ranks_in_sync(model: nn.Module, accelerator) -> bool:
    """Whether every process holds bit-identical parameters: compares a fingerprint of their raw bits."""
    bits = torch.cat([p.detach().float().reshape(-1) for p in accelerator.unwrap_model(model).parameters()])
    bits = bits.view(torch.int32).long()
    weights = torch.arange(1, bits.numel() + 1, device=bits.device) % 1_000_003
    fingerprint = (bits * weights).sum().reshape(1)  # int64 arithmetic wraps identically on every rank
    fingerprints = accelerator.gather(fingerprint)
    return bool((fingerprints == fingerprints[0]).all())


def load_for_evaluation(args: ModelArguments, checkpoint: str | None) -> tuple[nn.Module, PreprocessSettings]:
    """A saved (or converted) model folder with its own preprocessing, or `timm:<name>` with timm's, optionally with
    weights from a checkpoint file."""
    if args.model.startswith("timm:"):
        import timm

        from .conversion import preprocess_settings_from_timm

        model = timm.create_model(args.model.removeprefix("timm:"), pretrained=False, checkpoint_path=checkpoint or "")
        return model, preprocess_settings_from_timm(model)
    if not args.model_name_or_path:
        raise ValueError("--model_name_or_path: a saved model folder is needed (or --model timm:<name>)")
    from transformers import AutoImageProcessor

    model = ViTCustomForImageClassification.from_pretrained(args.model_name_or_path)
    try:
        settings = PreprocessSettings.from_image_processor(AutoImageProcessor.from_pretrained(args.model_name_or_path))
    except OSError:  # a folder saved without its image processor: the flags give the preprocessing
        settings = args.preprocess_settings(model.config.image_size)
    return model, settings
