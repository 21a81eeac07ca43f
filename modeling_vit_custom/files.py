"""Files and folders written whole or not at all (write, then rename), JSON files read back with errors that name
them, and what a saved model folder holds."""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_path(path: str | os.PathLike) -> Path:
    """The temporary sibling a file or folder is written under before `commit` renames it into place; the same name
    on every process, so all ranks of a run can write into one staging folder."""
    path = Path(path)
    return path.with_name(f".tmp_{path.name}")


def commit(staging: Path, path: str | os.PathLike) -> Path:
    """Renames `staging` to `path`, replacing what is there. A file is renamed over the old one: `path` is at every
    moment the old complete file or the new one. A folder cannot be renamed over a non-empty one, so the old folder
    is moved aside to `.old_NAME` first and removed afterwards: between the two renames `path` does not exist (a
    reader then finds nothing, never a partial folder), and a crash there leaves the old version at `.old_NAME`."""
    path = Path(path)
    if staging.is_dir() and path.exists():
        old = path.with_name(f".old_{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)
    return path


@contextmanager
def replacing(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yields a staging path beside `path` (a fresh empty folder with `folder=True`); when the block completes, the
    staged file or folder replaces `path` (`commit`: a file atomically, a folder with a moment where `path` is
    absent); when it raises, the staging is removed and `path` is left as it was. The staging name holds the process
    id, so two processes writing the same file (two runs filling one cache) each commit a whole copy instead of
    renaming each other's."""
    path = Path(path)
    staging = path.with_name(f".tmp_{os.getpid()}_{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    if folder:
        staging.mkdir()
    try:
        yield staging
        commit(staging, path)
    finally:
        _remove(staging)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with replacing(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data, path: str | os.PathLike) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


class OutputExistsError(FileExistsError, ValueError):
    """An output path that is taken: a file where a folder goes, or a non-empty folder without `overwrite`."""


def check_output_folder(path: str | os.PathLike, overwrite: bool, flag: str = "output_dir") -> Path:
    """Refuses a file, or a non-empty folder unless `overwrite`: an export is written to a new or empty folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{flag}: expected a folder, got the file {path}")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{flag}: expected a new or empty folder, got non-empty {path} (pass overwrite)")
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; anything else is an error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: expected a JSON object, got invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def is_timm_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder that timm's `save_for_hf` wrote (a `--model timm:<name>` run's best/ or final/):
    its config.json names a timm `architecture` and no transformers `model_type`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    fields = read_json(config)
    return "architecture" in fields and "model_type" not in fields


def check_model_folder(model_dir: Path, label: str, files: tuple[str, ...] = ("config.json",)) -> None:
    """Refuses, naming `label` (the flag or argument), what is not a saved vit-custom model folder with `files`: a
    missing file, or a timm run's folder, with the command that converts it."""
    for name in files:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{label}: expected a saved model folder with {name}, got {model_dir}")
    if is_timm_folder(model_dir):
        raise ValueError(
            f"{label}: expected a vit-custom model folder, got a timm one, {model_dir} (a `--model timm:<name>` "
            f"run's): convert it first with `python scripts/convert_timm.py --timm_model local-dir:{model_dir} "
            "--pretrained --output_dir DIR` (scripts/evaluate_model.py reads it as it is)"
        )


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files: `model.safetensors`, or the shards its index names (other safetensors files
    in the folder, an EMA copy say, are not the model)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(read_json(index).get("weight_map", {}).values()))]
    return [model_dir / "model.safetensors"] if (model_dir / "model.safetensors").is_file() else []
