"""Preference tuning (DPO, IPO, SimPO, ORPO): one explicit loop built from the shared pieces of :mod:`customgpt.train`.

Reading order: the config sections, the sequence log-probs of a batch under the policy and
the reference (``train.reference``: ``copy``, ``adapters`` or ``precomputed``), evaluation
(TRL's metric names), the collapse guard, then :func:`finetune_dpo`: read and check every
record → build the policy (optionally with LoRA) and the reference → evaluate and probe
before training → train, evaluating and probing every ``train.eval_every`` steps → write
the final model, test responses, ``metrics.json`` and the plots. docs/preference.md
describes the reference modes, the metrics and the collapse guard.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from customgpt.checkpoints import load_model
from customgpt.data.preference import (
    PreferenceBatch,
    PreferenceDataConfig,
    PreferenceDataset,
    PreferenceRecord,
    collate_preference,
    prepare_preference_splits,
)
from customgpt.data.registry import cache_root
from customgpt.errors import ConfigError
from customgpt.evaluate.overlap import rouge_l
from customgpt.evaluate.perplexity import eval_mode
from customgpt.evaluate.responses import generate_responses, with_responses, write_json
from customgpt.io import atomic_write_bytes, atomic_write_text
from customgpt.lora import LoRAConfig, disable_adapters
from customgpt.losses import (
    PREFERENCE_LOSSES,
    DPOLoss,
    IPOLoss,
    ORPOLoss,
    PreferenceLoss,
    PreferenceLossOutput,
    SimPOLoss,
    model_sequence_logprobs,
    preference_metrics,
)
from customgpt.prompts import PromptConfig, PromptStyle, prompt_style_to_dict
from customgpt.tokenizer import get_tokenizer
from customgpt.train.checkpoint import save_merged_model
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
from customgpt.train.logging import MetricsLogger, Progress, Throughput, line_figure, read_metrics
from customgpt.train.optim import build_optimizer, set_lr
from customgpt.train.runtime import Runtime, seed_everything, setup_runtime
from customgpt.train.schedule import build_schedule
from customgpt.train.step import optimizer_step

#: The metric names TRL's DPOTrainer logs, in its order.
METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected")


# --------------------------------------------------------------------------- config


@dataclass
class DPOTrainConfig(TrainConfig):
    """The loop (as every task's) plus the preference loss, the reference and the collapse guard."""

    eval_iters: int | None = 5
    """Batches of the TRAINING split scored at each evaluation (the validation split is always scored whole); none: all."""
    trainable: Literal["all", "lora"] = "all"
    """all: every weight trains; lora: low-rank adapters only (the lora section), merged into the saved model."""
    loss: Literal["dpo", "ipo", "simpo", "orpo"] = "dpo"
    """Preference loss: dpo (sigmoid), ipo, simpo (reference-free) or orpo (reference-free)."""
    beta: float | None = None
    """The loss's strength: DPO/IPO beta, SimPO beta, ORPO lambda; none: the loss's default (0.1, 0.1, 2.0, 0.1)."""
    label_smoothing: float = 0.0
    """DPO only: assumed share of flipped preference labels (conservative DPO), in [0, 0.5)."""
    simpo_gamma: float = 1.0
    """SimPO only: the target reward margin gamma."""
    reduction: Literal["sum", "mean"] = "sum"
    """Sequence log-probs: sum over response tokens (TRL, the DPO paper) or mean (LLMs-from-scratch)."""
    reference: Literal["copy", "adapters", "precomputed"] = "copy"
    """Reference model: a frozen copy, the LoRA model with adapters disabled, or log-probs precomputed once."""
    eval_batch_size: int | None = None
    """Pairs per evaluation batch; none: batch_size."""
    stop_on_collapse: bool = False
    """Stop when the collapse guard trips and keep the last healthy weights as the run's model."""
    collapse_prompts: int = 4
    """Validation prompts answered greedily at each evaluation (0: no collapse guard)."""
    collapse_max_new_tokens: int = 64
    """Tokens per collapse-guard response."""
    collapse_rise: float = 0.25
    """The guard trips when repeated-4-gram share rises (or distinct-2 falls) by more than this since the start."""
    test_responses: bool = True
    """After training, answer every test record greedily and write test_responses.json."""
    response_max_new_tokens: int = 256
    """Tokens per test response."""

    def validate(self) -> None:
        super().validate()
        if self.beta is not None and not self.beta > 0:  # finite: Section
            raise FieldError("beta", f"must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise FieldError("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "dpo":
            raise FieldError("label_smoothing", f"applies to loss dpo only, not {self.loss}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise FieldError("eval_batch_size", f"must be >= 1 or none, got {self.eval_batch_size}")
        if self.collapse_prompts < 0 or self.collapse_max_new_tokens < 1 or self.response_max_new_tokens < 1:
            raise FieldError("collapse_prompts", "collapse_prompts must be >= 0, collapse_max_new_tokens and "
                             "response_max_new_tokens >= 1")
        if not 0.0 < self.collapse_rise <= 1.0:
            raise FieldError("collapse_rise", f"must be in (0, 1], got {self.collapse_rise}")
        if self.stop_on_collapse and not self.collapse_prompts:
            raise FieldError("stop_on_collapse", "needs collapse_prompts > 0 (the guard's probe)")

    def build_loss(self) -> PreferenceLoss:
        """The loss module this section describes."""
        kw: dict[str, Any] = {"reduction": self.reduction}
        if self.loss == "dpo":
            return DPOLoss(beta=self.beta or 0.1, label_smoothing=self.label_smoothing, **kw)
        if self.loss == "ipo":
            return IPOLoss(beta=self.beta or 0.1, **kw)
        if self.loss == "simpo":
            return SimPOLoss(beta=self.beta or 2.0, gamma=self.simpo_gamma, **kw)
        return ORPOLoss(lam=self.beta or 0.1, **kw)


@dataclass
class DPOConfig(Section):
    """The whole ``customgpt finetune dpo`` configuration."""

    model: ModelSection = field(default_factory=lambda: ModelSection(dropout=0.0))
    """The policy's starting weights (usually an instruction-tuned model in model.init)."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    """The preference records and their splits."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """The prompt style (the one the model was instruction-tuned with)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (with train.trainable: lora)."""
    train: DPOTrainConfig = field(default_factory=lambda: DPOTrainConfig(lr=5e-6, schedule="constant", eval_every=20))
    """The loop, the loss, the reference and the collapse guard."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=0.01))
    """AdamW."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device and precision."""
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(out_dir="runs/dpo"))
    """The run folder and its reports."""

    def validate(self) -> None:
        loss_cls = PREFERENCE_LOSSES[self.train.loss]
        if loss_cls.needs_reference and self.train.reference == "adapters" and self.train.trainable != "lora":
            raise ConfigError("train.reference: adapters needs LoRA (train.trainable: lora); use copy or precomputed")


# --------------------------------------------------------------------------- log-probs


def batch_logps(model: nn.Module, batch: PreferenceBatch, reduction: str) -> tuple[Tensor, Tensor]:
    """(B,) sequence log-probs of the chosen and the rejected responses (one forward pass of 2B rows)."""
    logps = model_sequence_logprobs(model, batch.input_ids, batch.targets, batch.response_mask, reduction=reduction)
    return logps[: batch.n_pairs], logps[batch.n_pairs:]


class Reference:
    """The reference log-probs of a batch in one of the three modes (see the module docstring).

    Args:
        mode: ``copy``, ``adapters``, ``precomputed``, or ``none`` (reference-free losses).
        policy: the model being trained (``adapters`` runs it with its adapters off).
        reduction: the sequence log-probs' reduction.
    """

    def __init__(self, mode: str, policy: nn.Module, reduction: str) -> None:
        self.mode, self.policy, self.reduction = mode, policy, reduction
        self.model: nn.Module | None = None
        if mode == "copy":
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch, rt: Runtime) -> tuple[Tensor | None, Tensor | None]:
        """(B,) reference log-probs of the chosen and rejected responses (None, None without a reference)."""
        if self.mode == "none":
            return None, None
        if self.mode == "precomputed":
            if batch.reference_logps is None:
                raise RuntimeError("reference log-probs were not precomputed for this dataset")
            ref = batch.reference_logps.to(rt.device, torch.float32)
            return ref[:, 0], ref[:, 1]
        if self.mode == "adapters":
            with disable_adapters(self.policy), eval_mode(self.policy), rt.autocast():
                return batch_logps(self.policy, batch, self.reduction)
        assert self.model is not None
        with rt.autocast():
            return batch_logps(self.model, batch, self.reduction)


def _fingerprint(model: nn.Module, datasets: Sequence[PreferenceDataset], reduction: str) -> str:
    """SHA-256 of the weights, the token ids and the reduction: what the reference log-probs depend on."""
    h = hashlib.sha256(reduction.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    for ds in datasets:
        for ex in ds.examples:
            h.update(json.dumps([ex.prompt_ids, ex.chosen_ids, ex.rejected_ids]).encode())
        h.update(str(ds.max_length).encode())
    return h.hexdigest()


@torch.no_grad()
def precompute_reference_logps(model: nn.Module, dataset: PreferenceDataset, *, reduction: str, batch_size: int,
                               rt: Runtime) -> Tensor:
    """(N, 2) log-probs of every pair's (chosen, rejected) response under ``model`` (eval mode)."""
    out = torch.empty(len(dataset), 2, dtype=torch.float64)
    with eval_mode(model):
        for batch in _batches(dataset, batch_size, range(len(dataset))):
            with rt.autocast():
                chosen, rejected = batch_logps(model, batch.to(rt.device), reduction)
            out[batch.indices, 0] = chosen.double().cpu()
            out[batch.indices, 1] = rejected.double().cpu()
    return out


def attach_reference_logps(model: nn.Module, datasets: dict[str, PreferenceDataset], *, reduction: str,
                           batch_size: int, rt: Runtime, folder: Path) -> tuple[Path, bool]:
    """Give each dataset its reference log-probs: read from ``folder/<fingerprint>.safetensors``
    when that exists (same weights, token ids and reduction), else computed with ``model``
    and written there (atomically). Returns the file and whether it was read back."""
    from safetensors.torch import load_file, save

    key = _fingerprint(model, list(datasets.values()), reduction)
    path = folder / f"{key[:32]}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        if set(tensors) == set(datasets) and all(tensors[n].shape == (len(d), 2) for n, d in datasets.items()):
            for name, ds in datasets.items():
                ds.set_reference_logps(tensors[name])
            return path, True
    tensors = {}
    for name, ds in datasets.items():
        tensors[name] = precompute_reference_logps(model, ds, reduction=reduction, batch_size=batch_size, rt=rt)
        ds.set_reference_logps(tensors[name])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={"fingerprint": key, "reduction": reduction}))
    return path, False


