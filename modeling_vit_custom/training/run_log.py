"""A run directory's log: metrics.jsonl (one JSON object per event), run_config.json and training_curves.png, written
by `scripts/train.py` and read back, with the same event and field names, by the plot and the model card."""

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_json, replacing, write_json, write_text
from .arguments import to_jsonable

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
CURVES_FILE = "training_curves.png"
TRAIN_EVENT, EVAL_EVENT, SUMMARY_EVENT = "train", "eval", "summary"
# What a run writes into its output_dir (TensorBoard's logs go to a folder named after the project).
RUN_ENTRIES = (METRICS_FILE, RUN_CONFIG_FILE, CURVES_FILE, "checkpoints", "best", "final", "final_ema", "vit_custom")


@dataclass
class RunSummary:
    """The last event of a finished run: top-1 / top-5 for a single-label run, mAP / F1 for a multi-label one."""

    best_eval_top1: float | None = None
    best_step: int | None = None
    final_eval_top1: float | None = None
    final_eval_top5: float | None = None
    final_eval_ema_top1: float | None = None
    best_eval_map: float | None = None
    final_eval_map: float | None = None
    final_eval_f1: float | None = None
    final_eval_ema_map: float | None = None
    train_runtime_s: float | None = None
    # This run's training images (all processes) and its seconds per phase of the loop (training.timing.PHASES).
    train_images: int | None = None
    phase_seconds: dict | None = None
    total_steps: int | None = None
    ranks_in_sync: bool | None = None

    @classmethod
    def at_end(cls, best, result: dict, multi_label: bool, **facts) -> "RunSummary":
        """The summary of a run whose last evaluation is `result` and whose best is `best` (a `tracking.BestModel`);
        `facts`: the other fields (runtime, images, phase seconds, steps, whether the ranks ended in sync)."""
        return cls(
            best_eval_top1=None if multi_label else best.score,
            best_eval_map=best.score if multi_label else None,
            best_step=best.step,
            final_eval_top1=result.get("eval_top1"),
            final_eval_top5=result.get("eval_top5"),
            final_eval_ema_top1=result.get("eval_ema_top1"),
            final_eval_map=result.get("eval_map"),
            final_eval_f1=result.get("eval_f1"),
            final_eval_ema_map=result.get("eval_ema_map"),
            **facts,
        )


def run_settings(*dataclass_objects) -> dict:
    """The run's flags as run_config.json and each checkpoint record them, and as a resume compares them (JSON's
    types: a tuple reads back as a list)."""
    return json.loads(json.dumps(to_jsonable(*dataclass_objects)))


def write_run_config(output_dir: Path, settings: dict, **facts) -> None:
    """run_config.json: the flags and what the run made of them (`facts`: process count, effective rate, device)."""
    write_json({**settings, **facts}, output_dir / RUN_CONFIG_FILE)


def start_record(accelerator, output_dir: Path, settings: dict, overwrite: bool, **facts) -> None:
    """Once the run is accepted: clears a run it overwrites, writes run_config.json (the flags, `facts` and how the
    processes run: their count, precision, device, distribution) and starts the trackers with the same values."""
    import torch

    device = accelerator.device
    facts = {
        **facts,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "distributed_type": accelerator.distributed_type.value,
    }
    if accelerator.is_main_process:
        if overwrite:
            clear_previous_run(output_dir)
        write_run_config(output_dir, settings, **facts)
    accelerator.wait_for_everyone()
    accelerator.init_trackers("vit_custom", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in {**settings, **facts}.items()})  # fmt: skip


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, event: str, **values):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, **values}) + "\n")

    def write_summary(self, summary: RunSummary):
        self.write(SUMMARY_EVENT, **dataclasses.asdict(summary))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Every event of a metrics.jsonl, in order; a line that is not a JSON object is an error naming the line."""
    path = Path(path)
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {line[:80]!r}")
        events.append(event)
    return events


@dataclass
class RunRecord:
    """What a training run directory (`scripts/train.py`'s output_dir) says about the model trained in it."""

    run_dir: Path
    config: dict = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    summary: RunSummary | None = None
    curves: Path | None = None

    def result_for(self, model_dir: Path) -> dict | None:
        """The evaluation of the checkpoint in `model_dir`: the best one for `run_dir/best`, else the last one."""
        if not self.evals and self.summary is None:
            return None
        is_best = model_dir.resolve() == (self.run_dir / "best").resolve()
        summary = self.summary or RunSummary()
        if is_best and summary.best_step is not None:
            match = next((e for e in self.evals if e.get("step") == summary.best_step), {})
            return {
                "checkpoint": "best",
                "step": summary.best_step,
                "top1": _first(summary.best_eval_top1, match.get("eval_top1")),
                "top5": match.get("eval_top5"),
                "map": _first(summary.best_eval_map, match.get("eval_map")),
                "f1": match.get("eval_f1"),
                "samples": match.get("eval_samples"),
            }
        last = self.evals[-1] if self.evals else {}
        return {
            "checkpoint": "final",
            "step": _first(summary.total_steps, last.get("step")),
            "top1": _first(summary.final_eval_top1, last.get("eval_top1")),
            "top5": _first(summary.final_eval_top5, last.get("eval_top5")),
            "map": _first(summary.final_eval_map, last.get("eval_map")),
            "f1": _first(summary.final_eval_f1, last.get("eval_f1")),
            "samples": last.get("eval_samples"),
        }


def _first(*values):
    return next((value for value in values if value is not None), None)


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Reads run_config.json, metrics.jsonl and training_curves.png from a run directory; each is optional."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: expected a training run directory, got {run_dir} (not a directory)")
    record = RunRecord(run_dir=run_dir)
    if (run_dir / RUN_CONFIG_FILE).is_file():
        record.config = read_json(run_dir / RUN_CONFIG_FILE)
    if (run_dir / METRICS_FILE).is_file():
        known = {f.name for f in dataclasses.fields(RunSummary)}
        for event in read_metrics(run_dir / METRICS_FILE):
            if event.get("event") == EVAL_EVENT:
                record.evals.append(event)
            elif event.get("event") == SUMMARY_EVENT:
                record.summary = RunSummary(**{k: v for k, v in event.items() if k in known})
    if (run_dir / CURVES_FILE).is_file():
        record.curves = run_dir / CURVES_FILE
    return record


