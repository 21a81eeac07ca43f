"""What every script does alike: its log shows our INFO lines and the libraries' warnings, not their bookkeeping."""

import logging


def setup_logging(timestamps: bool = False) -> None:
    """INFO for the script and this package; WARNING for the libraries (accelerate's seven lines per checkpoint,
    transformers' "Writing model shards" bar for a folder of a few megabytes)."""
    import transformers

    time = "%(asctime)s " if timestamps else ""
    logging.basicConfig(format=f"{time}%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in ("__main__", "modeling_vit_custom"):
        logging.getLogger(name).setLevel(logging.INFO)
    transformers.utils.logging.disable_progress_bar()