# --------------------------------------------------------------------------- loss and evaluation


def pair_loss(policy: nn.Module, reference: Reference, loss_fn: PreferenceLoss, batch: PreferenceBatch,
              rt: Runtime) -> tuple[PreferenceLossOutput, Tensor, Tensor]:
    """The loss module's output for a batch, and the policy's (B,) chosen and rejected log-probs."""
    ref_c, ref_r = reference.logps(batch, rt)
    with rt.autocast():
        pol_c, pol_r = batch_logps(policy, batch, loss_fn.reduction)
    n_c, n_r = batch.lengths()
    out = loss_fn(pol_c.float(), pol_r.float(), None if ref_c is None else ref_c.float(),
                  None if ref_r is None else ref_r.float(), n_c, n_r)
    return out, pol_c, pol_r


def _batches(dataset: PreferenceDataset, batch_size: int, order: Sequence[int]) -> Iterator[PreferenceBatch]:
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield collate_preference(items, max_length=dataset.max_length, reference_logps=dataset.reference_logps)


@torch.no_grad()
def evaluate(policy: nn.Module, reference: Reference, loss_fn: PreferenceLoss, dataset: PreferenceDataset,
             rt: Runtime, batch_size: int, max_batches: int | None = None) -> dict[str, float]:
    """TRL's metrics over the first ``max_batches`` batches of ``dataset`` (all when None),
    averaged over pairs (eval mode)."""
    outs, chosen, rejected = [], [], []
    with eval_mode(policy):
        for i, batch in enumerate(_batches(dataset, batch_size, range(len(dataset)))):
            if max_batches is not None and i >= max_batches:
                break
            out, pc, pr = pair_loss(policy, reference, loss_fn, batch.to(rt.device), rt)
            outs.append(out)
            chosen.append(pc)
            rejected.append(pr)
    return _metrics(outs, chosen, rejected)


