"""Classification fine-tuning: one explicit loop built from the shared pieces of :mod:`customgpt.train`.

Reading order: the config schema, evaluation on a whole split, the optional language-model
warm-up on the training texts, then :func:`finetune_classify`: validate the data → build the
model → (LM warm-up) → per epoch: train, evaluate the full validation set, keep the best
classifier → evaluate the best one on the full validation and test sets → write
``metrics.json``, ``test_predictions.csv``, ``loss.png`` and ``accuracy.png``.

Runs are single-process (classification sets are small), except that the members of an
ensemble can train side by side in worker processes on the CPU (``classifier.parallel_members``);
the device and precision come from the ``runtime`` section as for pretraining.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from customgpt.classifier import (
    ClassifierEnsemble,
    GPTClassifier,
    classification_loss,
    load_classifier,
    save_classifier,
)
from customgpt.data.classification import (
    ClassificationDataset,
    ClassifyDataConfig,
    SubwordRegularized,
    class_counts,
    collate_classification,
    length_bucketed_batches,
    prepare_splits,
)
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.metrics import classification_report, format_report
from customgpt.train.config import (
    FieldError,
    LoggingConfig,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    Section,
    TrainConfig,
    save_config,
)
from customgpt.train.files import atomic_write_text
from customgpt.train.logging import MetricsLogger, Progress, read_metrics
from customgpt.train.optim import build_optimizer, set_lr
from customgpt.train.runtime import Runtime, seed_everything, setup_runtime
from customgpt.train.schedule import build_schedule, lr_at
from customgpt.train.step import optimizer_step


@dataclass
class ClassifierSection(Section):
    """The head, what trains, the loss, and how the best epoch is chosen (see docs/classification.md)."""

    pooling: Literal["last", "mean", "max"] = "last"
    trainable: Literal["head", "last_blocks", "all", "lora"] = "last_blocks"
    last_blocks: int = 1  # with trainable: last_blocks
    head_dropout: float = 0.0
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None  # one weight per class, in data.labels order
    balanced_class_weights: bool = False  # weights n / (K * count_k) from the training set
    select_metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"  # ties: lower validation loss
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights
    eval_batch_size: int = 64
    ensemble: int = 1  # > 1: train this many members (seeds train.seed, +1, ...) and average their probabilities
    lm_loss_weight: float = 0.0  # > 0: add this times next-token loss on the batch's texts (auxiliary LM objective)
    # > 1: train this many ensemble members at once, each in its own process with an equal share of
    # the torch threads (CPU only). Small models use 2 cores better as 2 one-thread processes.
    parallel_members: int = 1
    # > 0: average a TF-IDF character n-gram logistic regression (customgpt.charngram), fitted on
    # the training texts, with the GPT members; it gets this share of the vote, the GPT members the rest
    char_ngram_weight: float = 0.0
    char_ngram_range: list[int] = field(default_factory=lambda: [2, 5])  # n-gram lengths, smallest and largest
    char_ngram_c: float = 100.0  # inverse L2 strength of the regression (scikit-learn's C)

    def validate(self) -> None:
        if not 0.0 <= self.head_dropout < 1.0:
            raise FieldError("head_dropout", f"must be in [0, 1), got {self.head_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.loss == "focal" and self.label_smoothing:
            raise FieldError("label_smoothing", "applies to loss: cross_entropy only")
        if self.class_weights is not None and self.balanced_class_weights:
            raise FieldError("class_weights", "give class_weights or balanced_class_weights, not both")
        if self.class_weights is not None and any(w <= 0 for w in self.class_weights):
            raise FieldError("class_weights", f"must all be > 0, got {self.class_weights}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FieldError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.ensemble < 1:
            raise FieldError("ensemble", f"must be >= 1, got {self.ensemble}")
        if self.lm_loss_weight < 0:
            raise FieldError("lm_loss_weight", f"must be >= 0, got {self.lm_loss_weight}")
        if self.parallel_members < 1:
            raise FieldError("parallel_members", f"must be >= 1, got {self.parallel_members}")
        if not 0.0 <= self.char_ngram_weight < 1.0:
            raise FieldError("char_ngram_weight", f"must be in [0, 1), got {self.char_ngram_weight}")
        if len(self.char_ngram_range) != 2 or not 1 <= self.char_ngram_range[0] <= self.char_ngram_range[1]:
            raise FieldError("char_ngram_range", f"must be [min, max] with 1 <= min <= max, got {self.char_ngram_range}")
        if not self.char_ngram_c > 0:
            raise FieldError("char_ngram_c", f"must be > 0, got {self.char_ngram_c}")
        if self.last_blocks < 1 or self.eval_batch_size < 1 or self.focal_gamma < 0:
            raise FieldError("last_blocks", "last_blocks and eval_batch_size must be >= 1, focal_gamma >= 0")


@dataclass
class LMPretrainSection(Section):
    """Optional next-token warm-up on the *training* texts only, before the classifier trains."""

    steps: int = 0  # 0: no warm-up
    lr: float = 1e-3
    batch_size: int = 16
    context_length: int = 64
    warmup_fraction: float = 0.1

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.context_length < 2 or self.lr <= 0:
            raise FieldError("steps", "steps >= 0, batch_size >= 1, context_length >= 2 and lr > 0 are required")


@dataclass
class LoRASection(Section):
    """Low-rank adapters (used when classifier.trainable is lora)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["c_attn"])
    rslora: bool = False


