"""The runs `scripts/benchmark_loop.py` times, as files of a repository checkout: it launches the checkout's
`scripts/train.py` on its `configs/`, which no wheel ships, so the caller names the checkout (no torch here, so the
script's `--help` lists them at once)."""

from pathlib import Path

TRAIN_SCRIPT = "scripts/train.py"
ACCELERATE_CONFIG = "configs/accelerate/cpu.yaml"
# ViT-S/16 (DeiT-S) with DeiT's recipe, on generated 224 px JPEGs decoded and augmented in DataLoader workers.
VIT_S16 = (
    "--model_config_overrides", "hidden_size=384,num_hidden_layers=12,num_attention_heads=6,intermediate_size=1536",
    "--repeated_augmentation", "1", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
)  # fmt: skip
# name: (its recipe in the checkout, flags on top)
RECIPES = {
    "quickstart": ("configs/quickstart.yaml", ()),
    "vit_s16_generated": ("configs/deit_base_patch16_224.yaml", VIT_S16),
}


def check_checkout(checkout: Path, recipes: list[str]) -> None:
    """Refuses a folder that lacks what the benchmark runs, naming each missing file."""
    needed = [TRAIN_SCRIPT, ACCELERATE_CONFIG] + [RECIPES[name][0] for name in recipes]
    missing = [name for name in needed if not (checkout / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{checkout}: expected a vit-custom repository checkout (the loop benchmark runs its train script and "
            f"recipes), missing {missing}"
        )


def recipe_argv(name: str, checkout: Path, data_root: Path | None) -> list[str]:
    """The train script's flags for the recipe `name`; the generated one reads its images from `data_root`."""
    config, flags = RECIPES[name]
    argv = ["--config", str(checkout / config), *flags]
    if name == "vit_s16_generated":
        argv += ["--train_dir", str(data_root / "train"), "--validation_dir", str(data_root / "validation")]
    return argv