def _metrics(outs: Sequence[PreferenceLossOutput], chosen: Sequence[Tensor], rejected: Sequence[Tensor]) -> dict[str, float]:
    """TRL's metrics of the pairs of several batches (their loss outputs and policy log-probs)."""
    joined = PreferenceLossOutput(*(torch.cat([getattr(o, f).detach() for o in outs])
                                    for f in PreferenceLossOutput._fields))
    return preference_metrics(joined, torch.cat(chosen), torch.cat(rejected))


# --------------------------------------------------------------------------- collapse guard


def degeneration(texts: Sequence[str]) -> dict[str, float]:
    """Repetition of word n-grams within each response, pooled over the responses.

    * ``repeat4``: share of word 4-grams that repeat an earlier 4-gram of the same response,
      ``sum(n4 - unique4) / sum(n4)`` (0 without any 4-gram): 0 for varied text, near 1 for
      one phrase over and over;
    * ``distinct2``: distinct word bigrams over all bigrams, ``sum(unique2) / sum(n2)`` (Li et
      al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models",
      here within each response); 0 without any bigram (empty or one-word responses);
    * ``words``: mean words per response.

    Words are whitespace-separated and lower-cased.
    """
    n4 = u4 = n2 = u2 = words = 0
    for text in texts:
        w = text.lower().split()
        words += len(w)
        grams4 = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
        grams2 = [tuple(w[i:i + 2]) for i in range(len(w) - 1)]
        n4, u4 = n4 + len(grams4), u4 + len(set(grams4))
        n2, u2 = n2 + len(grams2), u2 + len(set(grams2))
    return {"repeat4": (n4 - u4) / n4 if n4 else 0.0, "distinct2": u2 / n2 if n2 else 0.0,
            "words": words / len(texts) if texts else 0.0}


