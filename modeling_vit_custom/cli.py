"""What every script does alike: its log shows our INFO lines and the libraries' warnings, not their bookkeeping; a
refusal is one line, as argparse prints its own."""

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def setup_logging(timestamps: bool = False) -> None:
    """INFO for the script and this package; WARNING for the libraries (accelerate's seven lines per checkpoint,
    transformers' "Writing model shards" bar for a folder of a few megabytes)."""
    import transformers

    time = "%(asctime)s " if timestamps else ""
    logging.basicConfig(format=f"{time}%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in ("__main__", "modeling_vit_custom"):
        logging.getLogger(name).setLevel(logging.INFO)
    transformers.utils.logging.disable_progress_bar()


def run_cli(prog: str, main: Callable[[], object]) -> int:
    """Runs a script's `main` and returns its exit code. A refusal raised by this project's code (a ValueError or
    OSError from its own lines, or one of its own error types) prints `prog: error: <reason>` once, on the main
    process, and gives 2, as argparse does; a run stopped by a non-finite loss gives 1 the same way. Anything else is
    a crash and keeps its traceback."""
    try:
        main()
    except (ValueError, OSError, RuntimeError, ArithmeticError) as error:
        if not is_refusal(error):
            raise
        if os.environ.get("RANK", "0") == "0":  # every process refuses alike: the first one says it
            print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return 2 if isinstance(error, (ValueError, OSError)) else 1
    return 0


def is_refusal(error: BaseException) -> bool:
    """Whether `error` is this project's own refusal or stop, not a crash: an error type of this package, a
    FloatingPointError (the finite-loss guard), or a ValueError or OSError raised by a line of this package or of the
    running script."""
    if type(error).__module__.startswith("modeling_vit_custom") or isinstance(error, FloatingPointError):
        return True
    if not isinstance(error, (ValueError, OSError)):
        return False
    traceback = error.__traceback__
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    raised_in = Path(traceback.tb_frame.f_code.co_filename).resolve()
    script = Path(getattr(sys.modules["__main__"], "__file__", "") or "").resolve()
    return raised_in.is_relative_to(PACKAGE) or raised_in == script
