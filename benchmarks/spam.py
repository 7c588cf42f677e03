"""Spam vs ham from scratch: the ``spam-small`` preset's test accuracy and training time over
several seeds, beside the TF-IDF + logistic regression peer scored on the same split.

    CUSTOMGPT_DATA_DIR=../shared/datasets python benchmarks/spam.py              # seeds 123 127 131
    python benchmarks/spam.py --data-dir ../shared/datasets --seeds 123 --threads 2
    python benchmarks/spam.py --set train.epochs=12                               # any config override

Each seed runs ``customgpt finetune classify --config spam-small`` (one small GPT, random
initialisation, no pretrained weights) on the 1,045 training messages of the reference split,
selects the epoch on the 149 validation messages, and is scored once on the 300 test messages.
"train s" is the wall time of the epochs and their validation, "cpu s" the CPU time of all
threads (less sensitive to other programs on the machine; the load average is printed).
With scikit-learn installed (``pip install -e ".[bench]"``) the peer (``tfidf_peer.py``) is
trained and scored in the same run on the same messages; ``--no-peer`` skips it. There is no
accuracy target: the numbers are reported as they come (history in ``RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="spam-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 127, 131])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--data-dir", default=None, help="dataset mirror (default: $CUSTOMGPT_DATA_DIR)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--no-peer", action="store_true", help="skip the TF-IDF + logistic regression peer")
    args = parser.parse_args()

    from customgpt.cli import main as customgpt

    keep = args.out is not None
    root = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="spam-bench-"))
    overrides = ["--runtime.device", "cpu", "--runtime.threads", str(args.threads), "--logging.progress", "false",
                 "--logging.plots", "false"]
    if args.data_dir:
        overrides += ["--data.data_dir", args.data_dir]
    for item in args.set:
        key, _, value = item.partition("=")
        overrides += [f"--{key}", value]

    results = []
    for seed in args.seeds:
        out = root / f"seed{seed}"
        code = customgpt(["finetune", "classify", "--config", args.config, *overrides, "--train.seed", str(seed),
                          "--logging.out_dir", str(out)])
        if code:
            return code
        results.append((seed, json.loads((out / "metrics.json").read_text(encoding="utf-8"))))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n== spam benchmark: {args.config}, {platform.processor() or platform.machine()}, "
          f"{args.threads} torch threads, {os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}")
    print(f"{'seed':>6} {'test acc':>9} {'errors':>7} {'val acc':>8} {'best ep':>8} {'train s':>8} {'cpu s':>7}")
    for seed, s in results:
        test = s["test"]
        print(f"{seed:>6} {test['accuracy']:>9.4f} {test['n'] - round(test['accuracy'] * test['n']):>4}/{test['n']} "
              f"{s['val']['accuracy']:>8.4f} {s['best_epoch']:>8} {s['train_seconds']:>8.1f} "
              f"{s['train_cpu_seconds']:>7.1f}")
    accs = [s["test"]["accuracy"] for _, s in results]
    mean = statistics.mean(accs)
    print(f"{'mean':>6} {mean:>9.4f} {'':>7} {'':>8} {'':>8} {statistics.mean(s['train_seconds'] for _, s in results):>8.1f}")
    if not args.no_peer:
        import tfidf_peer

        if tfidf_peer.available():
            from customgpt.data.classification import ClassifyDataConfig, prepare_splits

            splits, _ = prepare_splits(ClassifyDataConfig(dataset="sms-spam", split="reference",
                                                          data_dir=args.data_dir))
            peer = tfidf_peer.tfidf_lr_accuracy([r.text for r in splits.train], [r.label for r in splits.train],
                                                [r.text for r in splits.test], [r.label for r in splits.test])
            print(f"  peer (this run, same split) TF-IDF char n-gram logistic regression: {peer:.4f} "
                  f"(spam-small mean - peer: {100 * (mean - peer):+.2f} points)")
        else:
            print("  peer skipped: scikit-learn is not installed (pip install -e \".[bench]\")")
    if keep:
        print(f"runs kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
