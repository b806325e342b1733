#!/usr/bin/env python
"""Multi-trait screening cost: N traits in one pass vs one trait, and peak memory vs rows.

A synthetic JSONL training set (``--rows`` rows of ``{"prompt", "response"}``, unique prompts of
``--prompt-words`` words, responses of ``--response-words`` words) is screened by projection
difference (ΔP, :mod:`persona_lens.analysis.screen`) with
``persona_lens.analysis.screen.run_multi`` at ``--layer``; the base model's responses are
**already cached** (a base-response cache file written up front), so the runs do projection
work only. In one process, alternated, per row count:

* **baseline** — ``run_multi`` with one trait (one random unit vector);
* **ours** — ``run_multi`` with ``--traits`` traits (N random unit vectors, 8 by default): the
  same single capture pass per chunk, one ``[rows, d] @ [d, N]`` product, N x 3 columns per
  row written to ``scores.csv`` and ``scored.jsonl``, N top-K heaps, the N x N leakage matrix.

``ratio`` = ours seconds / baseline seconds (the cost of N traits relative to one; target
<= 1.2) and ``ratio_cpu_time`` the same from process CPU time (robust on a machine shared with
other jobs). Peak memory of each run is measured as in ``capture_throughput.py`` (sampled RSS
above the start with glibc's mmap threshold pinned; the CUDA allocator peak on GPU) and reported
per row count: it should not grow with the number of rows. ``--single-api`` also times the
one-trait API ``screen.run`` (two capture calls per chunk: the rows' responses, then the base
responses) for reference.

    python benchmarks/screen_multitrait.py --threads 1                       # CPU default: 1k and 10k rows
    python benchmarks/screen_multitrait.py --shape qwen2.5-7b --device cuda --dtype bfloat16 --rows 2000 10000
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as M  # noqa: E402
import _subject as S  # noqa: E402
import torch  # noqa: E402
from screen_throughput import write_dataset  # noqa: E402  (the same synthetic data and base cache)


def parse_args(argv=None):
    p = S.benchmark_parser(__doc__, default_repeats=1, baseline=False)
    p.set_defaults(shape="smollm2-135m", n_layers=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000], help="row counts to screen")
    p.add_argument("--traits", type=int, default=8, help="N: traits of the multi-trait run")
    p.add_argument("--layer", type=int, default=0, help="layer read (the forward stops after it)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 64 on GPU")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--prompt-words", type=int, default=4)
    p.add_argument("--response-words", type=int, default=8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=64, help="the base cache's key (no generation happens)")
    p.add_argument("--single-api", action="store_true", help="also time the one-trait API screen.run")
    p.add_argument("--workdir", default=None, help="where the synthetic files go (default: a temp dir)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model:
        args.shape = None  # --model replaces the default shape
    device, dtype = S.setup(args)
    mmap_pinned = M.pin_cpu_malloc(device)

    from persona_lens.analysis import screen
    from persona_lens.models import check_layer, d_model, model_id, n_layers
    from persona_lens.vectors import PersonaVector

    M.log(f"loading {'shape ' + args.shape if args.shape else args.model} on {device} ({dtype})")
    subject = S.load_subject(args, device, dtype, keep_baseline_copy=False)
    bridge = subject.bridge
    batch = args.batch_size or (64 if torch.device(device).type == "cuda" else 32)
    L, D = n_layers(bridge), d_model(bridge)
    layer = check_layer(bridge, args.layer)
    g = torch.Generator().manual_seed(args.seed)
    vectors = [PersonaVector(torch.randn(L, D, generator=g), {"persona": f"trait{i}", "model_id": model_id(bridge)})
               for i in range(args.traits)]
    env = M.environment(device, dtype)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="screen_multitrait_"))
    workdir.mkdir(parents=True, exist_ok=True)

    def multi(vecs, data: Path, cache: Path, out: Path) -> int:
        config = screen.MultiScreenConfig(data=str(data), out=str(out), layers=(layer,), base_cache=str(cache),
                                          top_k=args.top_k, chunk_size=args.chunk_size,
                                          max_new_tokens=args.max_new_tokens, batch_size=batch)
        result = screen.run_multi(bridge, config, vectors=vecs, progress=False)
        result.save(out)
        if result.cache["generated"]:
            raise RuntimeError(f"screening generated {result.cache['generated']} base responses: cache miss")
        return result.n

    def single_api(data: Path, cache: Path, out: Path) -> int:
        config = screen.ScreenConfig(data=str(data), out=str(out), layer=layer, base_cache=str(cache),
                                     top_k=args.top_k, chunk_size=args.chunk_size,
                                     max_new_tokens=args.max_new_tokens, batch_size=batch)
        result = screen.run(bridge, config, vector=vectors[0], progress=False)
        result.save(out.with_suffix(".screen"))
        return result.n

    wdata, wcache = write_dataset(workdir, min(2 * batch, 64), args, bridge)
    for _ in range(args.warmup):
        multi(vectors[:1], wdata, wcache, workdir / "warm_one")
        multi(vectors, wdata, wcache, workdir / "warm_many")

    records = []
    for n_rows in args.rows:
        M.log(f"{n_rows} rows: writing the dataset and its base-response cache")
        data, cache = write_dataset(workdir, n_rows, args, bridge)
        variants = {"baseline": lambda: multi(vectors[:1], data, cache, workdir / f"one_{n_rows}"),
                    "ours": lambda: multi(vectors, data, cache, workdir / f"many_{n_rows}")}
        if args.single_api:
            variants["single_api"] = lambda: single_api(data, cache, workdir / f"single_{n_rows}.jsonl")
        M.log(f"{n_rows} rows: timing {list(variants)} x {args.repeats}")
        runs = M.time_alternating(variants, args.repeats, device)
        for name, ns in runs.results.items():
            assert all(n == n_rows for n in ns), (name, ns, n_rows)
        # the first trait's ΔP is the same in both runs (same capture, one more column in ours)
        first = f"trait0@{layer}:projection_diff"
        one = [line.split(",") for line in (workdir / f"one_{n_rows}" / "scores.csv").read_text().splitlines()]
        many = [line.split(",") for line in (workdir / f"many_{n_rows}" / "scores.csv").read_text().splitlines()]
        i1, i2 = one[0].index(first), many[0].index(first)
        max_abs_diff = max(abs(float(a[i1]) - float(b[i2])) for a, b in zip(one[1:], many[1:]))
        rps = runs.rate(n_rows)
        ratio = rps["baseline"] / rps["ours"]  # cost ratio: N-trait seconds / 1-trait seconds
        cpu_ratio = 1.0 / runs.cpu_time_ratio()
        peak = runs.median_peak_mb()
        record = {
            "model": subject.label, **subject.info, "rows": n_rows, "layer": layer, "traits": args.traits,
            "batch_size": batch, "chunk_size": args.chunk_size, "prompt_words": args.prompt_words,
            "response_words": args.response_words, "base_responses": "cached (projection work only)",
            "baseline": "persona_lens.analysis.screen.run_multi with 1 trait",
            "ours": f"persona_lens.analysis.screen.run_multi with {args.traits} traits (one capture pass)",
            "baseline_rows_s": round(rps["baseline"], 2), "ours_rows_s": round(rps["ours"], 2),
            "ratio": round(ratio, 4), "ratio_cpu_time": round(cpu_ratio, 4),
            **runs.rounded_seconds(3), **runs.rounded_seconds(3, cpu=True), "peak_memory_mb": peak,
            "peak_memory_method": M.peak_memory_method(device, mmap_pinned),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "max_abs_diff_first_trait": max_abs_diff, "repeats": args.repeats, "warmup": args.warmup, **env,
        }
        if "single_api" in rps:
            record["single_api_rows_s"] = round(rps["single_api"], 2)
        if records:
            record["peak_memory_growth_vs_rows"] = {
                "rows": [records[0]["rows"], n_rows],
                **{f"{k}_mb": [records[0]["peak_memory_mb"][k], peak[k]] for k in peak}}
        records.append(record)
        human = (M.headline("screen_multitrait", subject, device, env) + f"rows={n_rows} layer={layer} batch={batch}: "
                 f"1 trait {rps['baseline']:.1f} rows/s (peak +{peak['baseline']:.0f} MB), {args.traits} traits "
                 f"{rps['ours']:.1f} rows/s (peak +{peak['ours']:.0f} MB); cost ratio {args.traits}-trait/1-trait "
                 f"{ratio:.3f} (CPU time {cpu_ratio:.3f}; median of {args.repeats})")
        M.emit("screen_multitrait", human, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
