#!/usr/bin/env python
"""Steered-generation throughput: persona_lens vs plain Hugging Face ``generate``.

For each batch size, in the same process:

* **baseline** — unsteered, plain transformers ``model.generate`` on a model that the bridge
  never touched (``--baseline separate``, the default): for ``--model`` it is loaded a second
  time with ``AutoModelForCausalLM.from_pretrained`` from the very folder persona_lens loads
  from; for ``--shape`` it is a deep copy of the random-weight model taken before the bridge
  wrapped it. SDPA attention, greedy, token ids prepared up front (tokenization not timed).
  ``--baseline native`` instead runs the bridge's own HF model inside
  ``persona_lens.models.native`` (bridge wrappers removed) to avoid a second copy of the weights.
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

import torch  # noqa: E402

import _common as C  # noqa: E402

BASELINE_DESCRIPTION = {
    "separate": "plain transformers generate() on a separately built HF model (never wrapped by the bridge), "
                "sdpa attention, unsteered",
    "native": "plain transformers generate() on the bridge's HF model inside persona_lens.models.native() "
              "(bridge wrappers removed), sdpa attention, unsteered",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, default_repeats=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: 1 8 on CPU, 1 32 on a GPU")
    p.add_argument("--layer", type=int, default=None, help="steered layer (default: n_layers // 2)")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    p.add_argument("--baseline", default="separate", choices=["separate", "native"])
    return p.parse_args(argv)


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = C.setup(args)

    from persona_lens.chat import prompt_ids
    from persona_lens.generate import generate_ids
    from persona_lens.models import d_model, hf_causal_lm, n_layers, native
    from persona_lens.steering import Steering

    C.log(f"loading {'shape ' + args.shape if args.shape else args.model or 'default'} on {device} ({dtype})")
    subject = C.load_subject(args, device, dtype, keep_baseline_copy=args.baseline == "separate")
    bridge, tok = subject.bridge, subject.tokenizer
    baseline_model = subject.plain_hf_baseline(device, dtype, args.baseline)
    on_gpu = torch.device(device).type == "cuda"
    batch_sizes = args.batch_sizes or ([1, 32] if on_gpu else [1, 8])
    layer = args.layer if args.layer is not None else n_layers(bridge) // 2
    g = torch.Generator().manual_seed(args.seed)
    direction = torch.randn(d_model(bridge), generator=g)
    steering = Steering.from_vector(direction / direction.norm(), layer, args.alpha, positions=args.positions)
    n_new = args.new_tokens
    # persona_lens' generate() reads the model's generation_config: no early stop at EOS.
    hf_causal_lm(bridge).generation_config.min_new_tokens = n_new
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_kwargs = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, temperature=None, top_p=None,
                      top_k=None, pad_token_id=pad_id, eos_token_id=tok.eos_token_id)
    env = C.environment(device, dtype)

    for batch in batch_sizes:
        made = [C.chat_prompt_of_length(tok, args.prompt_tokens, seed=args.seed * 1000 + i) for i in range(batch)]
        messages = [m for m, _ in made]
        lengths = sorted({n for _, n in made})
        ids, mask = _left_pad([prompt_ids(tok, m) for m in messages], pad_id)
        ids, mask = ids.to(device), mask.to(device)

        def baseline():
            with torch.inference_mode():
                if baseline_model is None:
                    with native(bridge) as hf:
                        out = hf.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
                else:
                    out = baseline_model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
            return out.shape[1] - ids.shape[1]

        def ours():
            gens = generate_ids(bridge, messages, max_new_tokens=n_new, batch_size=batch, steering=steering,
                                progress=False)
            return min(len(x.response_ids) for x in gens)

        for _ in range(args.warmup):
            baseline()
            ours()
        times = {"baseline": [], "ours": []}
        produced = {"baseline": None, "ours": None}
        peaks: dict[str, dict] = {}
        for _ in range(args.repeats):  # alternate, so drift (thermal, other load) hits both alike
            for name, fn in (("baseline", baseline), ("ours", ours)):
                C.reset_peak_memory(device)
                seconds, n = C.time_call(fn, device)
                times[name].append(seconds)
                produced[name] = n
                peaks[name] = C.peak_memory_mb(device)
        tokens = batch * n_new
        tps = {k: tokens / C.median(v) for k, v in times.items()}
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
            "baseline_s": [round(t, 4) for t in times["baseline"]], "ours_s": [round(t, 4) for t in times["ours"]],
            "tokens_per_row_generated": produced, "repeats": args.repeats, "warmup": args.warmup,
            "peak_memory_mb": peaks, **env,
        }
        human = (f"steer_throughput {subject.label} {device}/{env['dtype']} batch={batch} "
                 f"prompt={'/'.join(map(str, lengths))} new={n_new}: plain HF {tps['baseline']:.1f} tok/s, "
                 f"persona_lens steered (L{layer}, {args.positions}) {tps['ours']:.1f} tok/s, "
                 f"ratio {ratio:.3f} (median of {args.repeats})")
        C.emit("steer_throughput", human, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
