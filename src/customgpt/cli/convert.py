"""``customgpt convert SRC DST --to hf|customgpt``: move weights between formats.

    customgpt convert ./gpt2 ckpt/gpt2 --to customgpt        # Hugging Face folder → customgpt
    customgpt convert ckpt/gpt2 export/gpt2 --to hf          # customgpt → Hugging Face folder
    customgpt convert weights.bin ckpt/x --to customgpt --config gpt2-124M

SRC is anything ``customgpt info`` accepts (a hub id downloads first). The HF folder loads
with ``transformers.GPT2LMHeadModel.from_pretrained`` and can be uploaded by ``customgpt push``.
"""

from __future__ import annotations

import argparse

from customgpt.cli._common import add_dtype_argument, check_output_folder


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="model to read: checkpoint folder, HF folder, weights file, hub id")
    parser.add_argument("dst", metavar="DST", help="folder to write")
    parser.add_argument("--to", required=True, choices=("hf", "customgpt"), help="format to write")
    parser.add_argument("--config", default=None, help="config (preset name) for a lone weights file")
    add_dtype_argument(parser)
    parser.add_argument("--force", action="store_true", help="overwrite a model already in DST")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from customgpt import checkpoints
    from customgpt.errors import CustomGPTError

    dst = Path(args.dst)
    check_output_folder(dst, [], force=args.force)
    source = checkpoints.resolve_model_spec(args.src, config=args.config)
    if source.kind == "preset":
        raise CustomGPTError(f"{args.src!r} is a preset (random weights), not a model to convert")
    check_output_folder(dst, [source.weights.parent], force=True, what="model being converted")
    model = checkpoints.build_model(source.config, checkpoints.load_state(source), dtype=args.dtype)
    provenance = checkpoints.provenance_of(source)
    if args.to == "hf":
        checkpoints.export_hf(model, dst, provenance=provenance)
    else:
        checkpoints.save_model(model, dst, metadata={"converted_from": str(args.src), **provenance})
    print(f"wrote {args.to} model ({model.num_parameters():,} parameters) to {dst}")
    return 0
