"""Next-token pretraining: one explicit loop built from the shared pieces of :mod:`customgpt.train`.

Reading order: the config schema, the loss module that DDP wraps, evaluation, then
:func:`pretrain` itself: set up → (resume) → for each optimizer step:
accumulate micro-batches, clip, step, log, evaluate, checkpoint → save the final model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from customgpt.checkpoints import save_model
from customgpt.data.pretrain import (
    PretrainDataConfig,
    TokenWindows,
    epoch_order,
    load_tokens,
    resolve_sources,
    split_tokens,
)
from customgpt.errors import ConfigError, DataError
from customgpt.generate import SamplingParams, encode_prompt, generate_tokens
from customgpt.losses import causal_lm_loss
from customgpt.tokenizer import get_tokenizer
from customgpt.train import checkpoint as ckpt
from customgpt.train import distributed as dist
from customgpt.train.config import (
    FieldError,
    LoggingConfig,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    Section,
    TrainConfig,
    save_config,
    to_yaml,
)
from customgpt.train.logging import MetricsLogger, Progress, Throughput, plot_run
from customgpt.train.optim import build_optimizer, set_lr
from customgpt.train.runtime import Runtime, seed_everything, setup_runtime
from customgpt.train.schedule import build_schedule
from customgpt.train.step import (
    check_finite_loss,
    count_targets,
    global_count,
    global_mean,
    micro_loss_weight,
    optimizer_step,
)


@dataclass
class SampleConfig(Section):
    """A greedy continuation of a fixed prompt, printed and logged at each evaluation."""

    prompt: str | None = "Every effort moves you"
    """Prompt of the greedy sample at each evaluation; none or "": no samples."""
    max_new_tokens: int = 30
    """Tokens of the sample."""

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise FieldError("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")


@dataclass
class PretrainConfig(Section):
    """The whole ``customgpt pretrain`` configuration (see docs/training.md)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


