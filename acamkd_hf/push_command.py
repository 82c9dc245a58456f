"""``acamkd-push`` (and ``scripts/push_to_hub.py``): a finished student folder to the Hub, with its model card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .hub import HubPushError, push_student, upload_contents


def dry_run_report(output_dir: str, repo_id: str, include_distillation_modules: bool, private: bool,
                   revision: str | None) -> str:
    """``acamkd-push --dry_run``: the target repository, each file with its size as uploaded (records without local
    paths, the card rendered for ``repo_id``), and the card."""
    uploads = upload_contents(output_dir, repo_id, include_distillation_modules)
    lines = [f"would push to https://huggingface.co/{repo_id}" + (f" (branch {revision})" if revision else "")
             + (" as a private repository" if private else "") + f": {len(uploads)} files, nothing uploaded"]
    lines += [f"  {name:<40} {_size(content):>12}" for name, content in uploads.items()]
    lines += ["", "README.md (the model card):", "", uploads["README.md"].decode()]
    return "\n".join(lines)

def _size(content: bytes | str) -> str:
    count = len(content) if isinstance(content, bytes) else Path(content).stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def main(argv: list[str] | None = None) -> int:
    """``acamkd-push`` (and ``scripts/push_to_hub.py``): uploads exactly the student's files, run_config.json,
    metrics.json and the training log (:func:`acamkd_hf.hub.files_to_push`), with the card rendered for the Hub
    repository (its usage snippet names ``repo_id``). The local folder is never modified. Returns the exit status:
    1, with the reason, when it cannot push."""
    parser = argparse.ArgumentParser(
        prog="acamkd-push",
        description="Push a distilled student folder (written by acamkd-distill) to the Hugging Face Hub, with its "
        "model card. The local folder is not modified.",
    )
    parser.add_argument("output_dir", help="the student folder written by acamkd-distill")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/model-name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--include_distillation_modules", action="store_true",
                        help="also upload the adapters/fusion/selection units of the latest checkpoint")
    parser.add_argument("--dry_run", action="store_true",
                        help="list the files a push would upload (the card rendered for REPO_ID among them); upload "
                        "and write nothing")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:  # what a push would upload, where, and the card itself; uploads and writes nothing
            print(dry_run_report(args.output_dir, args.repo_id, args.include_distillation_modules, args.private,
                                 args.revision))
            return 0
        url = push_student(args.output_dir, args.repo_id, private=args.private or None, revision=args.revision,
                           include_distillation_modules=args.include_distillation_modules)
    except (HubPushError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


__all__ = ["dry_run_report", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