def collapse_probe(policy: nn.Module, tokenizer, style: PromptStyle, records: Sequence[PreferenceRecord],
                   max_new_tokens: int) -> dict[str, Any]:
    """Greedy responses to ``records`` with their :func:`degeneration` and ROUGE-L F1 (0-1,
    mean) against the chosen responses."""
    texts, _ = generate_responses(policy, tokenizer, style, records, max_new_tokens=max_new_tokens,
                                  batch_size=len(records), progress=False)
    out: dict[str, Any] = degeneration(texts)
    out["rouge_l"] = sum(rouge_l(t, r.chosen) for t, r in zip(texts, records)) / len(records)
    out["responses"] = texts
    return out


def collapsed(probe: dict[str, Any], start: dict[str, Any], rise: float) -> str | None:
    """Why ``probe`` counts as collapsed against the ``start`` probe, or None when healthy."""
    if probe["repeat4"] > start["repeat4"] + rise:
        return f"repeated 4-grams {probe['repeat4']:.2f} (start {start['repeat4']:.2f})"
    if probe["distinct2"] < start["distinct2"] - rise:
        return f"distinct-2 {probe['distinct2']:.2f} (start {start['distinct2']:.2f})"
    return None


# --------------------------------------------------------------------------- plots


def _plots(run_dir: Path) -> list[Path]:
    """loss.png, margins.png and accuracy.png (train part and validation, by step)."""
    records = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]

    def series(key: str) -> tuple[list[int], list[float]]:
        return [r["step"] for r in records if key in r], [r[key] for r in records if key in r]

    return [line_figure(run_dir / name, [("train", *series(key), "o-"), ("validation", *series("eval_" + key), "o-")],
                        xlabel="optimizer step", ylabel=label, title=f"{label}: {run_dir.name}")
            for key, name, label in (("loss", "loss.png", "preference loss"),
                                     ("rewards/margins", "margins.png", "reward margin (chosen - rejected)"),
                                     ("rewards/accuracies", "accuracy.png", "reward accuracy (chosen > rejected)"))]


# --------------------------------------------------------------------------- the loop


