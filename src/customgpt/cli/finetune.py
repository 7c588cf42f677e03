"""``customgpt finetune TASK``: fine-tune a model from a YAML config plus dotted overrides.

    customgpt finetune classify                                   # the spam-small preset
    customgpt finetune classify --config spam-124m --data.data_dir /path/to/datasets
    customgpt finetune classify --config my.yaml --train.lr 1e-4 --logging.out_dir runs/x
"""

from __future__ import annotations

import argparse
import importlib

#: task -> (module, config schema, training function, default config, one-line help)
TASKS: dict[str, tuple[str, str, str, str, str]] = {
    "classify": (
        "customgpt.train.classify", "ClassifyConfig", "finetune_classify", "spam-small",
        "train a text classifier (spam vs ham, or any labelled CSV/TSV/JSONL)",
    ),
    "instruct": (
        "customgpt.train.instruct", "InstructConfig", "finetune_instruct", "instruct-small",
        "instruction fine-tuning (Alpaca-style records), then greedy test responses and their scores",
    ),
    "dpo": (
        "customgpt.train.dpo", "DPOConfig", "finetune_dpo", "dpo-small",
        "preference tuning on chosen/rejected pairs (DPO, IPO, SimPO, ORPO) from an instruction-tuned model",
    ),
}


def build_parser(parser: argparse.ArgumentParser) -> None:
    from customgpt.train.config import add_config_arguments

    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, (module, schema, _, default, help_) in TASKS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_config_arguments(p, f"{module}:{schema}", default_config=default)


def run(args: argparse.Namespace) -> int:
    from customgpt.train.config import load_config, to_yaml

    module_name, schema_name, fn_name, _, _ = TASKS[args.task]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, schema_name), args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    print(getattr(module, fn_name)(cfg)["message"])
    return 0