@dataclass
class ClassifyConfig(Section):
    """The whole ``customgpt finetune classify`` configuration."""

    model: ModelSection = field(default_factory=ModelSection)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    lm_pretrain: LMPretrainSection = field(default_factory=LMPretrainSection)
    lora: LoRASection = field(default_factory=LoRASection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=5e-5, eval_every=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(out_dir="runs/classify"))


class _EpochBatches:
    """A batch sampler that draws a fresh list of batches each epoch from ``make()``."""

    def __init__(self, make, size: int) -> None:
        self.make = make
        self.size = size

    def __iter__(self):
        return iter(self.make())

    def __len__(self) -> int:
        return self.size


def _train_loader(train: ClassificationDataset, batch_size: int, seed: int, bucket: bool,
                  bpe_dropout: float = 0.0, case_flip: float = 0.0) -> DataLoader:
    """Shuffled training batches (seeded); the last partial batch is dropped, as the reference
    recipe does, unless the set is smaller than one batch. ``bpe_dropout > 0`` / ``case_flip
    > 0``: every draw of a text is tokenized afresh, with BPE-dropout / a random change of
    case (:class:`SubwordRegularized`)."""
    generator = torch.Generator().manual_seed(seed)
    if bpe_dropout or case_flip:
        train = SubwordRegularized(train, bpe_dropout, seed, case_flip=case_flip)
    drop_last = len(train) >= batch_size
    collate = lambda b: collate_classification(b, train.pad_id)  # noqa: E731
    if not bucket:
        return DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=drop_last, collate_fn=collate,
                          generator=generator)
    lengths = [len(ids) for ids in train.ids]
    n_batches = len(train) // batch_size if drop_last else math.ceil(len(train) / batch_size)
    sampler = _EpochBatches(
        lambda: length_bucketed_batches(lengths, batch_size, generator=generator, drop_last=drop_last), n_batches)
    return DataLoader(train, batch_sampler=sampler, collate_fn=collate)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: torch.nn.Module, data: ClassificationDataset, rt: Runtime, batch_size: int) -> torch.Tensor:
    """Class probabilities (N, K) of a whole split. Rows are batched by length (less padding),
    then put back in the split's order."""
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
    return probs


def evaluate(model: torch.nn.Module, data: ClassificationDataset, rt: Runtime, labels: list[str],
             batch_size: int) -> tuple[dict[str, Any], torch.Tensor]:
    """(report with ``loss`` added, probabilities) over the FULL split (plain cross-entropy loss)."""
    probs = predict(model, data, rt, batch_size)
    targets = torch.tensor(data.labels)
    report = classification_report(data.labels, probs.argmax(-1).tolist(), labels)
    report["loss"] = float(-torch.log(probs[torch.arange(len(data)), targets].clamp_min(1e-12)).mean())
    return report, probs