def finetune_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Preference-tune a model as ``cfg`` says; returns the summary also written to ``metrics.json``.

    Raises:
        ConfigError: a run folder that already holds a run, a bad combination of settings.
        DataError: malformed records (all reported, by index, before anything trains).
    """
    clock = time.perf_counter()
    cfg.validate()
    splits = prepare_preference_splits(cfg.data)  # every record checked before anything is built
    run_dir = cfg.logging.run_folder("metrics.json", "model", what="a preference run")
    tcfg = cfg.train
    rt = setup_runtime(cfg.runtime, distributed=False)
    seed_everything(tcfg.seed)
    tokenizer = get_tokenizer()
    style = cfg.prompt.build()
    policy = cfg.model.build()
    if tcfg.trainable == "lora":
        cfg.lora.apply(policy)  # only the adapters train
    max_length = min(cfg.data.max_length or policy.config.context_length, policy.config.context_length)
    data = {name: PreferenceDataset(splits.get(name), tokenizer, style, max_length) for name in ("train", "val")}
    policy = policy.to(rt.device).train()
    loss_fn = tcfg.build_loss()
    mode = tcfg.reference if loss_fn.needs_reference else "none"
    reference = Reference(mode, policy, loss_fn.reduction)  # a copy of the plain module, before compiling
    policy = rt.prepare_model(policy)
    eval_bs = tcfg.eval_batch_size or tcfg.batch_size
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    print(f"preference tuning: {tcfg.loss} (reference: {mode}, reduction: {loss_fn.reduction}); pairs "
          f"train {len(data['train'])}, val {len(data['val'])}, test {len(splits.test)}; "
          f"{sum(d.n_truncated for d in data.values())} truncated to {max_length} tokens", flush=True)
    if mode == "precomputed":
        folder = (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_root()) / "reference-logps"
        path, reused = attach_reference_logps(policy, data, reduction=loss_fn.reduction, batch_size=eval_bs, rt=rt,
                                              folder=folder)
        print(f"reference log-probs {'read from' if reused else 'computed into'} {path}", flush=True)

    micro, _ = tcfg.accumulation(1)
    steps_per_epoch = math.ceil(len(data["train"]) / tcfg.batch_size)
    total = int(min(tcfg.max_steps or math.inf, steps_per_epoch * tcfg.epochs))
    schedule = build_schedule(tcfg, total)
    optimizer = build_optimizer(policy, cfg.optim, schedule(0), rt.device)
    probe_records = splits.val[: tcfg.collapse_prompts]
    generator = torch.Generator().manual_seed(tcfg.seed)
    log = MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard)
    history: list[dict[str, Any]] = []
    start_probe: dict[str, Any] | None = None
    healthy_step: int | None = None
    healthy_state: dict[str, Tensor] | None = None  # with stop_on_collapse: the last healthy weights, on the CPU
    stop_reason: str | None = None
    warnings: list[dict[str, Any]] = []
    diverged = False

    def run_eval(step: int) -> None:
        nonlocal start_probe, healthy_step, healthy_state, stop_reason
        record: dict[str, Any] = {"step": step, "kind": "eval", "epoch": step / steps_per_epoch}
        record.update(evaluate(policy, reference, loss_fn, data["train"], rt, eval_bs, tcfg.eval_iters))
        val = evaluate(policy, reference, loss_fn, data["val"], rt, eval_bs, None)
        record.update({f"eval_{k}": v for k, v in val.items()})
        if probe_records:
            probe = collapse_probe(policy, tokenizer, style, probe_records, tcfg.collapse_max_new_tokens)
            record.update({f"probe/{k}": v for k, v in probe.items()})
            start_probe = start_probe or probe
            why = collapsed(probe, start_probe, tcfg.collapse_rise)
            if why is None:
                healthy_step = step
                if tcfg.stop_on_collapse:
                    healthy_state = {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}
            else:
                warnings.append({"step": step, "reason": why})
                bar.write(f"warning: step {step}: the policy's text is degenerating: {why}; first response: "
                          f"{probe['responses'][0][:120]!r}")
                if tcfg.stop_on_collapse:
                    stop_reason = f"collapse at step {step}: {why}"
        log.log(record)
        history.append(record)
        bar.write(f"step {step}: loss {record['loss']:.4f} / val {record['eval_loss']:.4f}, margin "
                  f"{record['rewards/margins']:.3f} / val {record['eval_rewards/margins']:.3f}, accuracy "
                  f"{record['rewards/accuracies']:.2f} / val {record['eval_rewards/accuracies']:.2f}"
                  + (f", repeat4 {record['probe/repeat4']:.2f}, distinct2 {record['probe/distinct2']:.2f}, "
                     f"rouge-L {record['probe/rouge_l']:.3f}" if probe_records else ""))

    bar = Progress(total, enabled=cfg.logging.progress, echo=True, desc="dpo")
    train_start = time.perf_counter()
    step = 0
    try:
        run_eval(0)
        speed = Throughput()
        for epoch in range(tcfg.epochs):
            order = torch.randperm(len(data["train"]), generator=generator).tolist()
            for start in range(0, len(order), tcfg.batch_size):
                if step >= total or stop_reason:
                    break
                idx = order[start:start + tcfg.batch_size]
                lr = schedule(step)
                set_lr(optimizer, lr)
                outs, chosen, rejected, tokens = [], [], [], 0
                for m in range(0, len(idx), micro):
                    batch = next(_batches(data["train"], micro, idx[m:m + micro])).to(rt.device)
                    out, pc, pr = pair_loss(policy, reference, loss_fn, batch, rt)
                    (out.losses.sum() / len(idx)).backward()  # the whole step's mean, exact under accumulation
                    outs.append(out)
                    chosen.append(pc.detach())
                    rejected.append(pr.detach())
                    tokens += batch.input_ids.numel()
                grad_norm, applied = optimizer_step(optimizer, None, policy.parameters(), tcfg.grad_clip)
                step += 1
                metrics = _metrics(outs, chosen, rejected)
                if not math.isfinite(metrics["loss"]) or not applied:
                    diverged = True
                    stop_reason = f"non-finite loss or gradient at step {step}"
                    bar.write(f"error: {stop_reason}; the run keeps its last healthy weights")
                    break
                if step % cfg.logging.log_every == 0:
                    log.log({"step": step, "kind": "step", "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
                             "tokens_per_s": speed.rate(tokens), **metrics})
                bar.update(loss=metrics["loss"], lr=lr)
                if (tcfg.eval_every and step % tcfg.eval_every == 0) and step < total:
                    run_eval(step)
            if step >= total or stop_reason:
                break
        if history[-1]["step"] != step and not diverged:
            run_eval(step)
    finally:
        bar.close()
        log.close()
    train_seconds = time.perf_counter() - train_start

    # The run's model: the final weights, or the last healthy ones when the run stopped for a collapse.
    final_step = step
    if stop_reason and healthy_state is not None:  # a collapse, or a diverged loss
        policy.load_state_dict(healthy_state)
        final_step = healthy_step
    save_merged_model(policy, run_dir / "model", {"step": final_step, "task": "dpo", "loss": tcfg.loss,
                                                    "prompt_style": prompt_style_to_dict(style)})
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "loss": tcfg.loss, "reference": mode, "reduction": loss_fn.reduction,
        "steps": step, "model_step": final_step, "train_seconds": train_seconds,
        "before": {k: v for k, v in history[0].items() if k != "probe/responses"},
        "after": {k: v for k, v in history[-1].items() if k != "probe/responses"},
        "collapse_warnings": warnings, "stopped": stop_reason,
    }
    if tcfg.test_responses and splits.test and not (diverged and healthy_state is None):
        summary["test_responses"] = str(write_test_responses(run_dir, cfg, style, tokenizer, splits.test, rt))
    if cfg.logging.plots:
        _plots(run_dir)
    summary["seconds"] = time.perf_counter() - clock
    b, a = summary["before"], summary["after"]
    probe = (f"; probe repeat4 {b['probe/repeat4']:.2f} -> {a['probe/repeat4']:.2f}, distinct2 "
             f"{b['probe/distinct2']:.2f} -> {a['probe/distinct2']:.2f}" if "probe/repeat4" in a else "")
    summary["message"] = (
        f"validation: loss {b['eval_loss']:.4f} -> {a['eval_loss']:.4f}, reward margin "
        f"{b['eval_rewards/margins']:.3f} -> {a['eval_rewards/margins']:.3f}, accuracy "
        f"{b['eval_rewards/accuracies']:.2f} -> {a['eval_rewards/accuracies']:.2f}{probe}\n"
        f"training {train_seconds:.1f}s, {step} steps" + (f"; stopped: {stop_reason}" if stop_reason else "")
        + f"\nrun folder: {run_dir} (model: {run_dir / 'model'}, from step {final_step})")
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_test_responses(run_dir: Path, cfg: DPOConfig, style: PromptStyle, tokenizer,
                         records: Sequence[PreferenceRecord], rt: Runtime) -> Path:
    """Greedy responses of the run's model to the test records, written as the instruction
    task writes them (each record plus ``model_response``; ``output`` is the chosen response
    when the record has none), so ``customgpt eval rouge`` and ``eval judge`` read it."""
    model = load_model(run_dir / "model", device=rt.device, dtype="float32").eval()
    texts, settings = generate_responses(model, tokenizer, style, records,
                                         max_new_tokens=cfg.train.response_max_new_tokens,
                                         progress=cfg.logging.progress)
    rows = with_responses(records, texts, {**settings, "model": str(run_dir / "model")})  # type: ignore[arg-type]
    for row, record in zip(rows, records):
        row.setdefault("output", record.chosen)
    return write_json(run_dir / "test_responses.json", rows)

