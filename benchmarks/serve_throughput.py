#!/usr/bin/env python
"""Steering-server throughput: requests/s and p50/p95 latency under 1/8/32 concurrent clients.

One ``persona_lens.serve`` server (HF backend) runs in this process on 127.0.0.1 (a free port)
with ``--personas`` random unit persona vectors. The workload is ``--requests`` chat requests
with mixed steering (cycling through the personas, an unsteered request, three position modes
and three alphas), greedy, ``--max-tokens`` tokens each, sent with the official ``openai``
client:

* **baseline** — sequential: one client, one request at a time (concurrency 1);
* **ours** — the same requests from 8 and 32 concurrent clients (threads), which the server's
  batcher packs into shared generate calls with per-row steering.

ratio = requests/s / sequential requests/s. Every concurrent run's answers are checked against
the sequential answers (greedy: they must be identical). Output: one human line and one JSON
line per concurrency.

    python benchmarks/serve_throughput.py                       # embedded SmolLM2, CPU
    python benchmarks/serve_throughput.py --tiny                # random 3-layer model: a smoke run
    python benchmarks/serve_throughput.py --device cuda --requests 128 --concurrency 1,8,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPTS = ["What is your favourite season?", "Describe a city you like.", "How do I make tea?",
           "Tell me about the ocean.", "What should I read next?", "Give me advice for a job interview."]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="embedded name, HF id or folder")
    p.add_argument("--tiny", action="store_true", help="the random 3-layer test model instead of --model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--requests", type=int, default=32, help="requests per run")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--personas", type=int, default=4)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated; the first is the baseline (1)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=8.0, help="largest alpha (unit vectors); others are 1/2 and 1/4")
    return p.parse_args(argv)


def workload(n: int, personas: list[str], layer: int, alpha: float) -> list[dict]:
    choices = [None, *personas]
    out = []
    for i in range(n):
        persona = choices[i % len(choices)]
        steer = {} if persona is None else {"persona": persona, "alpha": alpha / 2 ** (i % 3), "layer": layer,
                                            "positions": ("response", "prompt", "all")[i % 3]}
        out.append({"prompt": PROMPTS[i % len(PROMPTS)], **steer})
    return out


def run(base_url: str, model: str, requests: list[dict], concurrency: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def one(req: dict) -> tuple[str, float]:
        start = time.perf_counter()
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": req["prompt"]}], max_tokens=max_tokens,
            temperature=0, extra_body={k: v for k, v in req.items() if k != "prompt"})
        return r.choices[0].message.content, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    latencies = np.array([t for _, t in done])
    return {"concurrency": concurrency, "requests": len(requests), "wall_s": round(wall, 3),
            "requests_per_s": round(len(requests) / wall, 3), "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p95_s": round(float(np.percentile(latencies, 95)), 3), "answers": [a for a, _ in done]}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    from persona_lens import testing
    from persona_lens.models import load_model, n_layers
    from persona_lens.serve import HFBackend, ServerThread, create_app

    warnings.filterwarnings("ignore", message="steering at layer")  # random directions, strong on purpose
    model = testing.tiny_model() if args.tiny else load_model(args.model, device=args.device)
    name = "tiny" if args.tiny else args.model
    vectors = {}
    for i in range(args.personas):
        v = testing.tiny_vector(model, seed=i, persona=f"p{i}")
        vectors[f"p{i}"] = v.normalized()
    layer = n_layers(model) // 3
    requests = workload(args.requests, list(vectors), layer, args.alpha)
    app = create_app(HFBackend(model), vectors, model_name=name, max_batch_size=args.max_batch_size,
                     batch_wait_ms=args.batch_wait_ms, default_max_tokens=args.max_tokens)
    levels = [int(c) for c in args.concurrency.split(",")]
    results = []
    with ServerThread(app) as server:
        run(server.base_url, name, requests[:2], 1, args.max_tokens)  # warm-up, untimed
        for level in levels:
            calls_before = len(app.state.batcher.calls)
            r = run(server.base_url, name, requests, level, args.max_tokens)
            calls = app.state.batcher.calls[calls_before:]
            r["generate_calls"], r["rows_per_call"] = len(calls), calls
            results.append(r)
    base, sequential_answers = results[0], results[0]["answers"]
    for r in results:
        r["ratio"] = round(r["requests_per_s"] / base["requests_per_s"], 2)
        r["same_answers_as_sequential"] = r.pop("answers") == sequential_answers
    for r in results:
        print(f"concurrency {r['concurrency']:>3}: {r['requests_per_s']:.2f} req/s (ratio {r['ratio']:.2f} vs "
              f"sequential), p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, {r['generate_calls']} generate calls "
              f"(rows: {r['rows_per_call']}), answers identical: {r['same_answers_as_sequential']}")
    meta = {"model": name, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus", "max_tokens": args.max_tokens,
            "personas": args.personas, "batch_wait_ms": args.batch_wait_ms, "date": time.strftime("%Y-%m-%d")}
    for r in results:
        print(json.dumps({**meta, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
