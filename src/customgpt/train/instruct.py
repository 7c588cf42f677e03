"""Instruction fine-tuning: one explicit loop built from the shared pieces of :mod:`customgpt.train`.

The reference recipe is LLMs-from-scratch, chapter 7 (``configs/instruct-355m.yaml``):
GPT-2 medium, the 1,100 records of ``instruction-data.json`` split 935 / 110 / 55 in file
order, Alpaca prompts, AdamW (lr 5e-5, weight decay 0.1), 2 epochs of batch 8, greedy
responses of up to 256 tokens for the test set.

Reading order: the config schema, then :func:`finetune_instruct`: read and check the data →
build the model (LoRA optional) → per optimizer step: accumulate micro-batches, clip, step,
log; every ``train.eval_every`` steps the train / validation loss and perplexity, keeping
the best model; every epoch a greedy response to a fixed validation instruction → save the
final model → test perplexity, greedy test responses (``test_responses.json``), ROUGE-L and
exact match (``test_metrics.json``), plots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from customgpt.checkpoints import load_model
from customgpt.data.instruct import (
    InstructDataConfig,
    InstructionDataset,
    collate_instructions,
    prepare_splits,
)
from customgpt.errors import ConfigError
from customgpt.evaluate.overlap import score_responses
from customgpt.evaluate.perplexity import response_perplexity
from customgpt.evaluate.responses import generate_responses, with_responses, write_json
from customgpt.lora import LoRAConfig
from customgpt.losses import model_lm_loss
from customgpt.prompts import PromptConfig, PromptStyle, prompt_style_to_dict
from customgpt.sections import FieldError, Section
from customgpt.tokenizer import get_tokenizer
from customgpt.train.checkpoint import save_merged_model
from customgpt.train.config import (
    LoggingConfig,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    TrainConfig,
    save_config,
)
from customgpt.train.logging import MetricsLogger, Progress, Throughput, plot_run
from customgpt.train.optim import build_optimizer, set_lr
from customgpt.train.runtime import Runtime, seed_everything, setup_runtime
from customgpt.train.schedule import build_schedule
from customgpt.train.step import count_targets, micro_loss_weight, optimizer_step


@dataclass
class InstructSection(Section):
    """What trains, what is printed while training, and how the test responses are made."""

    trainable: Literal["all", "lora"] = "all"
    """all: every weight trains; lora: low-rank adapters only (the lora section), merged into the saved models."""
    sample_max_new_tokens: int = 35
    """Tokens of the greedy response to the first validation instruction printed after each epoch (0: none)."""
    responses_split: Literal["test", "val", "train", "none"] = "test"
    """The split answered greedily after training (written to SPLIT_responses.json and scored in SPLIT_metrics.json); none: skip."""
    responses_model: Literal["final", "best"] = "final"
    """The model that answers and is scored after training: the last weights (as the reference) or the best by validation loss."""
    max_new_tokens: int = 256
    """The most tokens of each response."""
    generation_batch_size: int = 8
    """Records answered at once."""
    use_stop_strings: bool = True
    """Also stop a response at the prompt style's stop strings (### Instruction: ...), not only at end-of-text."""
    eval_batch_size: int = 8
    """Examples per batch when scoring perplexity."""

    def validate(self) -> None:
        for key, low in (("sample_max_new_tokens", 0), ("max_new_tokens", 0), ("generation_batch_size", 1),
                         ("eval_batch_size", 1)):
            if getattr(self, key) < low:
                raise FieldError(key, f"must be >= {low}, got {getattr(self, key)}")


@dataclass
class InstructConfig(Section):
    """The whole ``customgpt finetune instruct`` configuration (see docs/instruct.md)."""

    model: ModelSection = field(default_factory=ModelSection)
    """The model to fine-tune: a preset from scratch, or weights in model.init."""
    data: InstructDataConfig = field(default_factory=InstructDataConfig)
    """The instruction records and their split."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """The prompt style (a registered one or a template)."""
    instruct: InstructSection = field(default_factory=InstructSection)
    """What trains and what is generated."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Adapters, with instruct.trainable lora."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=8, lr=5e-5, schedule="constant", grad_clip=None, eval_every=5, eval_iters=5))
    """The loop: epochs, batch, learning rate, evaluation."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device and precision."""
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(out_dir="runs/instruct"))
    """The run folder and what it reports."""


# --------------------------------------------------------------------------- helpers


def save_run_model(model: nn.Module, folder: Path, style: PromptStyle, **metadata: Any) -> None:
    """Save ``model`` (adapters merged) with the prompt style it was trained with."""
    save_merged_model(model, folder, {"kind": "instruction-tuned", "prompt_style": prompt_style_to_dict(style), **metadata})


