"""``customgpt merge --adapter FOLDER --out OUT``: fold LoRA adapters into a full model.

    customgpt merge --adapter runs/lora/adapter --out runs/lora/merged            # customgpt format
    customgpt merge --base gpt2 --adapter runs/lora/adapter --out export/x --hf   # Hugging Face folder

The adapter is refused if the base's shapes or weights (sha256 checksum) differ from the base
it was saved on. The merged model is a plain GPT: it loads anywhere a base model loads.
"""

from __future__ import annotations

import argparse

from customgpt.cli._common import add_dtype_argument, check_output_folder


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="base model (checkpoint folder, HF folder, hub id); default: the one the adapter records",
    )
    parser.add_argument("--adapter", required=True, metavar="FOLDER", help="folder written by save_adapter")
    parser.add_argument("--out", required=True, metavar="OUT", help="folder to write the merged model to")
    parser.add_argument("--hf", action="store_true", help="write a Hugging Face GPT-2 folder instead")
    add_dtype_argument(parser)
    parser.add_argument("--force", action="store_true", help="overwrite a model already in OUT")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from customgpt import checkpoints, lora
    from customgpt.device import resolve_dtype
    from customgpt.errors import CustomGPTError
    from customgpt.sections import to_dict

    out = Path(args.out)
    meta = lora.read_adapter_config(args.adapter)
    base_info = meta.get("base_model") or {}
    base = args.base or base_info.get("spec")
    if not base:
        raise CustomGPTError(f"{args.adapter} does not record its base model; pass --base MODEL")
    inputs = [Path(args.adapter), Path(base).expanduser()]
    check_output_folder(out, inputs, force=args.force, what="adapter or base model")
    # A preset base means random weights: only the seed recorded with the adapter rebuilds them.
    seed = base_info.get("seed") if base == base_info.get("spec") else None
    model = checkpoints.load_model(base, seed=seed)
    # Merge in float32 (a small update added to a bf16 weight would mostly round away),
    # then write in the stored dtype unless --dtype asks for another.
    dtype = resolve_dtype(args.dtype) or model.transformer.wte.weight.dtype
    model = model.float()
    cfg = lora.load_adapter(model, args.adapter)
    lora.remove_lora(model)
    model = model.to(dtype)
    provenance = {"base model": str(base), "LoRA adapter": str(args.adapter)}
    if args.hf:
        checkpoints.export_hf(model, out, provenance=provenance)
    else:
        checkpoints.save_model(model, out, metadata={"merged_from": provenance, "lora": to_dict(cfg)})
    kind = "Hugging Face" if args.hf else "customgpt"
    print(
        f"merged LoRA (r={cfg.r}, alpha={cfg.alpha:g}, targets {', '.join(cfg.targets)}) into {base}; "
        f"wrote {kind} model ({model.num_parameters():,} parameters) to {out}"
    )
    return 0
