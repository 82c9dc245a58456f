#!/usr/bin/env python
"""Push a distilled student folder (written by scripts/distill.py) to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py outputs/mbv2-acamkd your-name/deeplabv3-mbv2-acamkd-cityscapes [--private]

Uploads exactly the student's files (config, safetensors weights, image processor, modeling code), the model card
(README.md, re-rendered from the run's record), run_config.json, metrics.json and the training log
(trainer_state.json). Never the teacher, never checkpoints, the distillation modules only with
--include_distillation_modules. The token comes from `hf auth login` or HF_TOKEN; it is never printed.
"""

from __future__ import annotations

import argparse
import sys

from acamkd_hf.hub import HubPushError, files_to_push, push_student, write_model_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="the student folder written by scripts/distill.py")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/model-name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--include_distillation_modules", action="store_true",
                        help="also upload the adapters/fusion/selection units of the latest checkpoint")
    parser.add_argument("--dry_run", action="store_true", help="render the card and list the files; upload nothing")
    args = parser.parse_args(argv)
    try:
        write_model_card(args.output_dir, repo_id=args.repo_id)  # the card names the repository it lives in
        if args.dry_run:
            print("\n".join(files_to_push(args.output_dir, args.include_distillation_modules)))
            return 0
        url = push_student(args.output_dir, args.repo_id, private=args.private or None, revision=args.revision,
                           include_distillation_modules=args.include_distillation_modules)
    except (HubPushError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
