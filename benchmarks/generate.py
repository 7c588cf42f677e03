"""Generation speed: customgpt's KV-cache loop against transformers' ``generate``.

    python benchmarks/generate.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/generate.py --quick    # a smoke run (under a minute)
    python benchmarks/generate.py --profile  # also: where a decode step spends its time

Everything runs in one process on the same random gpt2-124M weights (fp32, CPU, greedy):

* batch 1, a 32-token prompt, 128 new tokens: customgpt (KV cache) vs transformers'
  ``GPT2LMHeadModel.generate`` vs customgpt without the cache (the full window every step);
  the greedy tokens of all three are checked to be identical;
* the same with the CPU fast path off (``fast_path=False`` on a copy of the model whose
  weights keep their training layout: the model's forward every step), to show what the
  decode layout (:meth:`customgpt.model.GPT.use_decode_layout`) and
  :class:`customgpt.generate.CPUDecodeStep` add;
* 200 new tokens: cache vs no cache;
* batch 8 (``generate_batch``), 128 new tokens;
* decode speed with the cache holding 128, 512 and 1024 positions;
* the memory-bandwidth bound: reading every weight once per token at the bandwidth this
  machine reaches, the most tokens/s any implementation that does so can get at batch 1.

Figures are tokens per second of wall time, prefill included (as a user waits for them),
except the decode rows (from the time between consecutive tokens: the median step, and the
fastest step, which other load disturbs least). The batch-1 cached runs and transformers
take turns and the best of 3 counts. Other programs running on the machine slow everything
down (PyTorch's threads wait for each other on a busy CPU): the load average is printed;
compare ratios from one run, and prefer a quiet machine (or ``--threads 1`` on a busy one).

Where the time goes (``--profile``): with one thread, about 90% of a batch-1 decode step is
the matrix-vector products that read the weights (the blocks' linears, ~60%, and the LM
head, ~30%); attention, LayerNorm, GELU and the sampling loop share the rest. The run is
bound by memory bandwidth, so the headroom is the gap between the fastest decode step and
the bandwidth bound printed last. (With two threads on a busy machine, the threads of the
attention kernel waiting for each other can take a third of the step instead.)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from customgpt.checkpoints import customgpt_to_hf_state, random_model
from customgpt.config import GPTConfig
from customgpt.constants import EOT_ID
from customgpt.generate import SamplingParams, generate_batch, generate_tokens
from customgpt.model import GPT

Run = tuple[list[int], list[float]]  # tokens, and the time of each since the call began


def ours(model: GPT, prompt: list[int], new: int, use_cache: bool = True, fast_path: bool | None = None) -> Run:
    params = SamplingParams(temperature=0, max_new_tokens=new, stop_at_eot=False)
    t0 = time.perf_counter()
    toks, stamps = [], []
    for step in generate_tokens(model, prompt, params, use_cache=use_cache, fast_path=fast_path):
        toks.append(step.token_id)
        stamps.append(time.perf_counter() - t0)
    return toks, stamps


class _Stamps:
    """A transformers streamer that only notes when each token arrives."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter() - self.t0)

    def end(self) -> None:
        pass


def hf_run(hf, prompt: list[int], new: int) -> Run:
    streamer = _Stamps()
    out = hf_generate(hf, [prompt], new, streamer=streamer)[0]
    return out, streamer.stamps[1:]  # the first put() is the prompt itself


def interleaved(fns: dict[str, Callable[[], Run]], repeats: int) -> dict[str, tuple[float, list[float], list[int]]]:
    """Run each function ``repeats`` times in turns (A B A B ...), so that other load on the
    machine hits all alike. Per function: the best wall time to the last token, every
    inter-token interval of every run, and the tokens."""
    best = {k: float("inf") for k in fns}
    gaps: dict[str, list[float]] = {k: [] for k in fns}
    toks: dict[str, list[int]] = {}
    for _ in range(repeats):
        for key, fn in fns.items():
            toks[key], stamps = fn()
            best[key] = min(best[key], stamps[-1])
            gaps[key] += [b - a for a, b in zip(stamps, stamps[1:])]
    return {k: (best[k], gaps[k], toks[k]) for k in fns}


