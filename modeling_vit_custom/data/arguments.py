"""The data flags of the scripts: where the images come from and how training augments them (no heavy imports, so
`--help` answers at once)."""

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Where the images come from. Exactly one source is used: dataset_path, else train_dir/validation_dir, else
    train_file/validation_file, else dataset_name. The validation split falls back to "test" when the source has no
    `validation_split` (Fashion-MNIST), then to a stratified `val_split_fraction` of train."""

    dataset_name: str | None = "ILSVRC/imagenet-1k"
    dataset_config_name: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    dataset_path: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    image_column_name: str | None = None
    label_column_name: str | None = None
    val_split_fraction: float | None = None
    streaming: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    cache_dir: str | None = None
    max_bad_image_fraction: float = 0.01
    # How the model card names the data (default: the Hub id, else the train folder's parent folder name).
    dataset_label: str | None = None
    # Decode every image once and keep it in memory (on the GPU when training on one), augmenting whole batches there:
    # "auto" does it for datasets up to data_in_memory_max_gb whose augmentations can be batched.
    data_in_memory: str = "auto"
    data_in_memory_max_gb: float = 4.0

    def __post_init__(self):
        sources = (self.dataset_name, self.train_dir, self.validation_dir, self.train_file, self.validation_file)
        if not any((*sources, self.dataset_path)):
            raise ValueError(
                "DataArguments: expected one of dataset_name, train_dir, validation_dir, train_file, validation_file "
                "or dataset_path"
            )
        if self.val_split_fraction is not None and not 0.0 < self.val_split_fraction < 1.0:
            raise ValueError(f"val_split_fraction: expected a value in (0, 1), got {self.val_split_fraction!r}")
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise ValueError(
                f"max_bad_image_fraction: expected a value in [0, 1], got {self.max_bad_image_fraction!r}"
            )
        if self.data_in_memory not in ("auto", "true", "false"):
            raise ValueError(f"data_in_memory: expected 'auto', 'true' or 'false', got {self.data_in_memory!r}")
        if not self.data_in_memory_max_gb >= 0:
            raise ValueError(f"data_in_memory_max_gb: expected a size in GiB >= 0, got {self.data_in_memory_max_gb!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")

    @property
    def source(self) -> str:
        """Which source is read, in the order of precedence: "dataset_path", "dirs", "files" or "hub"."""
        if self.dataset_path:
            return "dataset_path"
        if self.train_dir or self.validation_dir:
            return "dirs"
        if self.train_file or self.validation_file:
            return "files"
        return "hub"

    @property
    def hub_dataset_name(self) -> str | None:
        """The Hub dataset read, or None when a local source takes precedence over `dataset_name`."""
        return self.dataset_name if self.source == "hub" else None


@dataclass
class AugmentArguments:
    """Training augmentation (timm's `create_transform` and `Mixup`); every piece is off at 0 / None / ""."""

    # A list so that it parses as a command-line flag (`--train_crop_scale 0.08 1.0`); stored as a tuple.
    train_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    # timm ignores color jitter when RandAugment is on, as DeiT does.
    color_jitter: float | None = None
    random_erasing: float = 0.25
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    # DeiT's repeated augmentation: each image this many times an epoch, its copies on different processes.
    repeated_augmentation: int = 1

    def __post_init__(self):
        self.train_crop_scale = tuple(float(s) for s in self.train_crop_scale)
        low_high = self.train_crop_scale
        if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] <= 1.0:
            raise ValueError(f"train_crop_scale: expected (low, high) with 0 < low <= high <= 1, got {low_high}")
        for name in ("hflip", "random_erasing", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name}: expected a non-negative Beta alpha (0 disables), got {getattr(self, name)!r}"
                )
        if self.repeated_augmentation < 1:
            raise ValueError(
                "repeated_augmentation: expected a positive integer (1 = off, DeiT uses 3), got "
                f"{self.repeated_augmentation!r}"
            )
        if self.randaugment and not self.randaugment.startswith("rand"):
            raise ValueError(
                f"randaugment: expected a timm RandAugment string such as 'rand-m9-mstd0.5-inc1', got "
                f"{self.randaugment!r}"
            )