def plot_metrics(metrics_path: Path, output_path: Path):
    """Loss, accuracy and learning rate against step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(metrics_path)
    train = [e for e in events if e["event"] == TRAIN_EVENT]
    evals = [e for e in events if e["event"] == EVAL_EVENT]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], label="train")
    axes[0].plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval")
    axes[0].set(title="loss", xlabel="step")
    curves = [("eval_top1", "o-", "top-1"), ("eval_top5", "o-", "top-5"), ("eval_ema_top1", "s--", "EMA top-1")]
    curves += [("eval_map", "o-", "mAP"), ("eval_f1", "o-", "F1 at 0.5"), ("eval_ema_map", "s--", "EMA mAP")]
    for key, style, label in curves:
        logged = [e for e in evals if key in e]
        if logged:
            axes[1].plot([e["step"] for e in logged], [100 * e[key] for e in logged], style, label=label)
    axes[1].set(title="eval (%)", xlabel="step")
    axes[2].plot([e["step"] for e in train], [e["lr"] for e in train])
    axes[2].set(title="learning rate", xlabel="step")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    with replacing(output_path) as staging:
        fig.savefig(staging, dpi=100, format="png")
    plt.close(fig)


def check_output_dir(output_dir: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuses an output_dir that holds a previous run unless the run is resumed or to be replaced (transformers'
    convention), so that no metrics.jsonl gets two runs and no best/ or final/ is overwritten unasked."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir}: expected a folder, got a file")
    previous = [name for name in RUN_ENTRIES if (output_dir / name).exists()]
    if previous and not resume and not overwrite and (output_dir / "final").is_dir():
        result = read_run(output_dir).result_for(output_dir / "final") or {}
        score = (
            f"top-1 {100 * result['top1']:.2f}%"
            if result.get("top1") is not None
            else f"mAP {100 * result['map']:.2f}%"
            if result.get("map") is not None
            else "no evaluation"
        )
        raise FileExistsError(
            f"--output_dir {output_dir}: holds a finished run ({score} after {result.get('step')} steps, model in "
            f"{output_dir / 'final'}); to train again pass --overwrite_output_dir (or another --output_dir), or "
            "--resume_from_checkpoint latest with a larger --num_train_epochs to extend it"
        )
    if previous and not resume and not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir}: expected a new or empty folder, got one holding a previous run "
            f"({', '.join(previous)}); pass --resume_from_checkpoint latest to continue it, or --overwrite_output_dir "
            "to replace it"
        )


def clear_previous_run(output_dir: str | os.PathLike) -> None:
    """Removes what an earlier run wrote into output_dir (and nothing else there)."""
    for name in RUN_ENTRIES:
        path = Path(output_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Keeps the events up to `step`: a run resumed from the checkpoint at `step` logs the later steps again."""
    path = Path(path)
    if path.is_file():
        events = [e for e in read_metrics(path) if e.get("step", e.get("total_steps", 0)) <= step]
        write_text(path, "".join(json.dumps(event) + "\n" for event in events))
