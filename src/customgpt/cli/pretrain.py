"""``customgpt pretrain``: next-token pretraining from a YAML config plus dotted overrides.

    customgpt pretrain --config pretrain-verdict
    customgpt pretrain --config configs/pretrain-verdict.yaml --train.epochs 2 --logging.out_dir runs/v2
    customgpt pretrain --config pretrain-verdict --resume            # continue runs/.../checkpoints/last
    customgpt pretrain --plot runs/pretrain-verdict                  # redraw loss.png and lr.png
    torchrun --nproc_per_node 2 -m customgpt pretrain --config pretrain-verdict
"""

from __future__ import annotations

import argparse
from pathlib import Path

from customgpt.train.config import add_config_arguments


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "customgpt.train.pretrain:PretrainConfig")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="continue the run in logging.out_dir from checkpoints/last, or from the checkpoint "
        "(or run folder) PATH",
    )
    parser.add_argument("--plot", metavar="RUN_DIR", help="draw RUN_DIR/loss.png and lr.png from its metrics and exit")


def run(args: argparse.Namespace) -> int:
    if args.plot:
        from customgpt.train.logging import plot_run

        for path in plot_run(args.plot):
            print(path)
        return 0

    from customgpt.train.config import load_config, to_yaml
    from customgpt.train.distributed import env_dist_info
    from customgpt.train.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    summary = pretrain(cfg, resume=args.resume)
    if env_dist_info().is_main:
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The closing lines of a run (or of a resume that found the run already finished)."""
    run_dir = summary["run_dir"]
    if summary.get("finished"):
        # --resume PATH may name another run than logging.out_dir: name the checkpoint's own run
        checkpoint = Path(summary["checkpoint"])
        finished = (f"({summary['steps']} of {summary['total_steps']} steps, "
                    f"best validation loss {summary['best_val_loss']:.3f}): nothing to resume")
        if checkpoint.parent.name != "checkpoints":
            return f"the run of {checkpoint} is finished {finished}"
        run = checkpoint.parent.parent
        return f"the run in {run} is finished {finished}\nfinal model: {run}/final"
    first, resumed = f"{summary['first_loss']:.3f}", ""
    if summary.get("resumed_at") is not None:  # name the step the first loss is from
        first += f" (step {summary['first_step']})"
        resumed = f" (resumed at step {summary['resumed_at']})"
    return (f"trained {summary['steps']} steps in {summary['seconds']:.1f}s{resumed}: train loss {first} -> "
            f"{summary['last_loss']:.3f}, best validation loss {summary['best_val_loss']:.3f}\n"
            f"run folder: {run_dir} (final model: {run_dir}/final)")
