#!/usr/bin/env python
"""Training-data screening throughput and memory: persona_lens ``screen.run`` vs a plain HF loop.

A synthetic JSONL training set (``--rows`` rows of ``{"prompt", "response"}``, unique prompts
of ``--prompt-words`` words, responses of ``--response-words`` words) is screened by projection
difference (Persona Vectors' ΔP, :mod:`persona_lens.analysis.screen`) at ``--layer`` with a
random unit vector. The base model's responses are **already cached** (a base-response cache
file written up front, keyed as ``screen.run`` keys it), so both variants do projection work
only: two response-mean projections per row (the row's response and the cached base response).

* **baseline** — what the Persona Vectors reference code does, batched: read the whole file and
  cache into memory, tokenize, plain transformers forward of the full model
  (``output_hidden_states=True``) on a model the bridge never touched, response-mean of
  ``hidden_states[layer + 1]``, projection, keep every result in memory, sort for the top-K,
  write the scored file and the top-K file.
* **ours** — ``persona_lens.analysis.screen.run(bridge, ScreenConfig(data, out, layer,
  base_cache=...), vector=vector)``: streams the file in chunks, capture hooks reduce inside the
  forward and stop it after ``layer``, running statistics and a top-K heap, atomic output.

Throughput = rows / seconds (file in, scored file out); ``ratio`` = ours / baseline, and
``ratio_cpu_time`` the same from process CPU time (robust on a machine shared with other jobs). Peak memory is measured as in
``capture_throughput.py`` (CUDA allocator peak above the start; on CPU the sampled RSS above the
start with glibc's mmap threshold pinned) and reported per row count: ours should stay flat in
the number of rows, the baseline grows with it.

    python benchmarks/screen_throughput.py                                        # SmolLM2, CPU
    python benchmarks/screen_throughput.py --rows 10000 --shape qwen2.5-7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _measure as M  # noqa: E402
import _subject as S  # noqa: E402
import torch  # noqa: E402

BASELINE_DESCRIPTION = {
    "separate": "in-memory loop: whole file + cache loaded, plain transformers full forward with "
                "output_hidden_states=True (separately built HF model, sdpa), response-mean of hidden_states[layer+1], "
                "projection, all results kept, sorted top-K, files written",
    "native": "same loop on the bridge's HF model inside persona_lens.native.native()",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = S.benchmark_parser(__doc__, default_repeats=1)
    p.add_argument("--rows", type=int, nargs="+", default=None,
                   help="row counts to screen (default 500 2000 on CPU, 2000 10000 on GPU)")
    p.add_argument("--layer", type=int, default=None, help="default: (n_layers - 1) // 2 (never the last layer)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 64 on GPU")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--prompt-words", type=int, default=12)
    p.add_argument("--response-words", type=int, default=32)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=64, help="the base cache's key (no generation happens)")
    p.add_argument("--workdir", default=None, help="where the synthetic files go (default: a temp dir)")
    return p.parse_args(argv)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(C.COMMON_WORDS) for _ in range(n))


def write_dataset(folder: Path, n_rows: int, args, model) -> tuple[Path, Path]:
    """The training file and a base-response cache that covers every prompt."""
    from persona_lens.analysis.projection import row_prompt
    from persona_lens.analysis.screen import base_cache_key, base_response_fingerprint
    from persona_lens.runs.fingerprint import model_fingerprint

    fingerprint = base_response_fingerprint(model_fingerprint(model), args.max_new_tokens)

    rng = random.Random(args.seed)
    data, cache = folder / f"train_{n_rows}.jsonl", folder / f"base_cache_{n_rows}.jsonl"
    with data.open("w") as fd, cache.open("w") as fc:
        for i in range(n_rows):
            row = {"prompt": f"{i}. {_words(rng, args.prompt_words)}?", "response": _words(rng, args.response_words)}
            fd.write(json.dumps(row) + "\n")
            fc.write(json.dumps({"key": base_cache_key(row_prompt(row)), "fingerprint": fingerprint,
                                 "response": _words(rng, args.response_words)}) + "\n")
    return data, cache


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = S.setup(args)
    mmap_pinned = M.pin_cpu_malloc(device)

    from persona_lens.analysis import screen
    from persona_lens.analysis.projection import row_prompt
    from persona_lens.analysis.screen import base_cache_key
    from persona_lens.chat import as_messages, make_batch, prompt_ids, response_ids
    from persona_lens.models import check_layer, d_model, model_id, n_layers
    from persona_lens.vectors import PersonaVector

    subject, baseline_model = S.load_with_baseline(args, device, dtype)
    bridge, tok = subject.bridge, subject.tokenizer
    on_gpu = torch.device(device).type == "cuda"
    row_counts = args.rows or ([2000, 10000] if on_gpu else [500, 2000])
    batch = args.batch_size or (64 if on_gpu else 16)
    L, D = n_layers(bridge), d_model(bridge)
    layer = check_layer(bridge, args.layer if args.layer is not None else (L - 1) // 2)
    if layer == L - 1:
        # HF's last hidden state is taken after the final norm: the baseline cannot read the
        # same activation there (ours reads blocks.{L-1}.hook_resid_post, before the norm).
        raise SystemExit(f"--layer {layer} is the last layer, where HF's hidden_states[-1] is post-norm; "
                         "pick a layer below it")
    g = torch.Generator().manual_seed(args.seed)
    vectors = torch.zeros(L, D)
    vectors[layer] = torch.randn(D, generator=g)
    vector = PersonaVector(vectors, {"persona": "random", "model_id": model_id(bridge)})
    unit = (vectors[layer] / vectors[layer].norm()).to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    env = M.environment(device, dtype)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="screen_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)

    def baseline(data: Path, cache: Path, out: Path) -> int:
        rows = [json.loads(line) for line in data.open()]
        base = {}
        for line in cache.open():
            r = json.loads(line)
            base[r["key"]] = r["response"]
        prompts = [as_messages(row_prompt(r)) for r in rows]
        base_texts = [base[base_cache_key(p)] for p in prompts]
        p_ids = [prompt_ids(tok, p) for p in prompts]

        def project(texts: list[str]) -> torch.Tensor:
            r_ids = [response_ids(tok, t) for t in texts]
            out_t = torch.empty(len(texts), dtype=torch.float64)
            with torch.inference_mode():
                for s in range(0, len(texts), batch):
                    b = make_batch(p_ids[s:s + batch], r_ids[s:s + batch], pad).to(device)
                    with S.baseline_hf(bridge, baseline_model) as hf:
                        hs = hf.get_decoder()(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                              output_hidden_states=True, use_cache=False).hidden_states
                    m = b.response_mask.to(torch.float32)
                    mean = torch.einsum("bs,bsd->bd", m, hs[layer + 1].float()) / m.sum(1, keepdim=True)
                    out_t[s:s + len(b.input_ids)] = (mean @ unit).double().cpu()
            return out_t

        proj, bproj = project([r["response"] for r in rows]), project(base_texts)
        results = [dict(r, projection=float(p), base_projection=float(q), projection_diff=float(p - q))
                   for r, p, q in zip(rows, proj, bproj)]
        top = heapq.nlargest(args.top_k, results, key=lambda r: r["projection_diff"])
        with out.open("w") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")
        with out.with_suffix(".top.jsonl").open("w") as fh:
            for r in top:
                fh.write(json.dumps(r) + "\n")
        return len(results)

    def ours(data: Path, cache: Path, out: Path) -> int:
        config = screen.ScreenConfig(data=str(data), out=str(out), layer=layer, base_cache=str(cache),
                                     top_k=args.top_k, chunk_size=args.chunk_size,
                                     max_new_tokens=args.max_new_tokens, batch_size=batch)
        result = screen.run(bridge, config, vector=vector, progress=False)
        result.save(out.with_suffix(".screen"))  # the summary and top rows, as the CLI writes them
        if result.cache["generated"]:
            raise RuntimeError(f"screening generated {result.cache['generated']} base responses: cache miss")
        return result.n

    # Warm up both on a few rows (one-time costs: kernels, tokenizer caches).
    wdata, wcache = write_dataset(workdir, min(2 * batch, 64), args, bridge)
    for _ in range(args.warmup):
        baseline(wdata, wcache, workdir / "warm_base.jsonl")
        ours(wdata, wcache, workdir / "warm_ours.jsonl")

    records = []
    for n_rows in row_counts:
        data, cache = write_dataset(workdir, n_rows, args, bridge)
        outs = {"baseline": workdir / f"scored_base_{n_rows}.jsonl", "ours": workdir / f"scored_ours_{n_rows}.jsonl"}
        runs = M.time_alternating({"baseline": lambda: baseline(data, cache, outs["baseline"]),
                                   "ours": lambda: ours(data, cache, outs["ours"])}, args.repeats, device)
        for name, ns in runs.results.items():
            assert all(n == n_rows for n in ns), (name, ns, n_rows)
        # Same scores (ours and the baseline read the same activation).
        ours_d = [json.loads(l)["projection_diff"] for l in outs["ours"].open()]
        base_d = [json.loads(l)["projection_diff"] for l in outs["baseline"].open()]
        max_abs_diff = max(abs(a - b) for a, b in zip(ours_d, base_d))
        rps = runs.rate(n_rows)
        ratio = rps["ours"] / rps["baseline"]
        peak = runs.median_peak_mb()
        record = {
            "model": subject.label, **subject.info, "rows": n_rows, "layer": layer, "batch_size": batch,
            "chunk_size": args.chunk_size, "prompt_words": args.prompt_words, "response_words": args.response_words,
            "base_responses": "cached (projection work only)",
            "baseline": BASELINE_DESCRIPTION[args.baseline],
            "ours": "persona_lens.analysis.screen.run(bridge, ScreenConfig(..., base_cache=prefilled)) + result.save",
            "baseline_rows_s": round(rps["baseline"], 2), "ours_rows_s": round(rps["ours"], 2),
            "ratio": round(ratio, 4),
            "ratio_cpu_time": round(runs.cpu_time_ratio(), 4),
            **runs.rounded_seconds(3), "peak_memory_mb": peak,
            "peak_memory_method": M.peak_memory_method(device, mmap_pinned),
            "max_abs_diff_projection_diff": max_abs_diff, "repeats": args.repeats, "warmup": args.warmup, **env,
        }
        if records:
            first = records[0]
            record["peak_memory_growth_vs_rows"] = {
                "rows": [first["rows"], n_rows],
                "ours_mb": [first["peak_memory_mb"]["ours"], peak["ours"]],
                "baseline_mb": [first["peak_memory_mb"]["baseline"], peak["baseline"]],
            }
        records.append(record)
        human = (M.headline("screen_throughput", subject, device, env) + f"rows={n_rows} layer={layer} "
                 f"batch={batch}: HF in-memory loop {rps['baseline']:.1f} rows/s (peak +{peak['baseline']:.0f} MB), "
                 f"persona_lens screen.run {rps['ours']:.1f} rows/s (peak +{peak['ours']:.0f} MB), "
                 + M.ratio_note(ratio, args.repeats, record["ratio_cpu_time"]))
        M.emit("screen_throughput", human, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