def hf_model_like(model: GPT):
    """transformers' GPT-2 holding the same weights (its default attention, SDPA)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**{**model.config.to_hf_dict(), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    with torch.device("meta"):
        hf = GPT2LMHeadModel(cfg)
    state = customgpt_to_hf_state(model.state_dict(), model.config)
    hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # run every token, as customgpt does here
    return hf.eval()


def hf_generate(hf, prompts: list[list[int]], new: int, streamer=None) -> list[list[int]]:
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = hf.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=new, pad_token_id=EOT_ID, streamer=streamer,
        )
    return out[:, ids.shape[1] :].tolist()


def decode_speed(model: GPT, position: int, steps: int) -> float:
    """Decode tokens/s with the cache holding about ``position`` positions: prefill
    ``position - steps`` tokens, then time the ``steps`` decode steps after the first token."""
    prompt = torch.randint(0, model.config.vocab_size, (position - steps,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(temperature=0, max_new_tokens=steps + 1, stop_at_eot=False)
    stamps = []
    for _ in generate_tokens(model, prompt, params):
        stamps.append(time.perf_counter())
    return steps / (stamps[-1] - stamps[0])


def bandwidth_gbs() -> float:
    """Read bandwidth: summing a 512 MiB tensor (far larger than any cache), best of 5."""
    big = torch.ones(128 * 1024 * 1024)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            t0 = time.perf_counter()
            big.sum()
            best = min(best, time.perf_counter() - t0)
    return big.numel() * 4 / best / 1e9


def profile_decode(model: GPT, prompt: list[int]) -> None:
    from torch.profiler import ProfilerActivity, profile

    gen = generate_tokens(model, prompt, SamplingParams(temperature=0, max_new_tokens=60, stop_at_eot=False))
    for _ in range(20):
        next(gen)  # past the prefill
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(30):
            next(gen)
    gen.close()
    print("\nprofile of 30 decode steps (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="profile 30 decode steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    new = 32 if quick else 128
    long_new = 48 if quick else 200
    repeats = 1 if quick else 3
    positions = (128, 512) if quick else (128, 512, 1024)
    decode_steps = 8 if quick else 32

    t_start = time.perf_counter()
    model = random_model(GPTConfig.from_preset("gpt2-124M"), seed=0)
    plain = copy.deepcopy(model)  # keeps the (out, in) layout: generated with fast_path=False
    hf = hf_model_like(model)
    n_params = model.num_parameters()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (32,), generator=gen).tolist()
    batch = [torch.randint(0, model.config.vocab_size, (32,), generator=gen).tolist() for _ in range(8)]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"model: gpt2-124M shape, random weights, {n_params / 1e6:.1f}M parameters, fp32, greedy\n")

    # Warm up both implementations (first calls allocate and pick kernels).
    ours(model, prompt, 4)
    ours(plain, prompt, 4, fast_path=False)
    hf_run(hf, prompt, 4)

    rows: list[tuple[str, float]] = []
    runs = interleaved(
        {
            "ours": lambda: ours(model, prompt, new),
            "hf": lambda: hf_run(hf, prompt, new),
            "slow": lambda: ours(plain, prompt, new, fast_path=False),
            "long": lambda: ours(model, prompt, long_new),
        },
        repeats,
    )
    (t_ours, gaps_ours, tok_ours), (t_hf, gaps_hf, tok_hf), (t_long, _, tok_long) = (
        runs["ours"], runs["hf"], runs["long"]
    )
    t_slow, gaps_slow, tok_slow = runs["slow"]
    # One no-cache run to long_new tokens; its first `new` tokens give the batch-1 figure.
    tok_nc, stamps = ours(model, prompt, long_new, use_cache=False)
    t_nc_new, t_nc_long = stamps[new - 1], stamps[-1]
    same = tok_ours == tok_hf == tok_slow == tok_nc[:new] and tok_long == tok_nc
    rows += [
        (f"customgpt, KV cache      b=1  {new} new", new / t_ours),
        (f"transformers generate    b=1  {new} new", new / t_hf),
        (f"customgpt, fast path off b=1  {new} new", new / t_slow),
        (f"customgpt, no cache      b=1  {new} new", new / t_nc_new),
        (f"customgpt, KV cache      b=1  {long_new} new", long_new / t_long),
        (f"customgpt, no cache      b=1  {long_new} new", long_new / t_nc_long),
        ("customgpt decode, median step (b=1)", 1 / statistics.median(gaps_ours)),
        ("transformers decode, median step (b=1)", 1 / statistics.median(gaps_hf)),
        ("customgpt decode, fast path off, median step", 1 / statistics.median(gaps_slow)),
        ("customgpt decode, fastest step (b=1)", 1 / min(gaps_ours)),
        ("transformers decode, fastest step (b=1)", 1 / min(gaps_hf)),
    ]
    params_b8 = SamplingParams(temperature=0, max_new_tokens=new, stop_at_eot=False)
    t0 = time.perf_counter()
    generate_batch(model, batch, params_b8)
    t_b8 = time.perf_counter() - t0
    rows.append((f"customgpt, KV cache      b=8  {new} new", 8 * new / t_b8))
    decode = {p: decode_speed(model, p, decode_steps) for p in positions}
    for p, v in decode.items():
        rows.append((f"customgpt decode only at position {p}", v))

    gbs = bandwidth_gbs()
    weight_bytes = n_params * 4  # every weight read once per token (the tied head once more
    # in practice: it is both the embedding row lookup, tiny, and the full LM head matrix)
    bound = gbs * 1e9 / weight_bytes

    width = max(len(name) for name, _ in rows)
    print(f"{'run'.ljust(width)}  tokens/s")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value:8.1f}")
    print()
    print(f"greedy tokens identical (cache, fast path off, no cache, transformers): {'yes' if same else 'NO'}")
    print(f"customgpt / transformers generate (b=1, {new} new):   {t_hf / t_ours:5.2f}x   (target >= 2.0x)")
    print(f"  per decode step, median: {statistics.median(gaps_hf) / statistics.median(gaps_ours):5.2f}x; "
          f"fastest step (least disturbed by other load): {min(gaps_hf) / min(gaps_ours):5.2f}x")
    print(f"fast path on / off (b=1, {new} new):                  {t_slow / t_ours:5.2f}x   "
          f"(median step {statistics.median(gaps_slow) / statistics.median(gaps_ours):.2f}x)")
    print(f"cache / no cache (b=1, {new} new):                    {t_nc_new / t_ours:5.2f}x")
    print(f"cache / no cache (b=1, {long_new} new):                    {t_nc_long / t_long:5.2f}x   (target >= 6x)")
    print(f"batch 8 / batch 1 throughput:                         {(8 * new / t_b8) / (new / t_ours):5.2f}x")
    print(f"memory bandwidth (sum of 512 MiB): {gbs:.1f} GB/s -> bound {bound:.1f} tokens/s at batch 1 "
          f"({weight_bytes / 1e6:.0f} MB of fp32 weights per token); customgpt decode at position 128 "
          f"reaches {decode[positions[0]] / bound:.0%} of it")
    hf_rate = new / t_hf
    print(f"2.0x transformers would be {2 * hf_rate:.1f} tokens/s: {2 * hf_rate / bound:.0%} of that bound")
    print(f"(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    if args.profile:
        profile_decode(model, prompt)


if __name__ == "__main__":
    main()
