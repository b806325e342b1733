"""Generation: plain, steered, and the contrastive pos/neg generation of Persona Vectors.

Generation runs through the underlying HF model in ``native`` mode (the bridge's wrappers taken
out, SDPA attention), so steered generation costs what unsteered ``generate`` costs; steering is
a forward hook on the decoder layers whose outputs are ``blocks.{l}.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .chat import Messages, as_messages, prompt_ids
from .errors import ModelMismatchError
from .models import check_context, hf_causal_lm, model_device, model_id
from .native import native
from .runs.fingerprint import model_fingerprint
from .runs.store import ResumeStore, decoding_fields
from .steering import Steering


@dataclass
class Generation:
    text: str
    prompt_ids: list[int]
    response_ids: list[int]


def eos_ids(model) -> set[int]:
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


def to_generation(tokenizer, prompt: Sequence[int], new_ids: Sequence[int], stops: set[int]) -> Generation:
    """A row of generated ids cut at the first stop id, decoded (special tokens skipped, stripped)."""
    resp = []
    for t in new_ids:
        if t in stops:
            break
        resp.append(t)
    return Generation(tokenizer.decode(resp, skip_special_tokens=True).strip(), list(prompt), resp)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str) -> Iterator[None]:
    """Sampling inside the block draws from a generator seeded with ``seed``; the caller's global
    RNG state (CPU, and the CUDA device sampled on) is restored afterwards, as if untouched.

    HF ``generate`` samples from torch's default generator and takes no ``generator`` argument,
    so the default generator is forked rather than replaced.
    """
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    streamer=None,
) -> list[Generation]:
    """Greedy when ``temperature == 0``; otherwise sampling seeded per batch (``seed + batch``).

    ``streamer``: a transformers ``BaseStreamer`` handed to every ``generate`` call (one per
    chunk of ``batch_size`` prompts): ``put`` gets the padded prompt ids, then each step's tokens."""
    tok = model.tokenizer
    pad = padding_id(tok)
    stops = eos_ids(model)
    all_ids = [prompt_ids(tok, as_messages(p)) for p in prompts]
    check_context(model, [len(p) for p in all_ids], max_new_tokens)
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
                          eos_token_id=sorted(stops) or None, streamer=streamer)
            if sampling:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            rows = range(start, start + len(chunk))
            ctx = steering.select(rows).apply(model) if steering is not None else contextlib.nullcontext()
            rng = seeded_rng(seed + b, device) if sampling and seed is not None else contextlib.nullcontext()
            with ctx, rng, torch.inference_mode():
                gen = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            new = gen[:, ids.shape[1]:].tolist()
            out += [to_generation(tok, p, row, stops) for p, row in zip(chunk, new)]
            bar.update(len(chunk))
    bar.close()
    return out


def generate(model, prompts: Sequence[str | Messages], **kwargs) -> list[str]:
    """Completions (text) for chat prompts; see ``generate_ids`` for the options."""
    return [g.text for g in generate_ids(model, prompts, **kwargs)]


# --------------------------------------------------------------------------- backends

#: The name of the HF path above among the generation backends (:mod:`persona_lens.backends`).
HF = "hf"
GenerateIds = Callable[..., list[Generation]]


def backend_generation(model, backend=None) -> tuple[str, GenerateIds]:
    """``(name, generate_ids)`` of a generation ``backend`` (a
    :class:`persona_lens.backends.GenerationBackend`), or of the HF path on ``model`` without one.

    Resumable runs fingerprint their rows by ``model``'s weights (capture stays on ``model``'s HF
    hooks), so a backend must serve the same checkpoint: its ``model_id`` must be ``model``'s."""
    if backend is None:
        return HF, functools.partial(generate_ids, model)
    if backend.model_id != model_id(model):
        raise ModelMismatchError(f"the {backend.name} generation backend serves {backend.model_id!r} but the model "
                                 f"is {model_id(model)!r}: generation and capture must use one checkpoint")
    return backend.name, backend.generate_ids


# --------------------------------------------------------------------------- contrastive


