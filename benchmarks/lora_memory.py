"""Peak training memory and step time: LoRA vs full fine-tuning, side by side.

    python benchmarks/lora_memory.py                       # gpt2-124M shape, batch 2 x 256, CPU
    python benchmarks/lora_memory.py --preset cpu-small --seq 128 --steps 5

Each mode runs in its own fresh Python process, so the peak resident set size
(``ru_maxrss``) of one cannot hide the other's. Both build the same randomly initialised
model, then run AdamW steps on the LM loss; full fine-tuning optimises every parameter,
LoRA only the adapters (r=8 on c_attn, c_proj and c_fc by default). Reported:

* ``model MB``: resident memory once the model is built (Python + torch + weights);
* ``peak MB``: the process's peak resident memory over the whole run;
* ``training MB``: peak minus model, i.e. what training added: gradients, optimizer state,
  activations;
* ``step s``: median wall time of one step (forward, backward, optimizer), after warm-up;
* ``CPU s``: the same step's CPU time summed over threads, which other processes on a busy
  machine disturb less than the wall time.

The last lines give LoRA's numbers as ratios of full fine-tuning's, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def current_rss_mb() -> float:
    """Resident set size now, from /proc (Linux); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    """One mode in this (fresh) process; returns the measurements."""
    import torch

    from customgpt import checkpoints, lora
    from customgpt.config import GPTConfig
    from customgpt.losses import model_lm_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig.from_preset(args.preset)
    model = checkpoints.random_model(config, seed=0).train()
    if args.mode == "lora":
        cfg = lora.LoRAConfig(r=args.r, alpha=2 * args.r, targets=tuple(args.targets))
        lora.inject_lora(model, cfg)
        lora.mark_only_lora_trainable(model)
    trainable, total = lora.count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    model_mb = current_rss_mb()

    g = torch.Generator().manual_seed(0)
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=g)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model_lm_loss(model, idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if step >= args.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    return {
        "mode": args.mode,
        "trainable": trainable,
        "total": total,
        "model_mb": model_mb,
        "peak_mb": peak_rss_mb(),
        "step_s": statistics.median(times),
        "cpu_s": statistics.median(cpu_times),
        "threads": torch.get_num_threads(),
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-124M")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["c_attn", "c_proj", "c_fc"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)  # worker process
    args = parser.parse_args()

    if args.mode:
        print(json.dumps(worker(args)))
        return

    print(
        f"{args.preset}, batch {args.batch} x {args.seq} tokens, AdamW, {args.steps} timed steps "
        f"after {args.warmup} warm-up; LoRA r={args.r} on {', '.join(args.targets)}"
    )
    load_before = os.getloadavg()[0]
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            a for a in sys.argv[1:] if a != "--mode"
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{mode} run failed:\n{done.stderr}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])

    header = (
        f"{'mode':<6}{'trainable':>14}{'model MB':>10}{'peak MB':>10}{'training MB':>13}"
        f"{'step s':>9}{'CPU s':>9}"
    )
    print(f"torch threads: {results['full']['threads']}")
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        training = r["peak_mb"] - r["model_mb"]
        print(
            f"{mode:<6}{r['trainable']:>14,}{r['model_mb']:>10.0f}{r['peak_mb']:>10.0f}"
            f"{training:>13.0f}{r['step_s']:>9.2f}{r['cpu_s']:>9.2f}"
        )
    full, lo = results["full"], results["lora"]
    # Other processes on the machine inflate step times (both modes alike, not equally).
    print(f"load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    print(f"LoRA trainable parameters: {100 * lo['trainable'] / lo['total']:.2f}% of {lo['total']:,}")
    print(f"LoRA / full, peak memory:     {lo['peak_mb'] / full['peak_mb']:.2f}x")
    print(
        f"LoRA / full, training memory: "
        f"{(lo['peak_mb'] - lo['model_mb']) / (full['peak_mb'] - full['model_mb']):.2f}x"
    )
    print(f"LoRA / full, step time:       {lo['step_s'] / full['step_s']:.2f}x (wall clock)")
    print(f"LoRA / full, step CPU time:   {lo['cpu_s'] / full['cpu_s']:.2f}x (all threads; steadier on a busy machine)")


if __name__ == "__main__":
    main()
