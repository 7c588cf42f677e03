"""``customgpt push FOLDER REPO_ID [--private]``: upload an exported Hugging Face folder.

    customgpt convert runs/sms/final export/sms --to hf
    customgpt push export/sms your-name/gpt2-sms --private

Needs a token: ``hf auth login`` (older hub clients: ``huggingface-cli login``) or HF_TOKEN.
"""

from __future__ import annotations

import argparse


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="folder written by `customgpt convert ... --to hf`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="hub repository, user/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", default="Upload GPT-2 model exported by customgpt", help="commit message")


def run(args: argparse.Namespace) -> int:
    from customgpt.hub import push_to_hub

    url = push_to_hub(args.folder, args.repo_id, private=args.private, commit_message=args.message)
    print(f"pushed {args.folder} to {url}")
    return 0
