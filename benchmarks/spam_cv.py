"""Cross-validation on the spam training + validation messages, for choosing a configuration
without looking at the test set.

    CUSTOMGPT_DATA_DIR=../shared/datasets python benchmarks/spam_cv.py                       # spam-small
    python benchmarks/spam_cv.py --peer-only --data-dir ../shared/datasets                   # the peer alone
    python benchmarks/spam_cv.py --set classifier.ensemble=1 --data-dir ../shared/datasets    # a variant
    python benchmarks/spam_cv.py --shuffle-seed 1 --set train.seed=300                        # other folds, seeds

The 1,045 training and 149 validation messages of the reference split (1,194 in all) are
shuffled (seed 0, or ``--shuffle-seed``) and cut into ``--folds`` parts. For each part, the configuration trains on
the other parts and is scored on that part; the mean over the parts ranks configurations on
1,194 messages instead of 149. The 300 test messages are never read.

Where the epoch (each ensemble member's epoch) is chosen:

* ``--select inner`` (default, unbiased): on a stratified 10% of the other parts, carved off
  as the run's validation set, exactly as a real run chooses on its validation set; the held
  part is the run's test set and is scored once.
* ``--select held``: on the held part itself, which is then also scored. This flatters every
  configuration (the best of several epochs on the very messages that are counted) and trains
  on 10% more messages; kept to compare with earlier numbers.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="spam-small")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shuffle-seed", type=int, default=0,
                        help="seed of the shuffle that cuts the folds (default 0: the documented folds)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--data-dir", default=None, help="dataset mirror (default: $CUSTOMGPT_DATA_DIR)")
    parser.add_argument("--select", choices=("inner", "held"), default="inner",
                        help="choose the epoch on a carved validation set (inner) or on the held part (held)")
    parser.add_argument("--no-peer", action="store_true", help="skip the TF-IDF + logistic regression peer")
    parser.add_argument("--peer-only", action="store_true", help="score only the peer (seconds, no training)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error("--folds must be >= 2")

    from customgpt.data.classification import ClassifyDataConfig, prepare_splits
    from customgpt.train.classify import ClassifyConfig, finetune_classify
    from customgpt.train.config import load_config

    torch.set_num_threads(args.threads)
    splits, _ = prepare_splits(ClassifyDataConfig(dataset="sms-spam", split="reference", data_dir=args.data_dir))
    rows = [(r.text, r.label) for r in (*splits.train, *splits.val)]
    random.Random(args.shuffle_seed).shuffle(rows)
    root = Path(tempfile.mkdtemp(prefix="spam-cv-"))
    overrides = [tuple(item.partition("=")[::2]) for item in args.set]
    accuracies, seconds, errors, peer = [], [], {}, []
    import tfidf_peer

    with_peer = not args.no_peer and tfidf_peer.available()
    if args.peer_only and not with_peer:
        parser.error("--peer-only needs scikit-learn (pip install -e \".[bench]\") and no --no-peer")
    clock = time.perf_counter()
    for fold in range(args.folds):
        held = rows[fold::args.folds]
        rest = [r for i, r in enumerate(rows) if i % args.folds != fold]
        files = {}
        for name, part in (("train", rest), ("val", held)):
            files[name] = root / f"fold{fold}-{name}.csv"
            with open(files[name], "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows(part)
        held_as = [("data.val_file", str(files["val"]))] if args.select == "held" else [
            ("data.test_file", str(files["val"])), ("data.val_fraction", "0.1")]
        if with_peer:  # the peer learns from every other part (it chooses nothing on a validation set)
            peer.append(tfidf_peer.tfidf_lr_accuracy([t for t, _ in rest], [y for _, y in rest],
                                                     [t for t, _ in held], [y for _, y in held]))
        if args.peer_only:
            continue
        cfg = load_config(ClassifyConfig, args.config, [
            ("data.dataset", "none"), ("data.train_file", str(files["train"])), *held_as,
            ("logging.out_dir", str(root / f"fold{fold}")), ("logging.progress", "false"),
            ("logging.plots", "false"), ("runtime.device", "cpu"), *overrides])
        summary = finetune_classify(cfg)
        scored = summary["val" if args.select == "held" else "test"]
        accuracies.append(scored["accuracy"])
        seconds.append(summary["train_seconds"])
        labels = summary["labels"]
        for i, row in enumerate(scored["confusion_matrix"]):  # rows: true class, columns: predicted
            for j, count in enumerate(row):
                if i != j:
                    errors[f"{labels[i]}->{labels[j]}"] = errors.get(f"{labels[i]}->{labels[j]}", 0) + count
        print(f"== fold {fold}: held-out accuracy {accuracies[-1]:.4f} ({len(held)} messages), "
              f"training {seconds[-1]:.0f} s", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n== spam cross-validation: {args.config} {' '.join(args.set)}, {args.folds} folds of "
          f"{len(rows)} messages, epochs chosen on {'a carved 10% (inner)' if args.select == 'inner' else 'the held part'}, "
          f"{args.threads} torch threads, load average {load:.1f}")
    if accuracies:
        print("held-out accuracy per fold: " + ", ".join(f"{a:.4f}" for a in accuracies))
    if peer:
        print("peer (TF-IDF char n-gram logistic regression) per fold: " + ", ".join(f"{a:.4f}" for a in peer)
              + f"; mean {statistics.mean(peer):.4f}")
    elif not args.no_peer:
        print("peer skipped: scikit-learn is not installed (pip install -e \".[bench]\")")
    if args.peer_only:
        return 0
    print("errors: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    print(f"mean {statistics.mean(accuracies):.4f}; training {statistics.mean(seconds):.0f} s per fold, "
          f"{time.perf_counter() - clock:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
