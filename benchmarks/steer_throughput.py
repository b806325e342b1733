#!/usr/bin/env python
"""Steered-generation throughput: persona_lens vs plain Hugging Face ``generate``.

For each batch size, in the same process:

* **baseline** — unsteered, plain transformers ``model.generate`` on a model that the bridge
  never touched (``--baseline separate``, the default): for ``--model`` it is loaded a second
  time with ``AutoModelForCausalLM.from_pretrained`` from the very folder persona_lens loads
  from; for ``--shape`` it is a deep copy of the random-weight model taken before the bridge
  wrapped it. SDPA attention, greedy, token ids prepared up front (tokenization not timed).
  ``--baseline native`` instead runs the bridge's own HF model inside
  ``persona_lens.native.native`` (bridge wrappers removed) to avoid a second copy of the weights.
* **ours** — ``persona_lens.generate_ids`` with ``Steering.from_vector(v, layer, alpha,
  positions)`` on the ``TransformerBridge``: the full public API, chat templating,
  tokenization and decoding included.

Both generate exactly ``--new-tokens`` tokens per row (``min_new_tokens``) from identical
``--prompt-tokens``-long chat prompts. After ``--warmup`` untimed runs of each, the two are
timed alternately ``--repeats`` times; throughput = batch x new tokens / median seconds;
ratio = ours / baseline (1.0 = no overhead). Output: one human line and one JSON line per batch
size. Default batch sizes: 1 and 8 on CPU, 1 and 32 on GPU.

    python benchmarks/steer_throughput.py                       # embedded SmolLM2, CPU
    python benchmarks/steer_throughput.py --shape qwen2.5-7b --device cuda
    python benchmarks/steer_throughput.py --shape llama-3.1-8b --n-layers 2 --new-tokens 16   # CPU smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _measure as M  # noqa: E402
import _subject as S  # noqa: E402

BASELINE_DESCRIPTION = {
    "separate": "plain transformers generate() on a separately built HF model (never wrapped by the bridge), "
                "sdpa attention, unsteered",
    "native": "plain transformers generate() on the bridge's HF model inside persona_lens.native.native() "
              "(bridge wrappers removed), sdpa attention, unsteered",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = C.generation_parser(__doc__)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = S.setup(args)

    from persona_lens.generation import generate_ids
    from persona_lens.models import hf_causal_lm

    setup = C.generation_setup(args, device, dtype)
    subject, baseline_model, batch_sizes = setup.subject, setup.baseline_model, setup.batch_sizes
    bridge, tok, layer, steering = subject.bridge, subject.tokenizer, setup.layer, setup.steering
    gen_kwargs = setup.gen_kwargs
    n_new = args.new_tokens
    # persona_lens' generate() reads the model's generation_config: no early stop at EOS.
    hf_causal_lm(bridge).generation_config.min_new_tokens = n_new
    env = M.environment(device, dtype)

    for batch in batch_sizes:
        messages, lengths, ids, mask = C.left_padded_chat_prompts(tok, batch, args.prompt_tokens, args.seed,
                                                                  gen_kwargs["pad_token_id"], device)

        def baseline():
            return C.baseline_generate(bridge, baseline_model, ids, mask, gen_kwargs)

        def ours():
            gens = generate_ids(bridge, messages, max_new_tokens=n_new, batch_size=batch, steering=steering,
                                progress=False)
            return min(len(x.response_ids) for x in gens)

        for _ in range(args.warmup):
            baseline()
            ours()
        # memory="process": peak_memory_mb() after each run (process-wide; no sampling thread)
        runs = M.time_alternating({"baseline": baseline, "ours": ours}, args.repeats, device, memory="process")
        times = runs.seconds
        produced = {k: (v[-1] if v else None) for k, v in runs.results.items()}  # tokens per row, last run
        peaks = {k: v[-1] for k, v in runs.peak_mb.items() if v}
        tokens = batch * n_new
        tps = runs.rate(tokens)
        ratio = tps["ours"] / tps["baseline"]
        record = {
            "model": subject.label, **subject.info, "batch_size": batch, "prompt_tokens": lengths,
            "new_tokens": n_new, "steered_layer": layer, "alpha": args.alpha, "positions": args.positions,
            "baseline": BASELINE_DESCRIPTION[args.baseline],
            "ours": "persona_lens.generate_ids(bridge, ..., steering=Steering.from_vector(...)), native mode",
            "baseline_tok_s": round(tps["baseline"], 2), "ours_tok_s": round(tps["ours"], 2),
            "ratio": round(ratio, 4),
            # the same from the fastest run of each: less sensitive to a noisy (shared) machine
            "ratio_best": round(min(times["baseline"]) / min(times["ours"]), 4),
            **runs.rounded_seconds(4),
            "tokens_per_row_generated": produced, "repeats": args.repeats, "warmup": args.warmup,
            "peak_memory_mb": peaks, **env,
        }
        human = (M.headline("steer_throughput", subject, device, env) + f"batch={batch} "
                 f"prompt={'/'.join(map(str, lengths))} new={n_new}: plain HF {tps['baseline']:.1f} tok/s, "
                 f"persona_lens steered (L{layer}, {args.positions}) {tps['ours']:.1f} tok/s, "
                 + M.ratio_note(ratio, args.repeats))
        M.emit("steer_throughput", human, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
