"""Export a saved model as a Hub repository (model card included), verify it, and upload it or build it locally."""

import argparse
import logging
import sys
from pathlib import Path

from modeling_vit_custom.cli import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="The token comes from HF_TOKEN or `hf auth login`; it is never passed on the command line.",
    )
    parser.add_argument("model_dir", type=Path, help="A saved model folder: training's final/ or best/, a conversion.")
    parser.add_argument("--run_dir", type=Path, help="The training run's output_dir: metrics, settings and curves.")
    parser.add_argument("--comparison", type=Path, help="comparison.json from compare_timm.py (default: run_dir's).")
    parser.add_argument("--output_dir", type=Path, help="Build the repository folder here (no upload without ID).")
    parser.add_argument("--hub_model_id", help="Repository to create or update, e.g. `user/vit-custom-fashion-mnist`.")
    parser.add_argument("--dry_run", action="store_true", help="Build and verify, but do not upload.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision_tag", help="Tag the upload commit with this name; the card's snippet pins it.")
    parser.add_argument("--commit_message", help="Message of the upload commit.")
    parser.add_argument("--license", default="apache-2.0", help="License identifier for the card's metadata.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty output_dir.")
    parser.add_argument(
        "--template", type=Path, help="Model card template (default: the package's interop/model_card.md)."
    )
    parser.add_argument("--model_name", help="The card's title (default: --hub_model_id); needed without it.")
    parser.add_argument(
        "--dataset_label", help="How the card names the data (default: the run's Hub id or train folder's parent)."
    )
    parser.add_argument(
        "--attention_image",
        type=Path,
        help="Image whose attention map the card shows (default: the first of the run's validation folder).",
    )
    parser.add_argument(
        "--space_dir",
        type=Path,
        help="Also write a Gradio Space here that serves --hub_model_id at --revision_tag, checked by starting its "
        "app locally and classifying an image through it (upload it with `hf upload --repo-type space SPACE_ID DIR`).",
    )
    args = parser.parse_args(argv)
    if args.space_dir is not None and (args.hub_model_id is None or args.revision_tag is None):
        parser.error("--space_dir: expected --hub_model_id and --revision_tag (what the Space serves), got not both")
    if args.output_dir is None and args.hub_model_id is None:
        parser.error("expected --output_dir (build only) or --hub_model_id (upload), got neither")
    if args.hub_model_id is None and args.model_name is None:
        parser.error("--model_name: expected a name for the card's title when there is no --hub_model_id, got none")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from modeling_vit_custom.interop.card import DEFAULT_TEMPLATE_PATH
    from modeling_vit_custom.interop.hub import push_run

    try:
        result = push_run(
            args.model_dir,
            args.run_dir,
            args.hub_model_id,
            private=args.private,
            revision_tag=args.revision_tag,
            dry_run=args.dry_run,
            output_dir=args.output_dir,
            comparison_path=args.comparison,
            commit_message=args.commit_message,
            license=args.license,
            overwrite=args.overwrite,
            template_path=args.template or DEFAULT_TEMPLATE_PATH,
            model_name=args.model_name,
            dataset_label=args.dataset_label,
            attention_image=args.attention_image,
            space_dir=args.space_dir,
        )
    except (OSError, ValueError, RuntimeError) as error:
        # Bad input, offline upload or a failed verification: the message says which; a traceback adds nothing.
        logging.getLogger("push_to_hub").error("%s", error)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
