"""Server throughput: batched decoding against one request at a time, same run.

    python benchmarks/serve.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/serve.py --quick    # a smoke run

Starts ``customgpt serve --model gpt2-124M`` (the preset: random weights, the GPT-2 124M
shape) twice, one after the other, on loopback: with ``--max-batch 16`` (batched decoding)
and with ``--max-batch 1`` (one request at a time, the baseline). Against each, 1, 4 and 16
concurrent clients (asyncio + httpx) each send ``--requests`` streaming completions (a
``--prompt-tokens`` prompt of token ids, ``--max-tokens`` new tokens, greedy) one after the
other. Reported per case:

* aggregate generated tokens/s: all completion tokens (from the streams' usage) over the
  wall time of the case;
* time to first token (TTFT): from sending a request to its first streamed token, median
  and 95th percentile (queueing included: that is what a client waits);
* the ratio of the batched server's aggregate tokens/s to the baseline's, per client count.

Both servers run the same engine and the same model forward (the baseline only decodes one
row at a time). Other programs on the machine slow everything down: the load average is
printed; compare ratios from one run. On a busy machine pass ``--threads 1``: two torch
threads that wait for each other on an oversubscribed CPU made every step several times
slower in our runs (load average 10 on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    port = free_port()
    cmd = [sys.executable, "-m", "customgpt", "serve", "--model", model, "--port", str(port),
           "--max-batch", str(max_batch), "--max-queue", "64", "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    log.seek(0)
    raise SystemExit("the server did not start:\n" + log.read())


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: list[int],
                      max_tokens: int) -> tuple[int, float]:
    """Stream one completion; return (completion tokens, seconds to the first token)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"]:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft if ttft is not None else time.perf_counter() - t0


async def run_case(url: str, model: str, clients: int, requests: int, prompt_tokens: int,
                   max_tokens: int) -> dict:
    async def client_loop(c: int, client: httpx.AsyncClient) -> list[tuple[int, float]]:
        out = []
        for r in range(requests):
            prompt = [(1000 + 97 * c + 13 * r + 7 * t) % 50000 for t in range(prompt_tokens)]
            out.append(await one_request(client, url, model, prompt, max_tokens))
        return out

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(client_loop(c, client) for c in range(clients)))
        wall = time.perf_counter() - t0
    flat = [x for per in results for x in per]
    tokens = sum(t for t, _ in flat)
    ttfts = sorted(f for _, f in flat)
    p95 = ttfts[min(len(ttfts) - 1, max(0, round(0.95 * len(ttfts)) - 1))]
    return {"clients": clients, "requests": len(flat), "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "ttft_median": statistics.median(ttfts), "ttft_p95": p95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-124M")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=2, help="requests per client (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the servers (1 is steadier on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 request per client, 16 tokens")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 1, 16
    counts = [int(c) for c in args.clients.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# model {args.model}, prompt {args.prompt_tokens} tokens, {args.max_tokens} new tokens, greedy, "
          f"{args.requests} request(s) per client, server threads: {args.threads or 'default'}", flush=True)
    table: dict[int, dict[int, dict]] = {}
    for max_batch in (args.max_batch, 1):
        proc, url = start_server(args.model, max_batch, args.threads)
        try:
            asyncio.run(run_case(url, args.model, 1, 1, args.prompt_tokens, 4))  # warm-up
            for clients in counts:
                row = asyncio.run(run_case(url, args.model, clients, args.requests, args.prompt_tokens,
                                           args.max_tokens))
                table.setdefault(max_batch, {})[clients] = row
                print(f"max-batch {max_batch:>2}  clients {clients:>2}: {row['tokens_per_s']:7.1f} tokens/s "
                      f"({row['tokens']} tokens in {row['seconds']:.1f} s), TTFT median "
                      f"{row['ttft_median'] * 1000:.0f} ms, p95 {row['ttft_p95'] * 1000:.0f} ms", flush=True)
        finally:
            stop_server(proc)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| clients | batched tokens/s | one-at-a-time tokens/s | ratio | batched TTFT p95 | one-at-a-time TTFT p95 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in counts:
        b, s = table[args.max_batch][clients], table[1][clients]
        print(f"| {clients} | {b['tokens_per_s']:.1f} | {s['tokens_per_s']:.1f} | "
              f"{b['tokens_per_s'] / s['tokens_per_s']:.2f}x | {b['ttft_p95'] * 1000:.0f} ms | "
              f"{s['ttft_p95'] * 1000:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in table.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