def _epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of shuffled batches; the last partial batch is dropped, as the reference
    does, unless the set is smaller than one batch."""
    order = torch.randperm(n, generator=generator).tolist()
    if n >= batch_size:
        order = order[: n - n % batch_size]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- the loop


def finetune_instruct(cfg: InstructConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on instruction records, then answer and score the test split.

    Returns:
        A summary: steps, first/last train loss, best validation loss, seconds, the test
        perplexity / ROUGE-L / exact match (None when no split is answered), the run folder,
        and ``message``, the lines the command prints.

    Raises:
        ConfigError, DataError: a bad config or data file (all checked before training).
    """
    run_dir = cfg.logging.run_folder("metrics.jsonl", "final")
    style = cfg.prompt.build()
    splits = prepare_splits(cfg.data)
    tcfg, icfg = cfg.train, cfg.instruct
    micro, _ = tcfg.accumulation(1)
    rt = setup_runtime(cfg.runtime, distributed=False)
    seed_everything(tcfg.seed)
    model = cfg.model.build()
    context = model.config.context_length
    max_length = cfg.data.max_length or context
    if max_length > context:
        raise ConfigError(f"data.max_length ({max_length}) exceeds the model's context length ({context})")
    tokenizer = get_tokenizer()
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                          f"({tokenizer.vocab_size})")
    train = InstructionDataset(splits.train, tokenizer, style, max_length)
    val = InstructionDataset(splits.val, tokenizer, style, max_length)
    mask = cfg.data.mask_instructions
    print(f"data: {len(train)} train / {len(val)} validation / {len(splits.test)} test records, "
          f"prompt style {style.name}, max length {max_length}; truncated: {train.n_truncated} train, "
          f"{val.n_truncated} validation", flush=True)

    if icfg.trainable == "lora":
        cfg.lora.apply(model)
    model = model.to(rt.device).train()
    steps_per_epoch = max(len(train) // tcfg.batch_size, 1)
    total_steps = tcfg.max_steps or tcfg.epochs * steps_per_epoch
    schedule = build_schedule(tcfg, total_steps)
    optimizer = build_optimizer(model, cfg.optim, schedule(0), rt.device)
    scaler = rt.grad_scaler()
    print(f"model: {model.num_parameters():,} parameters, {model.num_parameters(True):,} trainable ({icfg.trainable}); "
          f"{total_steps} steps of {tcfg.batch_size} examples", flush=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard)
    bar = Progress(total_steps, enabled=cfg.logging.progress, echo=True, desc="instruct")
    sample_record = splits.val[0]

    def evaluate(at: int) -> float:
        """The train / validation loss and perplexity (the first train.eval_iters batches, the training masking)."""
        tr, va = (response_perplexity(model, data, batch_size=tcfg.batch_size, max_batches=tcfg.eval_iters,
                                      mask_instructions=mask, device=rt.device, autocast=rt.autocast)
                  for data in (train, val))
        log.log({"step": at, "train_loss": tr.loss, "train_ppl": tr.perplexity, "val_loss": va.loss,
                 "val_ppl": va.perplexity})
        bar.write(f"step {at}: train loss {tr.loss:.3f} (ppl {tr.perplexity:.2f}), val loss {va.loss:.3f} "
                  f"(ppl {va.perplexity:.2f})")
        return va.loss

    def sample(epoch: int, at: int) -> None:
        if not icfg.sample_max_new_tokens:
            return
        (text,), _ = generate_responses(model, tokenizer, style, [sample_record],
                                        max_new_tokens=icfg.sample_max_new_tokens,
                                        use_stop_strings=icfg.use_stop_strings, progress=False)
        log.log({"step": at, "epoch": epoch, "sample": text})
        bar.write(f"epoch {epoch}: {sample_record.instruction!r} -> {text!r}")

    generator = torch.Generator().manual_seed(tcfg.seed)
    step, best, best_step = 0, math.inf, 0
    first_loss = last_loss = math.nan
    tokens = 0
    clock, throughput = time.perf_counter(), Throughput()
    if tcfg.eval_every:
        best = evaluate(0)
        save_run_model(model, run_dir / "best", style, step=0, val_loss=best)
    epoch = 0
    while step < total_steps:
        epoch += 1
        for batch in _epoch_batches(len(train), tcfg.batch_size, generator):
            if step >= total_steps:
                break
            parts = [collate_instructions([train[i] for i in batch[k:k + micro]], max_length=max_length,
                                          mask_instructions=mask) for k in range(0, len(batch), micro)]
            n_targets = sum(count_targets(y) for _, y in parts)
            lr = schedule(step)
            set_lr(optimizer, lr)
            loss_sum = 0.0
            for x, y in parts:
                x, y = x.to(rt.device), y.to(rt.device)
                with rt.autocast():
                    loss = model_lm_loss(model, x, y)  # mean over this micro-batch
                scaler.scale(loss * micro_loss_weight(count_targets(y), n_targets)).backward()
                loss_sum += float(loss.detach()) * count_targets(y)
            grad_norm, applied = optimizer_step(optimizer, scaler, model.parameters(), tcfg.grad_clip)
            step += 1
            last_loss = loss_sum / max(n_targets, 1)
            if not math.isfinite(last_loss):
                raise ConfigError(f"the training loss became {last_loss} at step {step}; lower train.lr "
                                  f"(the best model so far is in {run_dir / 'best'})")
            first_loss = last_loss if math.isnan(first_loss) else first_loss
            step_tokens = sum(int(x.numel()) for x, _ in parts)
            tokens += step_tokens
            rate = throughput.rate(step_tokens)
            if step % cfg.logging.log_every == 0 or step == total_steps:
                log.log({"step": step, "epoch": step / steps_per_epoch, "loss": last_loss, "lr": lr,
                         "grad_norm": grad_norm, "applied": applied, "tokens": tokens, "tokens_per_s": rate,
                         "elapsed": time.perf_counter() - clock})
            bar.update(loss=last_loss, lr=lr, tokens_per_s=rate)
            if step == total_steps or (tcfg.eval_every and step % tcfg.eval_every == 0):
                val_loss = evaluate(step)
                if val_loss < best:
                    best, best_step = val_loss, step
                    save_run_model(model, run_dir / "best", style, step=step, val_loss=val_loss)
        sample(epoch, step)
    train_seconds = time.perf_counter() - clock
    bar.close()
    save_run_model(model, run_dir / "final", style, step=step, run=str(run_dir))
    records = [] if icfg.responses_split == "none" else splits.get(icfg.responses_split)
    test = _answer_and_score(model, tokenizer, style, records, cfg, run_dir, max_length, rt) if records else None
    log.close()
    if cfg.logging.plots:
        plot_run(run_dir)
    scores = (f"{test['split']}: perplexity {test['perplexity']:.2f}, ROUGE-L {test['rouge_l']:.1f}, "
              f"exact match {test['exact_match']:.1f}%; " if test else "")
    return {
        "steps": step, "epochs": epoch, "first_loss": first_loss, "last_loss": last_loss,
        "best_val_loss": best, "best_step": best_step, "train_seconds": train_seconds, "run_dir": str(run_dir),
        "test": test,
        "message": f"{scores}training {train_seconds:.1f}s, {step} steps, train loss {first_loss:.3f} -> "
                   f"{last_loss:.3f}, best validation loss {best:.3f}\nrun folder: {run_dir} (models: final/, best/)",
    }


def _answer_and_score(model: nn.Module, tokenizer, style: PromptStyle, records, cfg: InstructConfig, run_dir: Path,
                      max_length: int, rt: Runtime) -> dict[str, Any]:
    """Perplexity, greedy responses, ROUGE-L and exact match on ``records``; files in ``run_dir``."""
    icfg = cfg.instruct
    if icfg.responses_model == "best" and (run_dir / "best").is_dir():
            model = load_model(run_dir / "best", device=rt.device, dtype=torch.float32)
    data = InstructionDataset(records, tokenizer, style, max_length)
    ppl = response_perplexity(model, data, batch_size=icfg.eval_batch_size, device=rt.device)
    clock = time.perf_counter()
    responses, settings = generate_responses(model, tokenizer, style, records, max_new_tokens=icfg.max_new_tokens,
                                             batch_size=icfg.generation_batch_size,
                                             use_stop_strings=icfg.use_stop_strings, progress=cfg.logging.progress)
    settings = {**settings, "model": str(run_dir / icfg.responses_model)}
    rows = with_responses(records, responses, settings)
    responses_path = run_dir / f"{icfg.responses_split}_responses.json"
    write_json(responses_path, rows)
    per_record, overlap = score_responses(rows)
    result = {"split": icfg.responses_split, "records": len(records), "loss": ppl.loss,
              "perplexity": ppl.perplexity, "response_tokens": ppl.tokens, "rouge_l": overlap["rouge_l"],
              "exact_match": overlap["exact_match"], "generation_seconds": time.perf_counter() - clock,
              "truncated": data.n_truncated, "generation": settings}
    write_json(run_dir / f"{icfg.responses_split}_metrics.json", {**result, "per_record": per_record})
    print(f"{icfg.responses_split}: perplexity {ppl.perplexity:.2f} (loss {ppl.loss:.3f}) on {ppl.tokens} response "
          f"tokens; ROUGE-L {overlap['rouge_l']:.1f}, exact match {overlap['exact_match']:.1f}% "
          f"({len(records)} records, responses in {responses_path})", flush=True)
    return result
