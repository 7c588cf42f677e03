"""Training throughput: customgpt against transformers' GPT2LMHeadModel, same weights, same run.

    python benchmarks/train.py                # gpt2-124M, batch 4 x 256, fp32, CPU
    python benchmarks/train.py --steps 3      # shorter
    python benchmarks/train.py --verbose      # also every timed step (wall and CPU seconds)
    python benchmarks/train.py --adamw foreach --threads 1

About 2-3 minutes on a quiet 2-core machine, up to twice that on a busy one.

One training step is forward + backward + ``torch.optim.AdamW.step()`` + ``zero_grad``:

* customgpt: ``GPT.forward_hidden`` + :func:`customgpt.losses.causal_lm_loss` (the fused,
  chunked LM head + cross-entropy), targets = the inputs shifted left, last position ignored;
* transformers: ``GPT2LMHeadModel(input_ids, labels=input_ids).loss`` (SDPA attention),
  which shifts the labels itself: both models score the same 255 targets per row, and the
  first step checks that both losses agree.

Both start from the same random gpt2-124M weights (dropout 0) and use the same AdamW
(same lr, betas, weight decay and implementation flag: ``--adamw fused`` by default, the
fastest on CPU; ``foreach`` and ``for-loop`` are the alternatives). After warm-up steps
(not timed) the two models take turns, A B B A A B ..., so that other load on the machine
hits both alike. Reported: the median step of each, and four ratios: of the median steps,
the median of the ratios within back-to-back pairs (the least disturbed by load that comes
and goes: quote this one), of the best steps, and of the CPU seconds per step.

MFU (model FLOPs utilisation) follows the PaLM paper (appendix B) as nanoGPT does:
FLOPs per token = 6 N + 12 L H Q T, N the parameters without the position embeddings
(the tied token embedding counts: it is the LM head's matmul), L layers, H heads, Q head
width, T the sequence length (the attention term counts the full T x T score matrix, as
the formula does). The peak is a fp32 ``torch.mm``, the best of 2048 x 2048 x 2048 and of
the model's MLP shape, measured before the steps and again after every pair of them (so
that a quiet moment is caught if there is one). MFU is only meaningful on a quiet machine.

The loss section times the LM head + loss alone (forward + backward on the same hidden
states), the fused path against the reference one (full logits + ``F.cross_entropy``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from customgpt.checkpoints import customgpt_to_hf_state, random_model
from customgpt.config import GPTConfig
from customgpt.constants import IGNORE_INDEX
from customgpt.losses import causal_lm_loss

ADAMW_FLAGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpt2-124M", help="model preset (default gpt2-124M)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256, help="tokens per row")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2)")
    p.add_argument("--adamw", choices=sorted(ADAMW_FLAGS), default="fused", help="AdamW implementation, for both")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--loss-repeats", type=int, default=3, help="repetitions of the loss-only timing (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print every timed step")
    args = p.parse_args(argv)
    for name in ("batch", "seq", "steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.warmup < 0 or args.loss_repeats < 0:
        p.error("--warmup and --loss-repeats must be >= 0")
    return args


# --------------------------------------------------------------------------- measuring


def matmul_peak(n_embd: int, tokens: int, repeats: int = 5) -> tuple[float, str]:
    """Best fp32 ``torch.mm`` FLOP/s over a square 2048^3 product and the model's MLP
    up-projection (tokens x n_embd @ n_embd x 4 n_embd); returns (FLOP/s, which shape)."""
    shapes = {"2048x2048 @ 2048x2048": (2048, 2048, 2048), f"{tokens}x{n_embd} @ {n_embd}x{4 * n_embd}": (tokens, n_embd, 4 * n_embd)}
    best, which = 0.0, ""
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm-up: threads, packing buffers
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            rate = 2 * m * k * n / (time.perf_counter() - t0)
            if rate > best:
                best, which = rate, name
    return best, which


def flops_per_token(config: GPTConfig, seq: int, n_params: int) -> float:
    """PaLM/nanoGPT model FLOPs per trained token: 6 N + 12 L H Q T (N without wpe)."""
    n = n_params - config.context_length * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_head * config.head_dim * seq


def timed_turns(
    steps: dict[str, Callable[[], float]], repeats: int, between: Callable[[], object] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """(wall seconds, CPU seconds) of ``repeats`` calls of each function, taking turns in an
    A B B A ... order so that neither always runs first after the other; ``between`` runs
    (untimed) after each round."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            out[name].append((time.perf_counter() - w0, time.process_time() - c0))
        if between is not None:
            between()
    return out


# --------------------------------------------------------------------------- the two models