def _better(report: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    if best is None:
        return True
    if metric == "loss":
        return report["loss"] < best["loss"]
    return (report[metric], -report["loss"]) > (best[metric], -best["loss"])


# --------------------------------------------------------------------------- LM warm-up


def lm_warmup(gpt: torch.nn.Module, train: ClassificationDataset, cfg: ClassifyConfig, rt: Runtime,
              eot_id: int, log: MetricsLogger) -> None:
    """Next-token training on random windows of the training texts (joined with end-of-text).

    The softmax runs over the token ids that occur in the training texts only (about 4,800 of
    GPT-2's 50,257 on the spam data): every target is one of them, and the LM head then costs
    a tenth of the full vocabulary's. The head is the tied token embedding, as in the model.
    """
    from customgpt.losses import causal_lm_loss

    pcfg = cfg.lm_pretrain
    stream = torch.tensor([t for ids in train.ids for t in (*ids, eot_id)], dtype=torch.long)
    restricted = AuxiliaryLM([stream.tolist()], gpt)  # the same restricted softmax as the auxiliary loss
    local = restricted.lookup.cpu()[stream]  # the stream in 0..len(vocab)-1
    window = min(pcfg.context_length, gpt.config.context_length, len(stream) - 1)
    optimizer = build_optimizer(gpt, cfg.optim, pcfg.lr, rt.device)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    warm = int(pcfg.warmup_fraction * pcfg.steps)
    bar = Progress(pcfg.steps, enabled=cfg.logging.progress, desc="LM warm-up")
    for step in range(pcfg.steps):
        lr = lr_at(step, peak_lr=pcfg.lr, total_steps=pcfg.steps, warmup_steps=warm)
        set_lr(optimizer, lr)
        starts = torch.randint(len(stream) - window, (pcfg.batch_size,), generator=generator)
        x = torch.stack([stream[s:s + window] for s in starts]).to(rt.device)
        y = torch.stack([local[s + 1:s + window + 1] for s in starts]).to(rt.device)
        with rt.autocast():
            loss = causal_lm_loss(gpt.forward_hidden(x), gpt.lm_head.weight[restricted.vocab], y)
        loss.backward()
        optimizer_step(optimizer, None, gpt.parameters(), cfg.train.grad_clip)
        log.log({"step": step - pcfg.steps, "lm_loss": float(loss.detach()), "lr": lr})
        bar.update(loss=float(loss.detach()), lr=lr)
    bar.close()


# --------------------------------------------------------------------------- the loop


def finetune_classify(cfg: ClassifyConfig) -> dict[str, Any]:
    """Train a classifier as ``cfg`` says; returns the summary also written to ``metrics.json``.

    With ``classifier.ensemble: K > 1``, K members are trained one after the other from seeds
    ``train.seed``, ``train.seed + 1``, ... (each keeps its own best epoch on the validation
    set), and the saved classifier averages their class probabilities."""
    clock = time.perf_counter()
    splits, labels = prepare_splits(cfg.data)  # every row validated before anything is created
    run_dir = Path(cfg.logging.out_dir)
    if (run_dir / "best").exists() or (run_dir / "metrics.json").exists():
        raise ConfigError(f"logging.out_dir: {run_dir} already holds a classification run; choose another folder")
    rt = setup_runtime(cfg.runtime, distributed=False)
    tcfg, ccfg = cfg.train, cfg.classifier
    parallel = min(ccfg.parallel_members, ccfg.ensemble)
    combined = ccfg.ensemble > 1 or ccfg.char_ngram_weight > 0  # the saved classifier is an ensemble
    if parallel > 1 and rt.device.type != "cpu":
        print(f"classifier.parallel_members applies to the CPU: on {rt.device} the members train one after the other")
        parallel = 1
    seed_everything(tcfg.seed)
    from customgpt.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    gpt = cfg.model.build().to(rt.device).train()
    ctx = gpt.config.context_length
    limit = min(cfg.data.max_length or ctx, ctx)
    train = ClassificationDataset(splits.train, labels, tokenizer.encode, limit, pad_id=cfg.data.pad_token_id)
    max_length = limit if cfg.data.max_length else min(train.longest, limit)
    val, test = (ClassificationDataset(s, labels, tokenizer.encode, max_length, pad_id=cfg.data.pad_token_id)
                 for s in (splits.val, splits.test))
    truncated = {"train": train.num_truncated, "val": val.num_truncated, "test": test.num_truncated}
    print(f"data: {splits.sizes()} examples, classes {labels}, max length {max_length} tokens, "
          f"truncated {truncated}")

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard)
    train_clock, train_cpu = time.perf_counter(), time.process_time()
    data = _Data(train, val, labels, max_length, splits)
    members, worker_cpu = [], 0.0
    if parallel > 1:
        del gpt  # every member builds its own body in its worker
        members, worker_cpu = _train_members_in_parallel(cfg, data, rt, tokenizer.eot_id, log, run_dir, parallel)
    else:
        for m in range(ccfg.ensemble):
            if m:  # a fresh body for every further member, from its own seed
                gpt = _member_body(cfg, m, rt)
            member_cfg = replace(cfg, train=replace(tcfg, seed=tcfg.seed + m))
            folder = run_dir / "members" / f"member-{m}" if combined else run_dir / "best"
            tag = {} if ccfg.ensemble == 1 else {"member": m}
            if ccfg.ensemble > 1:
                print(f"ensemble member {m + 1}/{ccfg.ensemble} (seed {tcfg.seed + m})")
            members.append(_train_member(member_cfg, gpt, data, rt, tokenizer.eot_id, log, folder, tag))
    log.close()
    ngram_info = None
    if combined:
        gpt_members = [load_classifier(r["folder"], device=rt.device)[0] for r in members]
        extra: dict[str, Any] = {"seeds": [r["seed"] for r in members],
                                 "member_val_accuracy": [r["best"]["accuracy"] for r in members]}
        weights = None
        if ccfg.char_ngram_weight > 0:
            ngram, ngram_info = _fit_char_ngram(ccfg, train, tokenizer.decode, len(labels))
            share = ccfg.char_ngram_weight
            gpt_members.append(ngram.to(rt.device))
            weights = [(1.0 - share) / len(members)] * len(members) + [share]
            extra["char_ngram"] = ngram_info
        ensemble = ClassifierEnsemble(gpt_members, weights)
        save_classifier(ensemble, run_dir / "best", labels, max_length=max_length, extra=extra)
        shutil.rmtree(run_dir / "members", ignore_errors=True)
    train_seconds = time.perf_counter() - train_clock
    # all threads (and worker processes): a load-independent cost measure
    train_cpu_seconds = time.process_time() - train_cpu + worker_cpu

    best_model, _ = load_classifier(run_dir / "best", device=rt.device)
    val_report, _ = evaluate(best_model, val, rt, labels, ccfg.eval_batch_size)
    test_report, test_probs = (evaluate(best_model, test, rt, labels, ccfg.eval_batch_size) if len(test)
                               else (None, None))
    if test_probs is not None:
        write_predictions(run_dir / "test_predictions.csv", splits.test, labels, test_probs)
    if ngram_info is not None:  # what each kind of member scores on its own, for comparison
        ngram_info = {**ngram_info, "components": _component_accuracies(best_model, {"val": val, "test": test},
                                                                        rt, ccfg.eval_batch_size)}
    first = members[0]
    summary = {
        "labels": labels, "sizes": splits.sizes(), "max_length": max_length, "truncated": truncated,
        "parameters": {"total": best_model.num_parameters(), "trainable": first["trainable"] * len(members),
                       "trainable_mode": ccfg.trainable},
        "best_epoch": first["best_epoch"], "select_metric": ccfg.select_metric, "epochs": first["history"],
        "val": val_report, "test": test_report, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": time.perf_counter() - clock, "device": str(rt.device), "threads": torch.get_num_threads(),
        "seed": tcfg.seed, "run_dir": str(run_dir),
    }
    if parallel > 1:
        summary["parallel_members"] = {"processes": parallel, "threads_each": _worker_threads(parallel)}
    if ngram_info is not None:
        summary["char_ngram"] = ngram_info
    if ccfg.ensemble > 1:
        summary["ensemble"] = [{"member": m, "seed": r["seed"], "best_epoch": r["best_epoch"],
                                "val_accuracy": r["best"]["accuracy"], "val_loss": r["best"]["loss"],
                                "epochs": r["history"]} for m, r in enumerate(members)]
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    if cfg.logging.plots:
        plot_epochs([r["history"] for r in members], run_dir)
    if ngram_info is not None:
        parts = ngram_info["components"]
        print("on their own: " + "; ".join(
            f"{name} " + ", ".join(f"{split} {acc:.4f}" for split, acc in accs.items())
            for name, accs in (("GPT members", parts["gpt_members"]), ("char n-grams", parts["char_ngram"]))))
    if combined:
        print("members' validation accuracy: " + ", ".join(
            f"{r['best']['accuracy']:.4f} (seed {r['seed']}, epoch {r['best_epoch']})" for r in members))
        what = f"ensemble of {len(members)}" + (
            f" + char n-grams ({ccfg.char_ngram_weight:g} of the vote)" if ngram_info is not None else "")
        print(format_report(val_report, f"validation ({what}):"))
    else:
        print(format_report(val_report, f"validation (best epoch {first['best_epoch']}):"))
    if test_report is not None:
        print(format_report(test_report, "test:"))
    return summary


