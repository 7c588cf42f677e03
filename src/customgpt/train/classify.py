"""Classification fine-tuning: one explicit loop built from the shared pieces of :mod:`customgpt.train`.

Per epoch: train, evaluate the full validation set, keep the best classifier; then evaluate the
best one on the validation and test sets and write ``metrics.json``, ``test_predictions.csv``
and the plots (docs/classification.md). Runs are single-process (classification sets are small).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from customgpt.classifier import GPTClassifier, load_classifier, save_classifier
from customgpt.constants import IGNORE_INDEX
from customgpt.data.classification import (
    ClassificationDataset,
    ClassifyDataConfig,
    collate_classification,
    length_bucketed_batches,
    prepare_splits,
)
from customgpt.errors import ConfigError
from customgpt.io import atomic_open, atomic_write_text
from customgpt.losses import ClassificationLoss, FocalLoss, causal_lm_loss
from customgpt.metrics import classification_report, format_report
from customgpt.sections import FieldError
from customgpt.tokenizer import get_tokenizer
from customgpt.train.config import (
    LoggingConfig,
    LoRASection,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    Section,
    TrainConfig,
    save_config,
)
from customgpt.train.logging import MetricsLogger, Progress, line_figure
from customgpt.train.optim import build_optimizer, set_lr
from customgpt.train.runtime import Runtime, seed_everything, setup_runtime
from customgpt.train.schedule import build_schedule
from customgpt.train.step import count_targets, optimizer_step


@dataclass
class ClassifierSection(Section):
    """The head, what trains, the loss, and how the best epoch is chosen (the ``classifier`` section)."""

    pooling: Literal["last", "mean", "max"] = "last"
    """Pooled hidden state: the last real token, or the mean / max over the real tokens."""
    trainable: Literal["head", "last_blocks", "all", "lora"] = "last_blocks"
    """What trains: the head only, the last blocks + final LayerNorm + head, everything, or LoRA + head."""
    last_blocks: int = 1
    """Transformer blocks that train with trainable: last_blocks."""
    head_dropout: float = 0.0
    """Dropout on the pooled vector before the head."""
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    """Classification loss: cross_entropy or focal (Lin et al., 2017)."""
    focal_gamma: float = 2.0
    """Focusing parameter of the focal loss (0: the cross-entropy)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy, in [0, 1)."""
    class_weights: list[float] | None = None
    """One loss weight per class, in data.labels order."""
    balanced_class_weights: bool = False
    """Weights n / (K * count_k) from the training set's class counts."""
    select_metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    """Validation metric that picks the best epoch (ties: the lower validation loss)."""
    ema_decay: float = 0.0
    """> 0: evaluate and save an exponential moving average of the weights with this decay."""
    eval_batch_size: int = 64
    """Rows per batch when evaluating a split."""
    lm_loss_weight: float = 0.0
    """> 0: add this times the next-token loss on the batch's texts (GPT-1's auxiliary objective)."""

    def validate(self) -> None:
        for key in ("head_dropout", "label_smoothing", "ema_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise FieldError(key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.loss == "focal" and self.label_smoothing:
            raise FieldError("label_smoothing", "applies to loss: cross_entropy only")
        if self.class_weights is not None and self.balanced_class_weights:
            raise FieldError("class_weights", "give class_weights or balanced_class_weights, not both")
        if self.class_weights is not None and not all(w > 0 for w in self.class_weights):  # finite: Section
            raise FieldError("class_weights", f"must all be > 0, got {self.class_weights}")
        for key, low in (("last_blocks", 1), ("eval_batch_size", 1), ("focal_gamma", 0), ("lm_loss_weight", 0)):
            if not getattr(self, key) >= low:
                raise FieldError(key, f"must be >= {low}, got {getattr(self, key)}")


@dataclass
class ClassifyConfig(Section):
    """The whole ``customgpt finetune classify`` configuration."""

    model: ModelSection = field(default_factory=ModelSection)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    lora: LoRASection = field(default_factory=LoRASection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=5e-5, eval_every=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(out_dir="runs/classify"))


# --------------------------------------------------------------------------- the pieces


def build_loss(ccfg: ClassifierSection, labels: list[str], train_counts: list[int]) -> ClassificationLoss:
    """The loss module of ``ccfg``, with explicit or balanced (n / (K * count_k)) class weights."""
    weights = None
    if ccfg.class_weights is not None:
        if len(ccfg.class_weights) != len(labels):
            raise ConfigError(f"classifier.class_weights has {len(ccfg.class_weights)} values for "
                              f"{len(labels)} classes ({', '.join(labels)})")
        weights = torch.tensor(ccfg.class_weights)
    elif ccfg.balanced_class_weights:
        n, k = sum(train_counts), len(labels)
        weights = torch.tensor([n / (k * max(c, 1)) for c in train_counts])
    if ccfg.loss == "focal":
        return FocalLoss(ccfg.focal_gamma, weights)
    return ClassificationLoss(weights, ccfg.label_smoothing)


def accumulate_gradients(
    model: GPTClassifier,
    batch: dict[str, Tensor],
    loss_fn: ClassificationLoss,
    micro_batch_size: int,
    *,
    lm_loss_weight: float = 0.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale: Callable[[Tensor], Tensor] = lambda loss: loss,
) -> dict[str, float]:
    """Forward and backward of one batch in micro-batches of ``micro_batch_size`` rows.

    The gradients are exactly those of the whole batch's loss, whatever the micro-batch size:
    every micro-batch adds (its summed weighted per-example losses) / ``loss_fn.normaliser``
    of the *whole* batch, plus ``lm_loss_weight`` x (its summed next-token losses) / (the
    whole batch's next-token targets). Returns the batch's loss, LM loss and correct count.
    """
    labels = batch["labels"]
    norm = loss_fn.normaliser(labels)
    targets = None  # next-token targets (B, T-1): position t predicts real token t+1, padding ignored
    if lm_loss_weight:
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, IGNORE_INDEX)
    lm_norm = max(count_targets(targets), 1) if targets is not None else 1
    out = {"loss": 0.0, "lm_loss": 0.0, "correct": 0}
    for i in range(0, len(labels), micro_batch_size):
        part = slice(i, i + micro_batch_size)
        with autocast():
            hidden = model.gpt.forward_hidden(batch["input_ids"][part])  # (b, T, C)
            logits = model.classify_hidden(hidden, batch["attention_mask"][part])  # (b, K)
            loss = loss_fn(logits, labels[part], reduction="sum") / norm
            total = loss
            if targets is not None:
                lm_loss = causal_lm_loss(hidden[:, :-1], model.gpt.lm_head.weight, targets[part],
                                         reduction="sum") / lm_norm
                total = total + lm_loss_weight * lm_loss
                out["lm_loss"] += float(lm_loss.detach())
        scale(total).backward()
        out["loss"] += float(loss.detach())
        out["correct"] += int((logits.argmax(-1) == labels[part]).sum())
    return out