def contrastive_items(spec, n_per_question: int = 1, questions: Sequence[str] | None = None) -> list[dict]:
    """Every pair x question x sample x polarity, in a fixed order (the resume key order)."""
    questions = list(spec.questions if questions is None else questions)
    items = []
    for pi, pair in enumerate(spec.instruction):
        for qi, q in enumerate(questions):
            for s in range(n_per_question):
                for polarity, system in (("pos", pair.pos), ("neg", pair.neg)):
                    items.append({"persona": spec.name, "pair_index": pi, "question_index": qi, "sample": s,
                                  "polarity": polarity, "system": system, "question": q})
    return items


KEY_FIELDS = ("pair_index", "question_index", "sample", "polarity")


def row_key(row: dict) -> tuple:
    return tuple(row[f] for f in KEY_FIELDS)


def contrastive_store(model, out_path: str | os.PathLike, *, max_new_tokens: int, temperature: float, seed: int,
                      batch_size: int, backend: str = HF) -> ResumeStore:
    """The resume store of :func:`generate_contrastive`: rows keyed by (pair, question, sample,
    polarity), fingerprinted by the model's weights, the decoding settings and (per row) the
    exact system and user text."""
    # A sampled row depends on the batch it was drawn in (one seed per batch) and on the backend
    # that drew it (HF and vLLM draw differently from one seed), so both are part of what decides
    # it; a greedy row depends on neither (fp32 greedy is token-identical on both backends).
    sampled = temperature > 0
    return ResumeStore(out_path, KEY_FIELDS, shared={
        "model": model_fingerprint(model), "batch_size": batch_size if sampled else None,
        **({"sampler": backend} if sampled else {}),
        **decoding_fields(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)})


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
    backend=None,
) -> list[dict]:
    """Responses under each pos and neg system prompt, one JSONL row per response.

    Rows: ``persona, pair_index, question_index, sample, polarity, system, question, response,
    fingerprint``. Rerunning with the same ``out_path`` resumes (:mod:`persona_lens.runs.store`):
    a row is reused only if its fingerprint matches (same model weights, max_new_tokens,
    temperature, seed, and the same system and user text); a row written with other settings is
    stale, never reused, and generated again. Batches whose rows are all present are skipped,
    each batch is appended (fsynced) as a whole, and sampling is seeded per batch, so an
    interrupted run finishes with the same rows as an uninterrupted one. A second process
    writing the same file is refused (:class:`persona_lens.errors.StoreLockedError`).

    ``backend``: a :class:`persona_lens.backends.GenerationBackend` serving ``model``'s checkpoint
    (e.g. vLLM) generates instead of the HF path; greedy rows are the same on either, so they
    are reused across backends, sampled rows are not.
    """
    name, gen = backend_generation(model, backend)
    items = contrastive_items(spec, n_per_question, questions)
    store = contrastive_store(model, out_path, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              batch_size=batch_size, backend=name)
    fps = [store.fingerprint(system=it["system"], user=it["question"]) for it in items]
    bar = tqdm(total=len(items), desc=f"contrastive {spec.name}", disable=not progress)
    with store.writing():
        bar.update(sum(1 for it, fp in zip(items, fps) if store.get(row_key(it), fp) is not None))
        for b, start in enumerate(range(0, len(items), batch_size)):
            batch, batch_fps = items[start:start + batch_size], fps[start:start + batch_size]
            todo = [store.get(row_key(it), fp) is None for it, fp in zip(batch, batch_fps)]
            if not any(todo):
                continue
            # Always the whole batch, even if an interruption left part of it on disk: the same
            # batch composition, padding and seed as an uninterrupted run, hence the same rows.
            prompts = [[{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}]
                       for it in batch]
            gens = gen(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                       seed=seed * 100_003 + b, batch_size=len(batch), steering=None, progress=False)
            rows = [{**it, "response": g.text, "fingerprint": fp}
                    for it, g, fp, new in zip(batch, gens, batch_fps, todo) if new]
            store.append(rows)
            bar.update(len(rows))
    bar.close()
    return [store.get(row_key(it), fp) for it, fp in zip(items, fps)]  # type: ignore[misc]  # every row was just written