def _fit_char_ngram(ccfg: ClassifierSection, train: ClassificationDataset, decode, num_classes: int):
    """The ensemble's character n-gram member, fitted on the training texts as the GPT members
    see them (decoded from their token ids, so truncated alike): (model, summary)."""
    from customgpt.charngram import CharNgramClassifier

    start = time.perf_counter()
    texts = [decode(ids) for ids in train.ids]
    model = CharNgramClassifier.fit(texts, train.labels, num_classes, ngram_range=tuple(ccfg.char_ngram_range),
                                    c=ccfg.char_ngram_c)
    seconds = time.perf_counter() - start
    print(f"char n-gram classifier: {len(model.vocab):,} n-grams of {ccfg.char_ngram_range[0]}-"
          f"{ccfg.char_ngram_range[1]} characters from {len(texts):,} training texts, fitted in {seconds:.1f} s")
    return model, {"weight": ccfg.char_ngram_weight, "ngram_range": list(ccfg.char_ngram_range),
                   "c": ccfg.char_ngram_c, "vocabulary": len(model.vocab), "fit_seconds": seconds}


def _component_accuracies(model: ClassifierEnsemble, splits: dict[str, ClassificationDataset], rt: Runtime,
                          batch_size: int) -> dict[str, dict[str, float]]:
    """Accuracy of the GPT members' (equal-weight) average and of the char n-gram member alone."""
    from customgpt.charngram import CharNgramClassifier

    gpts = ClassifierEnsemble([m for m in model.members if not isinstance(m, CharNgramClassifier)])
    ngram = next(m for m in model.members if isinstance(m, CharNgramClassifier))
    out: dict[str, dict[str, float]] = {"gpt_members": {}, "char_ngram": {}}
    for split, data in splits.items():
        if not len(data):
            continue
        targets = torch.tensor(data.labels)
        for name, part in (("gpt_members", gpts), ("char_ngram", ngram)):
            probs = predict(part, data, rt, batch_size)
            out[name][split] = float((probs.argmax(-1) == targets).float().mean())
    return out


