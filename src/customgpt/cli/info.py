"""``customgpt info MODEL``: a model's config, parameter counts and where it comes from.

    customgpt info cpu-tiny
    customgpt info runs/sms/final            # a customgpt checkpoint folder
    customgpt info ./gpt2                    # a Hugging Face GPT-2 folder
    customgpt info gpt2 --json               # a hub id (described from its preset if offline)

Only the config and the safetensors header are read, never the tensors.
"""

from __future__ import annotations

import argparse


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="preset name, checkpoint folder, weights file or hub id")
    parser.add_argument("--config", default=None, help="config (preset name) for a lone weights file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from customgpt.checkpoints import describe_model_spec

    info = describe_model_spec(args.model, config=args.config)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    cfg = info.config
    rows = [
        ("model", info.spec),
        ("source", info.source),
        ("dtype", info.dtype or "unknown"),
        ("", ""),
        ("vocab_size", f"{cfg.vocab_size:,}"),
        ("context_length", f"{cfg.context_length:,}"),
        ("n_embd", str(cfg.n_embd)),
        ("n_layer", str(cfg.n_layer)),
        ("n_head", f"{cfg.n_head} (head width {cfg.head_dim})"),
        ("mlp hidden", f"{cfg.n_inner} ({cfg.mlp_ratio} x n_embd)"),
        ("bias", str(cfg.bias).lower()),
        ("tied LM head", str(cfg.tie_embeddings).lower()),
        ("dropout", str(cfg.dropout)),
        ("", ""),
        ("parameters", f"{info.parameters:,}"),
        ("  embedding", f"{info.embedding_parameters:,} (token + position)"),
        ("  non-embedding", f"{info.non_embedding_parameters:,}"),
    ]
    for key in ("training run", "source weights", "run", "step"):
        if key in info.metadata:
            rows.append((key, str(info.metadata[key])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}".rstrip())
    return 0
