"""Which of timm's ViT architectures convert to vit-custom and back with the same logits, and why the rest do not."""

import re
from dataclasses import asdict, dataclass

import timm
import torch
from timm.models import vision_transformer

from .timm_conversion import from_timm, max_abs_logit_diff, to_timm

TOLERANCE = 1e-4  # max |logit difference| at fp32 for a conversion to count
# A small network of each architecture (its features, not its size), for a test that converts every one quickly.
SMALL = {"embed_dim": 96, "num_heads": 4}
NUM_CLASSES = 10  # every architecture gets a head (timm's feature-extractor tags have none) to compare logits


@dataclass
class Coverage:
    """One architecture: `status` is "converted" (both ways within TOLERANCE), "wrong logits" or "refused" (with
    the refusal's reason); the two differences are timm -> ours and ours -> timm."""

    architecture: str
    status: str
    reason: str = ""
    timm_to_ours: float | None = None
    ours_to_timm: float | None = None


def architectures() -> list[str]:
    """Every architecture defined in timm's vision_transformer.py (the names of its default_cfgs)."""
    return sorted({name.split(".")[0] for name in vision_transformer.default_cfgs})


def patch_size_of(name: str) -> int:
    match = re.search(r"patch(\d+)", name)
    return int(match.group(1)) if match else 16


@torch.no_grad()
def check_architecture(name: str, small: bool = False, seed: int = 0) -> Coverage:
    """Builds `name` with random weights at depth 1 with a head of NUM_CLASSES (`small`: also SMALL's width and a
    2 x 2 patch grid), converts
    it to vit-custom and the result back to timm, and compares the logits on one random image each way."""
    overrides = {"depth": 1, "num_classes": NUM_CLASSES}
    if small:
        overrides |= SMALL | {"img_size": 2 * patch_size_of(name)}
    torch.manual_seed(seed)
    source = timm.create_model(name, pretrained=False, **overrides).eval()
    try:
        ours = from_timm(source)
    except ValueError as error:
        return Coverage(name, "refused", str(error).split("does not have: ")[-1])
    size = ours.config.image_size
    pixels = torch.randn(1, ours.config.num_channels, size, size, generator=torch.Generator().manual_seed(seed))
    forward = max_abs_logit_diff(ours, source, pixels)
    backward = max_abs_logit_diff(to_timm(ours), ours, pixels)
    status = "converted" if max(forward, backward) <= TOLERANCE else "wrong logits"
    return Coverage(name, status, "", forward, backward)


def coverage_table(rows: list[Coverage], machine: str = "", small: bool = False) -> str:
    """Markdown: the counts, then one line per architecture."""
    counts = {status: sum(row.status == status for row in rows) for status in ("converted", "wrong logits", "refused")}
    lines = [
        "# timm ViT coverage",
        "",
        f"Every architecture of timm {timm.__version__}'s `vision_transformer.py` (its `default_cfgs`), built with "
        f"random weights at depth 1 and a {NUM_CLASSES}-class head"
        + (f" ({SMALL['embed_dim']} wide, {SMALL['num_heads']} heads, a 2 x 2 patch grid)" if small else "")
        + ", converted to vit-custom and back (`scripts/timm_coverage.py`"
        + (" --small, as `tests/test_timm_coverage.py`" if small else "")
        + "). A conversion counts when the logits agree "
        f"within {TOLERANCE:g} (fp32) both ways.{f' Machine: {machine}.' if machine else ''}",
        "",
        f"**{counts['converted']} of {len(rows)} converted ({100 * counts['converted'] / len(rows):.1f}%)**, "
        f"{counts['wrong logits']} with wrong logits, {counts['refused']} refused.",
        "",
        "| Architecture | Status | timm -> ours | ours -> timm | Why not |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        diffs = [f"{value:.1e}" if value is not None else "" for value in (row.timm_to_ours, row.ours_to_timm)]
        lines.append(f"| `{row.architecture}` | {row.status} | {diffs[0]} | {diffs[1]} | {row.reason} |")
    return "\n".join(lines) + "\n"


def as_dicts(rows: list[Coverage]) -> list[dict]:
    return [asdict(row) for row in rows]