@dataclass
class _Data:
    """What every member trains and is selected on."""

    train: ClassificationDataset
    val: ClassificationDataset
    labels: list[str]
    max_length: int
    splits: Any


class AuxiliaryLM:
    """Next-token loss on the classifier's own batches, added to the classification loss
    (``classifier.lm_loss_weight``; the auxiliary objective of GPT-1's fine-tuning).

    Each real token predicts the next real token, through the body's (tied) LM head. The
    softmax runs over the ids in ``token_ids`` (the training texts' ordinary tokenization:
    every ordinary target is one of them; about 4,800 of 50,257 on the spam data) instead of
    the whole vocabulary; targets outside it (finer pieces drawn by BPE-dropout) are skipped.
    """

    def __init__(self, token_ids: Iterable[Sequence[int]], gpt: torch.nn.Module) -> None:
        from customgpt.constants import IGNORE_INDEX

        device = gpt.lm_head.weight.device
        self.vocab = torch.unique(torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)).to(device)
        self.lookup = torch.full((gpt.config.vocab_size,), IGNORE_INDEX, dtype=torch.long, device=device)
        self.lookup[self.vocab] = torch.arange(len(self.vocab), device=device)
        self.head = gpt.lm_head
        self.ignore = IGNORE_INDEX

    def loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of right-padded rows from their final hidden states (B, T, C)."""
        from customgpt.losses import causal_lm_loss

        targets = self.lookup[input_ids[:, 1:]].masked_fill(attention_mask[:, 1:] == 0, self.ignore)
        return causal_lm_loss(hidden[:, :-1], self.head.weight[self.vocab], targets)


def _member_body(cfg: ClassifyConfig, m: int, rt: Runtime) -> torch.nn.Module:
    """Member ``m``'s fresh body: every generator seeded with ``train.seed + m``, then built."""
    seed_everything(cfg.train.seed + m)
    return cfg.model.build().to(rt.device).train()