class CausalLMObjective(nn.Module):
    """The model plus its loss, so DDP (which must see the forward call) wraps one module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        hidden = self.model.forward_hidden(idx)  # (B, T, C)
        return causal_lm_loss(hidden, self.model.lm_head.weight, targets)  # mean over targets


@torch.no_grad()
def evaluate(objective: nn.Module, data: TokenWindows, batch_size: int, micro_batch: int,
             max_batches: int | None, rt: Runtime) -> float:
    """Token-weighted mean loss over the first ``max_batches`` batches of ``batch_size``
    validation windows (all windows if None), in order. The windows are cut into
    micro-batches dealt round-robin to the processes, so the value does not depend on the
    number of processes."""
    objective.eval()
    n = len(data) if max_batches is None else min(len(data), max_batches * batch_size)
    chunks = [range(i, min(i + micro_batch, n)) for i in range(0, n, micro_batch)]
    loss_sum, count = 0.0, 0
    for chunk in chunks[rt.dist.rank::rt.dist.world_size]:
        x, y = data.batch(chunk)
        x, y = x.to(rt.device), y.to(rt.device)
        with rt.autocast():
            loss = objective(x, y)
        k = count_targets(y)
        loss_sum += float(loss) * k
        count += k
    objective.train()
    return global_mean(loss_sum, global_count(count, rt.device), rt.device)


def _prepare_data(cfg: PretrainConfig, context_length: int, rt: Runtime) -> tuple[TokenWindows, TokenWindows]:
    files = resolve_sources(cfg.data.source, pattern=cfg.data.pattern, data_dir=cfg.data.data_dir)
    tokenizer = get_tokenizer()
    if rt.dist.is_main:  # one process tokenizes; the others read its cache
        load_tokens(files, tokenizer, cfg.data.cache_dir)
    dist.barrier()
    tokens = load_tokens(files, tokenizer, cfg.data.cache_dir, build=False)
    train_ids, val_ids = split_tokens(tokens, cfg.data.val_fraction)
    train = TokenWindows(train_ids, context_length, cfg.data.stride)
    val = TokenWindows(val_ids, context_length, cfg.data.stride)
    if len(train) < cfg.train.batch_size:
        raise DataError(
            f"data.source: the training split has {len(train_ids):,} tokens = {len(train)} windows of "
            f"{context_length}, fewer than one batch (train.batch_size={cfg.train.batch_size}); "
            "use more text, a smaller data.context_length/data.stride or batch size"
        )
    if cfg.data.val_fraction > 0 and len(val) == 0:
        raise DataError(
            f"data.val_fraction: the validation split has {len(val_ids):,} tokens, fewer than "
            f"data.context_length + 1 ({context_length + 1}); raise the fraction or shorten the context"
        )
    return train, val


def pretrain(cfg: PretrainConfig, *, resume: str | bool | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` (the same call under ``torchrun`` trains data-parallel).

    Args:
        resume: True to continue from ``<out_dir>/checkpoints/last``, a path to continue from
            that checkpoint (or run folder), None/False to start fresh (the run folder must not
            hold a run already).
        stop_after: stop after this many optimizer steps of this call, with a checkpoint, to
            resume later (time-boxed jobs); the schedule still spans the whole run.

    Returns:
        A summary: steps, first/last train loss, last/best validation loss, seconds.
    """
    run_dir = cfg.logging.run_folder()
    resume_from = ckpt.find_checkpoint(run_dir if resume is True else resume) if resume else None
    if not resume_from and ckpt.has_checkpoint(run_dir / ckpt.CHECKPOINTS_DIR):
        raise ConfigError(f"logging.out_dir: {run_dir} already holds a run; pass --resume, or choose another folder")
    rt = setup_runtime(cfg.runtime)
    info, tcfg = rt.dist, cfg.train
    try:
        micro, accum = tcfg.accumulation(info.world_size)
        seed_everything(tcfg.seed)  # same initial weights in every process
        model = cfg.model.build()
        context_length = cfg.data.context_length or model.config.context_length
        if context_length > model.config.context_length:
            raise ConfigError(f"data.context_length ({context_length}) exceeds the model's ({model.config.context_length})")
        train_data, val_data = _prepare_data(cfg, context_length, rt)
        steps_per_epoch = len(train_data) // tcfg.batch_size
        total_steps = tcfg.max_steps or tcfg.epochs * steps_per_epoch
        schedule = build_schedule(tcfg, total_steps)
        seed_everything(tcfg.seed + info.rank)  # each process its own dropout stream from here on
        objective = rt.prepare_model(CausalLMObjective(model))  # to device (+ torch.compile)
        optimizer = build_optimizer(model, cfg.optim, schedule(0), rt.device)
        scaler = rt.grad_scaler()

        state: dict[str, Any] = {"step": 0, "best_val_loss": math.inf, "tokens": 0, "elapsed": 0.0}
        if resume_from:
            state = ckpt.load_checkpoint(resume_from, model)
            if state.get("steps_per_epoch") != steps_per_epoch:
                raise ConfigError(f"{resume_from} was written with {state.get('steps_per_epoch')} steps per epoch, "
                                  f"this config gives {steps_per_epoch}: resume needs the same data and train.batch_size")
            if int(state["step"]) >= total_steps:
                return {"steps": int(state["step"]), "total_steps": total_steps, "finished": True,
                        "first_loss": math.nan, "last_loss": math.nan, "best_val_loss": float(state["best_val_loss"]),
                        "seconds": 0.0, "run_dir": str(run_dir), "checkpoint": str(resume_from)}
            if resume_from.parent == run_dir / ckpt.CHECKPOINTS_DIR:  # every process: they must agree
                state["best_val_loss"] = ckpt.reconcile_best(resume_from.parent, float(state["best_val_loss"]),
                                                             repair=info.is_main)
            dist.barrier()
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            rngs = state["rng"]
            ckpt.restore_rng_state(rngs[min(info.rank, len(rngs) - 1)])
        ddp = objective
        if info.enabled:  # DDP broadcasts rank 0's weights at construction: every process starts identical
            device_ids = [rt.device.index] if rt.device.type == "cuda" else None
            ddp = DistributedDataParallel(objective, device_ids=device_ids)

        step, best = int(state["step"]), float(state["best_val_loss"])
        tokens, elapsed0 = int(state["tokens"]), float(state["elapsed"])
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        log = MetricsLogger(run_dir, enabled=info.is_main, tensorboard=cfg.logging.tensorboard,
                            resume_step=step if resume_from else None)
        bar = Progress(total_steps, initial=step, enabled=info.is_main and cfg.logging.progress, echo=info.is_main)
        tokenizer = get_tokenizer() if cfg.sample.prompt and cfg.sample.max_new_tokens else None

        def run_eval(at: int) -> float:
            record: dict[str, Any] = {"step": at}
            val = evaluate(objective, val_data, tcfg.batch_size, micro, tcfg.eval_iters, rt) if len(val_data) else math.nan
            if not math.isnan(val):
                record["val_loss"], record["val_ppl"] = val, math.exp(min(val, 50.0))
            if tokenizer is not None and info.is_main:  # greedy: a deterministic progress check
                ids = encode_prompt(tokenizer, cfg.sample.prompt)
                greedy = SamplingParams(max_new_tokens=cfg.sample.max_new_tokens, temperature=0.0,
                                        stop_at_eot=False)
                # fast_path=False: the weights being trained keep their memory layout
                ids += [s.token_id for s in generate_tokens(model, ids, greedy, fast_path=False)]
                record["sample"] = tokenizer.decode(ids)
            log.log(record)
            bar.write(f"step {at}: val loss {val:.4f}" + (f" | {record['sample']!r}" if "sample" in record else ""))
            return val

        if not resume_from and tcfg.eval_every:
            run_eval(0)  # the untrained model: about ln(vocab) = 10.8 for GPT-2's vocabulary
        # the run's first loss, kept in the checkpoints (older ones lack it: then the resumed part's)
        first_loss, first_step, last_loss = float(state.get("first_loss", math.nan)), state.get("first_step"), math.nan
        clock, throughput = time.perf_counter(), Throughput()
        order_epoch, order = -1, []
        objective.train()
        stop_at = min(total_steps, step + stop_after) if stop_after else total_steps
        while step < stop_at:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:  # the same order in every process and after a resume
                order, order_epoch = epoch_order(len(train_data), seed=tcfg.seed, epoch=epoch, shuffle=cfg.data.shuffle), epoch
            global_batch = order[position * tcfg.batch_size:(position + 1) * tcfg.batch_size]
            batches = [train_data.batch(ix) for ix in dist.shard(global_batch, info, micro, accum)]
            n_global = global_count(sum(count_targets(y) for _, y in batches), rt.device)
            lr = set_lr(optimizer, schedule(step))
            loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
            for i, (x, y) in enumerate(batches):
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                with dist.sync_context(ddp, sync=i == accum - 1):
                    with rt.autocast():
                        loss = ddp(x, y)  # mean over this micro-batch's targets
                    weight = micro_loss_weight(count_targets(y), n_global, info.world_size)
                    scaler.scale(loss * weight).backward()
                loss_sum += loss.detach().double() * count_targets(y)
            grad_norm, applied = optimizer_step(optimizer, scaler, model.parameters(), tcfg.grad_clip)
            step += 1
            last_loss = global_mean(float(loss_sum), n_global, rt.device)
            last_good = run_dir / ckpt.CHECKPOINTS_DIR / ckpt.LAST
            check_finite_loss(last_loss, step, lr=lr, checkpoint=str(last_good) if (last_good / ckpt.MANIFEST_NAME).is_file() else None)
            if math.isnan(first_loss):
                first_loss, first_step = last_loss, step
            step_tokens = tcfg.batch_size * context_length
            tokens += step_tokens
            rate = throughput.rate(step_tokens)
            elapsed = elapsed0 + time.perf_counter() - clock
            if step % cfg.logging.log_every == 0 or step == total_steps:
                log.log({"step": step, "epoch": step / steps_per_epoch, "loss": last_loss, "lr": lr,
                         "grad_norm": grad_norm, "applied": applied, "tokens": tokens,
                         "tokens_per_s": rate, "elapsed": elapsed})
            bar.update(loss=last_loss, lr=lr, tokens_per_s=rate)

            evaluated = step == total_steps or (tcfg.eval_every > 0 and step % tcfg.eval_every == 0)
            val = run_eval(step) if evaluated else math.nan
            improved = evaluated and val < best
            best = val if improved else best
            save_every = tcfg.save_every if tcfg.save_every is not None else tcfg.eval_every
            save_last = step == stop_at or (save_every > 0 and step % save_every == 0)
            if save_last or improved:
                train_state = {
                    "step": step, "epoch": epoch, "batch_in_epoch": position + 1, "steps_per_epoch": steps_per_epoch,
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "rng": dist.all_gather_object(ckpt.capture_rng_state()), "best_val_loss": best,
                    "tokens": tokens, "elapsed": elapsed, "world_size": info.world_size,
                    "first_loss": first_loss, "first_step": first_step,
                }
                if info.is_main:
                    root, text = run_dir / ckpt.CHECKPOINTS_DIR, to_yaml(cfg)
                    meta = {"step": step, "val_loss": None if math.isnan(val) else val}
                    # best before last: a kill between the two never leaves last claiming a best
                    # that checkpoints/best does not hold (resume reconciles the other way round)
                    if improved:
                        ckpt.save_checkpoint(root, ckpt.BEST, model, train_state, config_yaml=text, metadata=meta)
                    if improved and save_last:
                        ckpt.copy_checkpoint(root, ckpt.BEST, ckpt.LAST)
                    elif save_last:
                        ckpt.save_checkpoint(root, ckpt.LAST, model, train_state, config_yaml=text, metadata=meta)
                dist.barrier()

        bar.close()
        log.close()
        if info.is_main and step == total_steps:
            save_model(model, run_dir / "final", metadata={"kind": "pretrained", "step": step, "run": str(run_dir)})
        if info.is_main and cfg.logging.plots:
            plot_run(run_dir)
        dist.barrier()
        return {"steps": step, "total_steps": total_steps, "first_loss": first_loss, "first_step": first_step,
                "resumed_at": int(state["step"]) if resume_from else None, "last_loss": last_loss,
                "best_val_loss": best, "seconds": time.perf_counter() - clock, "run_dir": str(run_dir)}
    finally:
        dist.cleanup()