def epoch_loader(train: ClassificationDataset, batch_size: int, generator: torch.Generator,
                 bucket: bool) -> DataLoader:
    """One epoch of shuffled training batches, ``max(len(train) // batch_size, 1)`` of them: the
    last partial batch is dropped, as the reference recipe does, unless the set is smaller than
    one batch. ``bucket``: batches of similar lengths
    (:func:`~customgpt.data.classification.length_bucketed_batches`)."""
    drop_last = len(train) >= batch_size
    collate = lambda b: collate_classification(b, train.pad_id)  # noqa: E731
    if not bucket:
        return DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=drop_last, collate_fn=collate,
                          generator=generator)
    batches = length_bucketed_batches([len(ids) for ids in train.ids], batch_size, generator=generator,
                                      drop_last=drop_last)
    return DataLoader(train, batch_sampler=batches, collate_fn=collate)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ClassificationDataset, rt: Runtime, labels: list[str],
             batch_size: int) -> tuple[dict[str, Any], Tensor]:
    """(report with ``loss`` added, class probabilities (N, K)) over the FULL split (plain
    cross-entropy loss). Rows are batched by length (less padding), then put back in order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    probs = torch.empty(len(data), model.num_classes)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate_classification([data[i] for i in idx], data.pad_id)
        with rt.autocast():
            logits = model(batch["input_ids"].to(rt.device), batch["attention_mask"].to(rt.device))
        probs[idx] = torch.softmax(logits.float(), dim=-1).cpu()
    model.train(was_training)
    report = classification_report(data.labels, probs.argmax(-1).tolist(), labels)
    targets = torch.tensor(data.labels)
    report["loss"] = float(-torch.log(probs[torch.arange(len(data)), targets].clamp_min(1e-12)).mean())
    return report, probs


def _better(report: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    if best is None:
        return True
    if metric == "loss":
        return report["loss"] < best["loss"]
    return (report[metric], -report["loss"]) > (best[metric], -best["loss"])


# --------------------------------------------------------------------------- the loop


def finetune_classify(cfg: ClassifyConfig) -> dict[str, Any]:
    """Train a classifier as ``cfg`` says; returns the summary also written to ``metrics.json``.

    Raises DataError / ConfigError (naming the file, line or key) before anything is created."""
    clock = time.perf_counter()
    splits, labels = prepare_splits(cfg.data)  # every row validated before anything is created
    run_dir = cfg.logging.run_folder("best", "metrics.json", what="a classification run")
    tcfg, ccfg = cfg.train, cfg.classifier
    counts = Counter(r.label for r in splits.train)
    loss_fn = build_loss(ccfg, labels, [counts[name] for name in labels])
    micro, _ = tcfg.accumulation(1)
    rt = setup_runtime(cfg.runtime, distributed=False)
    seed_everything(tcfg.seed)
    encode = get_tokenizer().encode
    model = GPTClassifier(cfg.model.build(), len(labels), ccfg.pooling, ccfg.head_dropout)
    if ccfg.trainable == "lora":
        cfg.lora.apply(model.gpt)
    model.set_trainable(ccfg.trainable, ccfg.last_blocks)
    model.to(rt.device).train()
    loss_fn.to(rt.device)
    ctx = model.config.context_length
    limit = min(cfg.data.max_length or ctx, ctx)
    train = ClassificationDataset(splits.train, labels, encode, limit, pad_id=cfg.data.pad_token_id)
    max_length = limit if cfg.data.max_length else min(train.longest, limit)
    val, test = (ClassificationDataset(s, labels, encode, max_length, pad_id=cfg.data.pad_token_id)
                 for s in (splits.val, splits.test))
    truncated = {"train": train.num_truncated, "val": val.num_truncated, "test": test.num_truncated}
    print(f"data: {splits.sizes()} examples, classes {labels}, max length {max_length} tokens, "
          f"truncated {truncated}")

    generator = torch.Generator().manual_seed(tcfg.seed)  # the shuffles of every epoch
    total_steps = int(min(tcfg.max_steps or math.inf, tcfg.epochs * max(len(train) // tcfg.batch_size, 1)))
    schedule = build_schedule(tcfg, total_steps)
    optimizer = build_optimizer(model, cfg.optim, schedule(0), rt.device)
    scaler = rt.grad_scaler()
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"model: {model.num_parameters():,} parameters, {model.num_parameters(True):,} trainable "
          f"({ccfg.trainable}); {total_steps} steps", flush=True)
    # What is evaluated and saved: the model, or a moving average of its weights (smoother on
    # small data: one noisy last step no longer decides the epoch's score).
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ccfg.ema_decay), use_buffers=False)
        if ccfg.ema_decay else None)
    scored = ema.module if ema is not None else model

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard)
    bar = Progress(total_steps, enabled=cfg.logging.progress, echo=True, desc="classify")
    aux = {"lm_loss_weight": ccfg.lm_loss_weight, "autocast": rt.autocast, "scale": scaler.scale}
    step, best, best_epoch, history = 0, None, 0, []
    train_clock, train_cpu = time.perf_counter(), time.process_time()
    for epoch in range(1, tcfg.epochs + 1):
        seen = correct = 0
        loss_sum = lm_sum = 0.0
        for batch in epoch_loader(train, tcfg.batch_size, generator, cfg.data.bucket_by_length):
            if step >= total_steps:
                break
            lr = schedule(step)
            set_lr(optimizer, lr)
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            stats = accumulate_gradients(model, batch, loss_fn, micro, **aux)
            grad_norm, _ = optimizer_step(optimizer, scaler, params, tcfg.grad_clip)
            if ema is not None:
                ema.update_parameters(model)
            step, n = step + 1, len(batch["labels"])
            seen, correct = seen + n, correct + stats["correct"]
            loss_sum, lm_sum = loss_sum + stats["loss"] * n, lm_sum + stats["lm_loss"] * n
            lm = {"lm_loss": stats["lm_loss"]} if ccfg.lm_loss_weight else {}
            if step % cfg.logging.log_every == 0:
                log.log({"step": step, "epoch": epoch, "loss": stats["loss"], **lm, "lr": lr, "grad_norm": grad_norm})
            bar.update(loss=loss_sum / seen, lr=lr)
        if seen == 0:
            break
        report, _ = evaluate(scored, val, rt, labels, ccfg.eval_batch_size)
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  **({"train_lm_loss": lm_sum / seen} if ccfg.lm_loss_weight else {}),
                  "val_loss": report["loss"], "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"],
                  "elapsed": time.perf_counter() - train_clock}
        history.append(record)
        log.log(record)
        improved = _better(report, best, ccfg.select_metric)
        left = record["elapsed"] / step * (total_steps - step)  # the epoch lines are the progress report
        bar.write(f"epoch {epoch}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
                  f" | val loss {report['loss']:.4f} acc {report['accuracy']:.4f} F1 {report['macro_f1']:.4f}"
                  + (" (best)" if improved else "")
                  + f" | {record['elapsed']:.0f} s, about {left:.0f} s to go")
        if improved:
            best, best_epoch = report, epoch
            save_classifier(scored, run_dir / "best", labels, max_length=max_length,
                            extra={"epoch": epoch, "step": step, "val_accuracy": report["accuracy"]})
    bar.close()
    log.close()
    train_seconds, train_cpu_seconds = time.perf_counter() - train_clock, time.process_time() - train_cpu

    best_model, _ = load_classifier(run_dir / "best", device=rt.device)
    val_report, _ = evaluate(best_model, val, rt, labels, ccfg.eval_batch_size)
    test_report, test_probs = (evaluate(best_model, test, rt, labels, ccfg.eval_batch_size) if len(test)
                               else (None, None))
    if test_probs is not None:
        write_predictions(run_dir / "test_predictions.csv", splits.test, labels, test_probs)
    summary = {
        "labels": labels, "sizes": splits.sizes(), "max_length": max_length, "truncated": truncated,
        "parameters": {"total": best_model.num_parameters(), "trainable": model.num_parameters(True),
                       "trainable_mode": ccfg.trainable},
        "best_epoch": best_epoch, "select_metric": ccfg.select_metric, "epochs": history,
        "val": val_report, "test": test_report, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": time.perf_counter() - clock, "device": str(rt.device), "threads": torch.get_num_threads(),
        "seed": tcfg.seed, "run_dir": str(run_dir),
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    if cfg.logging.plots:
        plot_epochs(history, run_dir)
    print(format_report(val_report, f"validation (best epoch {best_epoch}):"))
    if test_report is not None:
        print(format_report(test_report, "test:"))
    return summary


def write_predictions(path: Path, rows, labels: list[str], probs: Tensor) -> None:
    """CSV of text, true label, predicted label and its probability (atomic write)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "predicted", "probability"])
        for row, p in zip(rows, probs):
            k = int(p.argmax())
            writer.writerow([row.text, row.label, labels[k], f"{float(p[k]):.6f}"])


def plot_epochs(history: list[dict[str, Any]], run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png``: train and validation values per epoch."""
    epochs = [r["epoch"] for r in history]
    return [line_figure(run_dir / f"{key}.png", [("train (running, dropout on)", epochs, [r[f"train_{key}"] for r in history], "o-"),
                                                ("validation", epochs, [r[f"val_{key}"] for r in history], "o--")],
                        xlabel="epoch", ylabel=key, figsize=(6, 4), dpi=100)
            for key in ("loss", "accuracy")]