def _worker_threads(parallel: int) -> int:
    """Each worker's torch threads: an equal share of this process's (at least one)."""
    return max(1, torch.get_num_threads() // parallel)


def _train_members_in_parallel(cfg: ClassifyConfig, data: _Data, rt: Runtime, eot_id: int, log: MetricsLogger,
                               run_dir: Path, parallel: int) -> tuple[list[dict[str, Any]], float]:
    """Train the ensemble's members in ``parallel`` worker processes (spawned: a fresh
    interpreter each, so no thread pool is inherited half-way through a fork).

    A member computes exactly what it computes in the sequential loop with the same number of
    threads: its worker seeds every generator with the member's seed, builds the body and runs
    :func:`_train_member` on the same data. Each member logs to a file of its own; the records
    are copied into ``log`` in member order once all have finished, as the sequential loop writes
    them. Returns the members' results and the workers' CPU seconds."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ccfg, threads = cfg.classifier, _worker_threads(parallel)
    print(f"ensemble of {ccfg.ensemble}: {parallel} members at a time, each in its own process "
          f"with {threads} torch thread{'s' if threads > 1 else ''} (seeds {cfg.train.seed}-"
          f"{cfg.train.seed + ccfg.ensemble - 1})", flush=True)
    folders = [run_dir / "members" / f"member-{m}" for m in range(ccfg.ensemble)]
    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"))
    try:
        jobs = [pool.submit(_member_process, cfg, data, rt, eot_id, m, folders[m], run_dir / "members" / f"log-{m}",
                            threads)
                for m in range(ccfg.ensemble)]
        results = [job.result() for job in jobs]  # the first failure is raised here, in member order
    except BrokenProcessPool as exc:  # a worker was killed (out of memory, a signal): say what to do
        raise CustomGPTError(
            f"a worker process training ensemble members died ({exc}). Workers are spawned: a script "
            f"needs an 'if __name__ == \"__main__\":' guard and a file to re-import (not standard input). "
            f"If memory is short, or to train in this process only, set classifier.parallel_members to 1") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for m in range(ccfg.ensemble):  # the members' records, in the order the sequential loop writes them
        for record in read_metrics(run_dir / "members" / f"log-{m}"):
            log.log(record)
    return results, sum(r.pop("cpu_seconds") for r in results)


def _member_process(cfg: ClassifyConfig, data: _Data, rt: Runtime, eot_id: int, m: int, folder: Path,
                    log_dir: Path, threads: int) -> dict[str, Any]:
    """One ensemble member in a worker process (see :func:`_train_members_in_parallel`)."""
    cpu = time.process_time()
    torch.set_num_threads(threads)
    gpt = _member_body(cfg, m, rt)
    member_cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + m),
                         logging=replace(cfg.logging, progress=False, tensorboard=False))
    log = MetricsLogger(log_dir)
    try:
        result = _train_member(member_cfg, gpt, data, rt, eot_id, log, folder, {"member": m})
    finally:
        log.close()
    return {**result, "cpu_seconds": time.process_time() - cpu}


def _train_member(cfg: ClassifyConfig, gpt: torch.nn.Module, data: _Data, rt: Runtime, eot_id: int,
                  log: MetricsLogger, folder: Path, tag: dict[str, Any]) -> dict[str, Any]:
    """(LM warm-up), then the epochs; the best epoch on the validation set is saved to ``folder``."""
    tcfg, ccfg = cfg.train, cfg.classifier
    train, val, labels = data.train, data.val, data.labels
    if cfg.lm_pretrain.steps:
        lm_warmup(gpt, train, cfg, rt, eot_id, log)

    model = GPTClassifier(gpt, len(labels), ccfg.pooling, ccfg.head_dropout).to(rt.device)
    if ccfg.trainable == "lora":
        from customgpt.lora import LoRAConfig, inject_lora

        inject_lora(model.gpt, LoRAConfig(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, tuple(cfg.lora.targets),
                                          cfg.lora.rslora))
        model.to(rt.device)
    model.set_trainable(ccfg.trainable, ccfg.last_blocks)
    weights = None
    if ccfg.class_weights is not None:
        if len(ccfg.class_weights) != len(labels):
            raise ConfigError(f"classifier.class_weights has {len(ccfg.class_weights)} values for {len(labels)} classes")
        weights = torch.tensor(ccfg.class_weights, device=rt.device)
    elif ccfg.balanced_class_weights:
        counts = class_counts(data.splits.train, labels)
        weights = torch.tensor([len(train) / (len(labels) * max(c, 1)) for c in counts], device=rt.device)

    aux = AuxiliaryLM(train.ids, model.gpt) if ccfg.lm_loss_weight else None
    micro, _ = tcfg.accumulation(1)
    loader = _train_loader(train, tcfg.batch_size, tcfg.seed, cfg.data.bucket_by_length, cfg.data.bpe_dropout,
                           cfg.data.case_flip)
    total_steps = min(tcfg.max_steps or math.inf, tcfg.epochs * len(loader))
    schedule = build_schedule(tcfg, int(total_steps))
    optimizer = build_optimizer(model, cfg.optim, schedule(0), rt.device)
    scaler = rt.grad_scaler()
    params = [p for p in model.parameters() if p.requires_grad]
    who = f"member {tag['member']}, " if tag else ""
    print(f"{who}model: {model.num_parameters():,} parameters, {model.num_parameters(True):,} trainable "
          f"({ccfg.trainable}); {int(total_steps)} steps", flush=True)

    # The weights that are evaluated and saved: the model itself, or a moving average of it
    # (smoother on small data: one noisy last step no longer decides the epoch's score).
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ccfg.ema_decay), use_buffers=False)
        if ccfg.ema_decay else None)
    scored = ema.module if ema is not None else model
    step, best, best_epoch, history = 0, None, 0, []
    desc = f"classify, member {tag['member']}" if tag else "classify"
    bar = Progress(int(total_steps), enabled=cfg.logging.progress, desc=desc)
    say = bar.write if cfg.logging.progress else functools.partial(print, flush=True)
    clock = time.perf_counter()
    for epoch in range(1, tcfg.epochs + 1):
        seen = correct = 0
        loss_sum = lm_sum = 0.0
        for batch in loader:
            if step >= total_steps:
                break
            lr = schedule(step)
            set_lr(optimizer, lr)
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            n = len(batch["labels"])
            for i in range(0, n, micro):  # gradient accumulation: each chunk weighted by its share
                part = {k: v[i:i + micro] for k, v in batch.items()}
                with rt.autocast():
                    hidden = model.gpt.forward_hidden(part["input_ids"])
                    logits = model.classify_hidden(hidden, part["attention_mask"])
                    loss = classification_loss(logits, part["labels"], kind=ccfg.loss, class_weights=weights,
                                               label_smoothing=ccfg.label_smoothing, focal_gamma=ccfg.focal_gamma)
                    total = loss
                    if aux is not None:
                        lm_loss = aux.loss(hidden, part["input_ids"], part["attention_mask"])
                        total = loss + ccfg.lm_loss_weight * lm_loss
                        lm_sum += float(lm_loss.detach()) * len(part["labels"])
                scaler.scale(total * len(part["labels"]) / n).backward()
                loss_sum += float(loss.detach()) * len(part["labels"])
                correct += int((logits.argmax(-1) == part["labels"]).sum())
            seen += n
            grad_norm, _ = optimizer_step(optimizer, scaler, params, tcfg.grad_clip)
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            if step % cfg.logging.log_every == 0:
                log.log({"step": step, **tag, "epoch": epoch, "loss": loss_sum / seen, "lr": lr,
                         "grad_norm": grad_norm, **({"lm_loss": lm_sum / seen} if aux is not None else {})})
            bar.update(loss=loss_sum / seen, lr=lr)
        if seen == 0:
            break
        report, _ = evaluate(scored, val, rt, labels, ccfg.eval_batch_size)
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  **({"train_lm_loss": lm_sum / seen} if aux is not None else {}),
                  "val_loss": report["loss"], "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"],
                  "elapsed": time.perf_counter() - clock}
        history.append(record)
        log.log({"step": step, **tag, **{k: v for k, v in record.items() if k != "step"}})
        improved = _better(report, best, ccfg.select_metric)
        lm_note = f" lm loss {record['train_lm_loss']:.3f}" if aux is not None else ""
        left = record["elapsed"] / step * (total_steps - step)  # the epoch lines are the progress report
        say(f"{who}epoch {epoch}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}{lm_note} | "
            f"val loss {report['loss']:.4f} acc {report['accuracy']:.4f} F1 {report['macro_f1']:.4f}"
            + (" (best)" if improved else "")
            + f" | {record['elapsed']:.0f} s, about {left:.0f} s to go" + (" for this member" if tag else ""))
        if improved:
            best, best_epoch = report, epoch
            save_classifier(scored, folder, labels, max_length=data.max_length,
                            extra={"epoch": epoch, "step": step, "val_accuracy": report["accuracy"]})
    bar.close()
    return {"folder": folder, "seed": tcfg.seed, "best": best, "best_epoch": best_epoch, "history": history,
            "trainable": model.num_parameters(True)}


def write_predictions(path: Path, rows, labels: list[str], probs: torch.Tensor) -> None:
    """CSV of text, true label, predicted label and its probability (atomic write)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "label", "predicted", "probability"])
    for row, p in zip(rows, probs):
        k = int(p.argmax())
        writer.writerow([row.text, row.label, labels[k], f"{float(p[k]):.6f}"])
    atomic_write_text(path, buffer.getvalue())


def plot_epochs(history: list[dict[str, Any]] | list[list[dict[str, Any]]], run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png``: train and validation values per epoch (one pair of
    curves per ensemble member when ``history`` is a list of members' histories)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from customgpt.train.files import atomic_write_bytes

    histories = history if history and isinstance(history[0], list) else [history]
    written = []
    for key, title in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, hist in enumerate(histories):
            epochs = [r["epoch"] for r in hist]
            suffix = f", member {m}" if len(histories) > 1 else ""
            line, = ax.plot(epochs, [r[f"train_{key}"] for r in hist], "o-",
                            label=f"train (running, dropout on){suffix}")
            ax.plot(epochs, [r[f"val_{key}"] for r in hist], "o--", color=line.get_color(),
                    label=f"validation{suffix}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if len(histories) > 1 else None)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(run_dir / f"{key}.png", buffer.getvalue())
        written.append(run_dir / f"{key}.png")
    return written
