#!/usr/bin/env python
"""Activation-capture throughput and memory: persona_lens ``capture`` vs plain Hugging Face.

For each sequence length, in the same process, on identical rows (a ``--prompt-tokens`` chat
prompt plus a response that fills the row to exactly ``seq_len`` tokens):

* **baseline** — plain transformers: the decoder forward (``model.model``, no LM head: the
  cheapest HF forward that yields them) with ``output_hidden_states=True`` on a model the bridge
  never touched (``--baseline separate``; ``native`` reuses the bridge's HF model inside
  ``persona_lens.native.native``), SDPA attention, then the same response-mean at every layer
  computed from ``hidden_states[1:]`` (one ``einsum`` per layer, results moved to the CPU once
  per batch). Token ids and masks are prepared up front (not timed). Note HF's last hidden
  state is taken after the final norm, ours before it (``hook_resid_post``); same cost.
* **ours** — ``persona_lens.activations.capture(bridge, prompts, responses,
  reductions=("response_mean",), layers=all)``: the public API, chat templating and tokenization
  included; the reduction runs inside the forward hooks.

Throughput = tokens (rows x seq_len) / median seconds, alternating baseline and ours
``--repeats`` times after ``--warmup``; ratio = ours / baseline. ``ratio_cpu_time`` is the
same ratio from the process' CPU time (``time.process_time``), which a machine shared with other
jobs distorts far less than wall time. A third variant, **forward
only** (the same decoder forward without ``output_hidden_states``, no reduction), is measured
once per length as the memory floor.

Memory. GPU: ``torch.cuda.max_memory_allocated`` above what was allocated before the call
(weights excluded) — exact for the caching allocator. CPU: torch has no allocator statistics on
the CPU, and ``tracemalloc`` does not see torch's allocations, so we report the peak resident
set size (RSS) sampled every millisecond by a thread during the call, minus the RSS just before
it. To make RSS follow live tensors, the script pins glibc's ``mmap`` threshold at 64 KiB
(``mallopt``; otherwise glibc raises it dynamically and keeps freed tensors in its free lists):
every tensor above that is its own mapping, returned to the OS on free. A peak shorter than the
sampling interval can still be missed, so treat CPU numbers as lower bounds. Also reported, exactly, from the shapes: ``hidden_states_mb``
(what ``output_hidden_states`` keeps alive: ``(n_layers + 1) x batch x seq x d_model``) and
``result_mb`` (our output: ``batch x n_layers x d_model`` float32, per batch). Ours stays at the
forward's own working set plus ``O(batch x n_layers x d_model)``; the baseline adds
``hidden_states_mb``.

    python benchmarks/capture_throughput.py                                   # SmolLM2, CPU: 128 512 1024
    python benchmarks/capture_throughput.py --shape qwen2.5-7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _measure as M  # noqa: E402
import _subject as S  # noqa: E402
import torch  # noqa: E402

BASELINE_DESCRIPTION = {
    "separate": "plain transformers decoder forward (no LM head) with output_hidden_states=True on a separately "
                "built HF model, sdpa attention, masked response means from hidden_states[1:]",
    "native": "plain transformers decoder forward (no LM head) with output_hidden_states=True on the bridge's "
              "HF model inside persona_lens.native.native(), sdpa, masked response means from hidden_states[1:]",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = S.benchmark_parser(__doc__, default_repeats=3)
    p.add_argument("--seq-lens", type=int, nargs="+", default=None,
                   help="tokens per row (prompt + response); default 128 512 1024 on CPU, 128 512 1024 2048 on GPU")
    p.add_argument("--batch-size", type=int, default=None, help="default 2 on CPU, 8 on GPU")
    p.add_argument("--rows", type=int, default=None, help="rows per timed run (default: one batch)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def response_of_length(tokenizer, n_tokens: int, seed: int) -> str:
    """Text whose ``response_ids`` length is exactly ``n_tokens`` (closest reachable)."""
    from persona_lens.chat import response_ids

    rng = random.Random(seed)
    words = [rng.choice(C.COMMON_WORDS) for _ in range(n_tokens)]  # ~1 token per " word"
    text = " ".join(words)
    while len(response_ids(tokenizer, text)) > n_tokens and words:
        words.pop()
        text = " ".join(words)
    while len(response_ids(tokenizer, text)) < n_tokens:
        words.append("a")
        text = " ".join(words)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = S.setup(args)
    mmap_pinned = M.pin_cpu_malloc(device)

    from persona_lens.activations import capture
    from persona_lens.chat import make_batch, prompt_ids, response_ids
    from persona_lens.models import d_model, n_layers

    subject, baseline_model = S.load_with_baseline(args, device, dtype)
    bridge, tok = subject.bridge, subject.tokenizer
    on_gpu = torch.device(device).type == "cuda"
    seq_lens = args.seq_lens or ([128, 512, 1024, 2048] if on_gpu else [128, 512, 1024])
    batch = args.batch_size or (8 if on_gpu else 2)
    rows = args.rows or batch
    L, D = n_layers(bridge), d_model(bridge)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    env = M.environment(device, dtype)
    elem = torch.empty(0, dtype=dtype).element_size()

    for seq_len in seq_lens:
        made = [C.chat_prompt_of_length(tok, args.prompt_tokens, seed=args.seed * 1000 + i) for i in range(rows)]
        prompts = [m for m, _ in made]
        p_ids = [prompt_ids(tok, m) for m in prompts]
        responses = [response_of_length(tok, seq_len - len(p), seed=args.seed * 7919 + i) for i, p in enumerate(p_ids)]
        r_ids = [response_ids(tok, r) for r in responses]
        lengths = sorted({len(p) + len(r) for p, r in zip(p_ids, r_ids)})
        batches = [make_batch(p_ids[s:s + batch], r_ids[s:s + batch], pad).to(device) for s in range(0, rows, batch)]

        def hf_forward(b, hidden: bool):
            with S.baseline_hf(bridge, baseline_model) as hf:
                return hf.get_decoder()(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                        output_hidden_states=hidden, use_cache=False)

        def baseline():
            outs = []
            with torch.inference_mode():
                for b in batches:
                    hs = hf_forward(b, True).hidden_states[1:]
                    m = b.response_mask.to(torch.float32)
                    means = torch.stack([torch.einsum("bs,bsd->bd", m, h.float()) for h in hs], 1)
                    outs.append((means / m.sum(1)[:, None, None]).cpu())
            return torch.cat(outs)

        def ours():
            return capture(bridge, prompts, responses, reductions=("response_mean",), batch_size=batch,
                           progress=False)["response_mean"]

        def forward_only():
            with torch.inference_mode():
                for b in batches:
                    hf_forward(b, False)

        for _ in range(args.warmup - 1):
            baseline(), ours()
        ref, got = baseline(), ours()  # the last warmup run doubles as the correctness check
        # Same numbers (all but the last layer: HF's last hidden state is post-norm).
        max_abs_diff = float((ref[:, :-1] - got[:, :-1]).abs().max())
        runs = M.time_alternating({"baseline": baseline, "ours": ours}, args.repeats, device)
        with M.PeakMemory(device) as pm:
            floor_s, _ = M.time_call(forward_only, device)
        tokens = sum(len(p) + len(r) for p, r in zip(p_ids, r_ids))
        tps = runs.rate(tokens)
        ratio = tps["ours"] / tps["baseline"]
        peak = runs.median_peak_mb()
        peak["forward_only"] = round(pm.peak_mb, 1)
        record = {
            "model": subject.label, **subject.info, "n_layers": L, "d_model": D, "seq_len": lengths,
            "batch_size": batch, "rows": rows, "layers_captured": L, "reduction": "response_mean",
            "baseline": BASELINE_DESCRIPTION[args.baseline],
            "ours": "persona_lens.activations.capture(bridge, prompts, responses, reductions=('response_mean',)), "
                    "all layers, reductions in forward hooks, native mode",
            "baseline_tok_s": round(tps["baseline"], 1), "ours_tok_s": round(tps["ours"], 1),
            "ratio": round(ratio, 4), "forward_only_tok_s": round(tokens / floor_s, 1),
            "ratio_cpu_time": round(runs.cpu_time_ratio(), 4),
            **runs.rounded_seconds(4, cpu=True), **runs.rounded_seconds(4),
            "peak_memory_mb": peak,
            "peak_memory_method": M.peak_memory_method(device, mmap_pinned),
            "hidden_states_mb": round((L + 1) * batch * max(lengths) * D * elem / 2**20, 1),
            "result_mb_per_batch": round(batch * L * D * 4 / 2**20, 3),
            "max_abs_diff_vs_baseline": max_abs_diff, "repeats": args.repeats, "warmup": args.warmup, **env,
        }
        human = (M.headline("capture_throughput", subject, device, env)
                 + f"seq={'/'.join(map(str, lengths))} "
                 f"batch={batch} rows={rows} layers={L}: HF output_hidden_states {tps['baseline']:.0f} tok/s "
                 f"(peak +{peak['baseline']:.0f} MB), persona_lens capture {tps['ours']:.0f} tok/s "
                 f"(peak +{peak['ours']:.0f} MB; forward alone +{peak['forward_only']:.0f} MB), "
                 + M.ratio_note(ratio, args.repeats, record["ratio_cpu_time"]))
        M.emit("capture_throughput", human, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
