#!/usr/bin/env python
"""Fast steered generation: persona_lens' static-cache + torch.compile path vs HF eager ``generate``.

For each batch size, in the same process:

* **baseline** — unsteered, plain transformers ``model.generate`` with its default dynamic KV
  cache, eager (no compile), SDPA attention, greedy, on a model the bridge never touched
  (``--baseline separate``, the default; ``native``: the bridge's own HF model inside
  ``persona_lens.native.native``). Token ids prepared up front.
* **ours** — ``persona_lens.fast.CompiledSteeredGenerator(bridge, max_batch_size=batch,
  max_cache_len=prompt + new tokens)`` with ``Steering.from_vector(v, layer, alpha, positions)``:
  static KV cache, compiled decode step (``mode="reduce-overhead"``, i.e. CUDA graphs, on a
  GPU; inductor's default on CPU), the steering add inside the compiled graph. The full public
  call: chat templating, tokenization and decoding included. The compile happens in the
  untimed warm-up; its time is reported separately (``compile_s``: the first call, compile
  included).
* optionally (``--add-cost``) **ours_unsteerable** — the same generator built with no steerable
  layers (``layers=()``, no wrappers in the graph) and run unsteered: ``ours`` against it is
  the cost of the in-graph steering adds (it costs a second compile).

Both generate exactly ``--new-tokens`` tokens per row (``min_new_tokens``) from identical
``--prompt-tokens``-long chat prompts; after ``--warmup`` untimed runs of each they are timed
alternately ``--repeats`` times; throughput = batch x new tokens / median seconds; ratio =
ours / baseline. One human line and one JSON line per batch size. Default batch sizes: 1 and 8
on CPU, 1 and 32 on GPU.

    python benchmarks/fast_generate.py --threads 1                         # embedded SmolLM2, CPU
    python benchmarks/fast_generate.py --shape qwen2.5-7b --device cuda --dtype bfloat16
    python benchmarks/fast_generate.py --shape smollm2-135m --n-layers 4 --new-tokens 16   # CPU smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _measure as M  # noqa: E402
import _subject as S  # noqa: E402
import torch  # noqa: E402

BASELINE_DESCRIPTION = {
    "separate": "plain transformers generate() (dynamic cache, eager) on a separately built HF model never "
                "wrapped by the bridge, sdpa attention, unsteered",
    "native": "plain transformers generate() (dynamic cache, eager) on the bridge's HF model inside "
              "persona_lens.native.native(), sdpa attention, unsteered",
}


def parse_args(argv=None):
    p = C.generation_parser(__doc__)
    p.add_argument("--mode", default=None,
                   help="torch.compile mode for ours (default: reduce-overhead on CUDA, torch's default elsewhere)")
    p.add_argument("--no-compile", action="store_true", help="ours without torch.compile (static cache only)")
    p.add_argument("--add-cost", action="store_true",
                   help="also time the fast path with no steerable layers (the cost of the in-graph adds)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = S.setup(args)

    from persona_lens.chat import prompt_ids
    from persona_lens.fast import CompiledSteeredGenerator
    from persona_lens.generation import _left_pad  # the same left padding as persona_lens generation

    setup = C.generation_setup(args, device, dtype)
    subject, baseline_model, batch_sizes = setup.subject, setup.baseline_model, setup.batch_sizes
    bridge, tok, layer, steering = subject.bridge, subject.tokenizer, setup.layer, setup.steering
    gen_kwargs = setup.gen_kwargs
    n_new = args.new_tokens
    pad_id = gen_kwargs["pad_token_id"]
    env = M.environment(device, dtype)

    for batch in batch_sizes:
        made = [C.chat_prompt_of_length(tok, args.prompt_tokens, seed=args.seed * 1000 + i) for i in range(batch)]
        messages = [m for m, _ in made]
        lengths = sorted({n for _, n in made})
        ids, mask = _left_pad([prompt_ids(tok, m) for m in messages], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache_len = ids.shape[1] + n_new

        def baseline():
            return C.baseline_generate(bridge, baseline_model, ids, mask, gen_kwargs)

        def build(**kw):
            return CompiledSteeredGenerator(bridge, max_batch_size=batch, max_cache_len=cache_len,
                                            compile=not args.no_compile, mode=args.mode, **kw)

        fast = build()
        variants = {"baseline": baseline,
                    "ours": lambda: min(len(x.response_ids) for x in fast.generate_ids(
                        messages, max_new_tokens=n_new, min_new_tokens=n_new, steering=steering))}
        unsteerable = None
        if args.add_cost:
            unsteerable = build(layers=())
            variants["ours_unsteerable"] = lambda: min(len(x.response_ids) for x in unsteerable.generate_ids(
                messages, max_new_tokens=n_new, min_new_tokens=n_new))

        compile_s = {}
        for name in [k for k in variants if k != "baseline"]:
            M.log(f"batch {batch}: first call of {name} (compiles the decode step)")
            seconds, _ = M.time_call(variants[name], device)
            compile_s[name] = round(seconds, 2)
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
        M.log(f"batch {batch}: timing {', '.join(variants)} x {args.repeats}")
        runs = M.time_alternating(variants, args.repeats, device, memory="process")
        times = runs.seconds
        produced = {k: (v[-1] if v else None) for k, v in runs.results.items()}
        peaks = {k: v[-1] for k, v in runs.peak_mb.items() if v}
        tps = runs.rate(batch * n_new)
        ratio = tps["ours"] / tps["baseline"]
        record = {
            "model": subject.label, **subject.info, "batch_size": batch, "prompt_tokens": lengths,
            "new_tokens": n_new, "steered_layer": layer, "alpha": args.alpha, "positions": args.positions,
            "baseline": BASELINE_DESCRIPTION[args.baseline],
            "ours": f"persona_lens.fast.CompiledSteeredGenerator(bridge, max_batch_size={batch}, "
                    f"max_cache_len={cache_len}, compile={not args.no_compile}, mode={fast.mode!r})"
                    ".generate_ids(..., steering=Steering.from_vector(...))",
            "baseline_tok_s": round(tps["baseline"], 2), "ours_tok_s": round(tps["ours"], 2),
            "ratio": round(ratio, 4),
            # the same from the fastest run of each: less sensitive to a noisy (shared) machine
            "ratio_best": round(min(times["baseline"]) / min(times["ours"]), 4),
            "ratio_cpu_time": round(runs.cpu_time_ratio(), 4),
            "compile_s": compile_s,
            **runs.rounded_seconds(4),
            "tokens_per_row_generated": produced, "repeats": args.repeats, "warmup": args.warmup,
            "peak_memory_mb": peaks, **env,
        }
        extra = ""
        if unsteerable is not None:
            record["ours_unsteerable_tok_s"] = round(tps["ours_unsteerable"], 2)
            record["steering_add_cost"] = round(1 - tps["ours"] / tps["ours_unsteerable"], 4)
            extra = f", no-wrapper fast path {tps['ours_unsteerable']:.1f} tok/s"
        human = (M.headline("fast_generate", subject, device, env) + f"batch={batch} "
                 f"prompt={'/'.join(map(str, lengths))} new={n_new}: HF eager {tps['baseline']:.1f} tok/s, "
                 f"persona_lens {'static, eager step' if args.no_compile else 'static+compiled'} steered (L{layer}, {args.positions}) {tps['ours']:.1f} tok/s"
                 f"{extra}, " + M.ratio_note(ratio, args.repeats, record["ratio_cpu_time"])
                 + f"; compile {compile_s.get('ours', float('nan')):.0f} s")
        M.emit("fast_generate", human, record)
        fast.close()
        if unsteerable is not None:
            unsteerable.close()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
