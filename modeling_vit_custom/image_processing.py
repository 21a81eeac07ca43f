"""The image processor saved with every model folder, and the preprocessing settings read back from it (or from
timm's data config)."""

from dataclasses import dataclass

from PIL import Image
from transformers import ConvNextImageProcessor

# timm's interpolation names -> PIL resampling filters (what `resample` holds in a transformers image processor).
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSettings:
    """timm-style evaluation preprocessing: resize the short side to image_size / crop_pct, center-crop image_size."""

    image_size: int = 224
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: expected one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct: expected a value in (0, 1], got {self.crop_pct!r}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std: expected the same length, got {len(self.mean)} and {len(self.std)}")

    @property
    def num_channels(self) -> int:
        """Channels of the images these settings normalize: one mean and one std per channel."""
        return len(self.mean)

    def to_image_processor(self) -> ConvNextImageProcessor:
        """ConvNeXT's processor implements exactly this transform (short side to size / crop_pct, center crop) for
        sizes below 384. At 384 and above it resizes straight to size x size: the same as timm's crop_pct 1.0 for
        square images, a squeeze instead of a center crop for the others (a known difference)."""
        return ConvNextImageProcessor(
            size={"shortest_edge": self.image_size},
            crop_pct=self.crop_pct,
            resample=INTERPOLATIONS[self.interpolation],
            image_mean=list(self.mean),
            image_std=list(self.std),
            # A 1-channel model takes grayscale images as they are (transformers' pipeline still sends RGB, so a
            # 1-channel model is for direct use; 3 channels work everywhere).
            do_convert_rgb=self.num_channels == 3,
        )

    @classmethod
    def from_image_processor(cls, processor) -> "PreprocessSettings":
        """The settings of a saved image processor: ours (`size={"shortest_edge"}` and `crop_pct`, timm's transform),
        or transformers' ViT one (`size={"height", "width"}`, no crop_pct), which resizes straight to height x width.
        A square one is read as crop_pct 1.0: the same for square images; for other images it squeezes where
        this center-crops the short side's square (a known difference)."""
        resample = processor.resample
        interpolation = next(name for name, value in INTERPOLATIONS.items() if value == resample)
        size = processor.size
        if size.get("shortest_edge") is not None:
            image_size, crop_pct = size["shortest_edge"], processor.crop_pct
        elif size.get("height") is not None and size.get("height") == size.get("width"):
            image_size, crop_pct = size["height"], 1.0
        else:
            raise ValueError(
                f"{type(processor).__name__}.size: expected {{'shortest_edge': N}} or a square "
                f"{{'height': N, 'width': N}}, got {dict(size)}"
            )
        return cls(
            image_size=image_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            mean=tuple(processor.image_mean),
            std=tuple(processor.image_std),
        )

    @classmethod
    def from_timm(cls, model) -> "PreprocessSettings":
        """The evaluation preprocessing of timm's pretrained config for `model` (what timm's validate.py applies)."""
        from timm.data import resolve_data_config

        data_config = resolve_data_config({}, model=model)
        if data_config.get("crop_mode", "center") != "center":
            raise ValueError(f"timm data config: expected crop_mode 'center', got {data_config['crop_mode']!r}")
        _, height, width = data_config["input_size"]
        if height != width:
            raise ValueError(f"timm data config: expected a square input_size, got {data_config['input_size']}")
        interpolation = data_config["interpolation"]
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"timm data config: expected interpolation in {sorted(INTERPOLATIONS)}, got {interpolation!r}"
            )
        return cls(
            image_size=height,
            crop_pct=data_config["crop_pct"],
            interpolation=interpolation,
            mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]),
        )
