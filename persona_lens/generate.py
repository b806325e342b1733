"""Generation: plain, steered, and the contrastive pos/neg generation of Persona Vectors.

Generation runs through the underlying HF model in ``native`` mode (the bridge's wrappers taken
out, SDPA attention), so steered generation costs what unsteered ``generate`` costs; steering is
a forward hook on the decoder layers whose outputs are ``blocks.{l}.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .chat import Messages, as_messages, prompt_ids
from .io import JsonlAppender, iter_jsonl
from .models import model_device, native
from .steering import Steering


@dataclass
class Generation:
    text: str
    prompt_ids: list[int]
    response_ids: list[int]


def eos_ids(model) -> set[int]:
    from .models import hf_causal_lm

    hf = hf_causal_lm(model)
    ids: set[int] = set()
    for src in (getattr(hf.generation_config, "eos_token_id", None), model.tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple)) else [src])
    return ids


def padding_id(tokenizer) -> int:
    """The id left padding uses: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def to_generation(tokenizer, prompt: list[int], new_ids: Sequence[int], stops: set[int]) -> Generation:
    """A row of generated ids cut at the first stop id, decoded (special tokens skipped, stripped)."""
    resp = []
    for t in new_ids:
        if t in stops:
            break
        resp.append(t)
    return Generation(tokenizer.decode(resp, skip_special_tokens=True).strip(), prompt, resp)


def _left_pad(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def generate_ids(
    model,
    prompts: Sequence[str | Messages],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    steering: Steering | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[Generation]:
    """Greedy when ``temperature == 0``; otherwise sampling seeded per batch (``seed + batch``)."""
    tok = model.tokenizer
    pad = padding_id(tok)
    stops = eos_ids(model)
    all_ids = [prompt_ids(tok, as_messages(p)) for p in prompts]
    if steering is not None and steering.batch_size not in (None, len(all_ids)):
        raise ValueError(f"per-row steering has {steering.batch_size} rows for {len(all_ids)} prompts")
    device = model_device(model)
    out: list[Generation] = []
    bar = tqdm(total=len(all_ids), desc=desc, disable=not progress or len(all_ids) <= batch_size, leave=False)
    with native(model) as hf:
        for b, start in enumerate(range(0, len(all_ids), batch_size)):
            chunk = all_ids[start:start + batch_size]
            ids, mask = _left_pad(chunk, pad)
            sampling = temperature > 0
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=pad,
                          eos_token_id=sorted(stops) or None)
            if sampling:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
                if seed is not None:
                    torch.manual_seed(seed + b)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            rows = range(start, start + len(chunk))
            ctx = steering.select(rows).apply(model) if steering is not None else contextlib.nullcontext()
            with ctx, torch.inference_mode():
                gen = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            new = gen[:, ids.shape[1]:].tolist()
            out += [to_generation(tok, p, row, stops) for p, row in zip(chunk, new)]
            bar.update(len(chunk))
    bar.close()
    return out


def generate(model, prompts: Sequence[str | Messages], **kwargs) -> list[str]:
    """Completions (text) for chat prompts; see ``generate_ids`` for the options."""
    return [g.text for g in generate_ids(model, prompts, **kwargs)]


# --------------------------------------------------------------------------- contrastive


def contrastive_items(spec, n_per_question: int = 1, questions: Sequence[str] | None = None) -> list[dict]:
    """Every pair x question x sample x polarity, in a fixed order (the resume key order)."""
    questions = list(spec.questions if questions is None else questions)
    items = []
    for pi, pair in enumerate(spec.instruction):
        for qi, q in enumerate(questions):
            for s in range(n_per_question):
                for polarity, system in (("pos", pair.pos), ("neg", pair.neg)):
                    items.append(dict(persona=spec.name, pair_index=pi, question_index=qi, sample=s,
                                      polarity=polarity, system=system, question=q))
    return items


def row_key(row: dict) -> tuple:
    return (row["pair_index"], row["question_index"], row["sample"], row["polarity"])


def generate_contrastive(
    model,
    spec,
    out_path: str | os.PathLike,
    *,
    n_per_question: int = 1,
    questions: Sequence[str] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict]:
    """Responses under each pos and neg system prompt, one JSONL row per response.

    Rows: ``persona, pair_index, question_index, sample, polarity, system, question, response``.
    Rerunning with the same ``out_path`` resumes: batches whose rows are all present are skipped,
    each batch is appended (flushed) as a whole, and sampling is seeded per batch, so an
    interrupted run finishes with the same rows as an uninterrupted one.
    """
    out_path = Path(out_path)
    items = contrastive_items(spec, n_per_question, questions)
    done = {row_key(r): r for r in iter_jsonl(out_path)} if out_path.exists() else {}
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    bar = tqdm(total=len(items), desc=f"contrastive {spec.name}", disable=not progress)
    bar.update(sum(1 for it in items if row_key(it) in done))
    with JsonlAppender(out_path) as sink:
        for b, batch in enumerate(batches):
            todo = [it for it in batch if row_key(it) not in done]
            if not todo:
                continue
            # Always the whole batch, even if an interruption left part of it on disk: the same
            # batch composition, padding and seed as an uninterrupted run, hence the same rows.
            prompts = [[{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}]
                       for it in batch]
            texts = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                             seed=seed * 100_003 + b, batch_size=len(batch), progress=False)
            rows = [{**it, "response": t} for it, t in zip(batch, texts) if row_key(it) not in done]
            sink.write(rows)
            done.update((row_key(r), r) for r in rows)
            bar.update(len(rows))
    bar.close()
    return [done[row_key(it)] for it in items]