def build(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = GPTConfig.from_preset(args.preset, dropout=0.0, attn_dropout=0.0)
    ours = random_model(config, seed=args.seed).train()
    hf = GPT2LMHeadModel(GPT2Config(**config.to_hf_dict(), attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(customgpt_to_hf_state(ours.state_dict(), config), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights did not map onto GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return config, ours, hf.train()


def make_steps(args: argparse.Namespace, ours, hf):
    g = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=g)
    targets = torch.cat([idx[:, 1:], torch.full((args.batch, 1), IGNORE_INDEX)], dim=1)
    flags = ADAMW_FLAGS[args.adamw]
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=0.1, **flags)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.1, **flags)

    def step_ours() -> float:
        loss = causal_lm_loss(ours.forward_hidden(idx), ours.lm_head.weight, targets)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_hf() -> float:
        loss = hf(input_ids=idx, labels=idx).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss.item()

    return {"customgpt": step_ours, "transformers": step_hf}


def loss_only(args: argparse.Namespace, config: GPTConfig) -> dict[str, list[tuple[float, float]]]:
    """Forward + backward of the LM head + loss alone, fused vs reference."""
    g = torch.Generator().manual_seed(args.seed + 2)
    n = args.batch * args.seq
    hidden = torch.randn(n, config.n_embd, generator=g).requires_grad_()
    weight = (0.02 * torch.randn(config.vocab_size, config.n_embd, generator=g)).requires_grad_()
    targets = torch.randint(0, config.vocab_size, (n,), generator=g)

    def run(fused: bool) -> Callable[[], float]:
        def f() -> float:
            hidden.grad = weight.grad = None
            loss = causal_lm_loss(hidden, weight, targets, fused=fused)
            loss.backward()
            return loss.item()
        return f

    fns = {"fused": run(True), "reference": run(False)}
    for f in fns.values():
        f()
    return timed_turns(fns, args.loss_repeats)


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = args.batch * args.seq
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    config, ours, hf = build(args)
    n_params = ours.num_parameters()
    fpt = flops_per_token(config, args.seq, n_params)
    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters, batch {args.batch} x {args.seq} = {tokens} tokens, "
          f"fp32, AdamW {args.adamw}")
    peaks = [matmul_peak(config.n_embd, tokens)]

    steps = make_steps(args, ours, hf)
    first = {name: step() for name, step in steps.items()}
    print(f"first-step loss: customgpt {first['customgpt']:.6f}, transformers {first['transformers']:.6f}")
    if abs(first["customgpt"] - first["transformers"]) > 1e-4 * abs(first["transformers"]):
        raise SystemExit("the two models disagree on the loss: not the same computation")
    if args.warmup > 1:
        timed_turns(steps, args.warmup - 1)
    times = timed_turns(steps, args.steps, between=lambda: peaks.append(matmul_peak(config.n_embd, tokens, repeats=2)))
    if args.verbose:
        for name, runs in times.items():
            print(f"{name}: " + ", ".join(f"{w:.2f} s (CPU {c:.2f})" for w, c in runs))
    peak, peak_shape = max(peaks)

    print(f"\nfp32 matmul peak (torch.mm, best of {len(peaks)} measurements, reached by {peak_shape}): "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"model FLOPs per token (6N + 12LHQT, N={n_params - config.context_length * config.n_embd:,} "
          f"without wpe): {fpt / 1e6:.1f} MFLOP")
    print(f"\n{'model':<14}{'median s/step':>14}{'best s/step':>12}{'tokens/s':>10}{'CPU s/step':>12}{'MFU':>7}")
    tps = {}
    cpu = {}
    for name, runs in times.items():
        walls = [w for w, _ in runs]
        med = statistics.median(walls)
        tps[name] = tokens / med
        cpu[name] = statistics.median(c for _, c in runs)
        mfu = tps[name] * fpt / peak
        print(f"{name:<14}{med:>14.2f}{min(walls):>12.2f}{tps[name]:>10.1f}{cpu[name]:>12.2f}{mfu:>7.1%}")
    ratio = tps["customgpt"] / tps["transformers"]
    # Each repetition ran the two models back to back: the ratio within each pair is the
    # least disturbed by load that changes over minutes.
    paired = statistics.median(h / c for (h, _), (c, _) in zip(times["transformers"], times["customgpt"]))
    print(f"\ncustomgpt / transformers tokens/s: {ratio:.2f}x (median steps; median of back-to-back pairs "
          f"{paired:.2f}x; best steps "
          f"{min(w for w, _ in times['transformers']) / min(w for w, _ in times['customgpt']):.2f}x; "
          f"CPU time {cpu['transformers'] / cpu['customgpt']:.2f}x)")

    if args.loss_repeats:
        head = loss_only(args, config)
        print(f"\nLM head + loss alone, forward + backward ({tokens} x {config.n_embd} -> {config.vocab_size}):")
        for name, runs in head.items():
            print(f"  {name:<10} median {statistics.median(w for w, _ in runs):.3f} s "
                  f"(CPU {statistics.median(c for _, c in runs):.3f} s)")
        r = statistics.median(w for w, _ in head["reference"]) / statistics.median(w for w, _ in head["fused"])
        print(f"  fused is {r:.2f}x the reference")
    print(f"\nload average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
