"""The end-to-end demo: ``persona-lens demo --out DIR [--quick]`` (offline, embedded model).

Stages (each writes its outputs under ``DIR`` and a ``DIR/stages/<name>.json`` record holding a
hash of its parameters, of the content of its input files and of the package format; a rerun
skips a stage whose hash matches and whose output files still hold what it wrote, see
:mod:`persona_lens.runs.stages`). Generated responses are fingerprinted rows
(:mod:`persona_lens.runs.store`): a rerun with another ``--model`` regenerates them rather than
extracting the new model's vectors from the old model's answers.

1. ``extract_<persona>`` - Persona Vectors extraction for creative_professional, environmentalist
   and futurist (BILLY's personas), and for the screening trait (humorous), on a subset of
   each built-in spec's instruction pairs and questions; responses are resumable JSONL.
2. ``blend`` - BILLY's merged vector (plain mean of the three raw vectors) and the cosine
   similarities between the vectors per layer.
3. ``sweep`` - :func:`persona_lens.analysis.sweep.run` on creative_professional:
   held-out separation, norms, steering effect over layer x alpha with a coherence guard; gives
   the layer and steering strength used below.
4. ``billy`` - AUT prompts answered (greedy) with no persona, the multi-role system prompt,
   each single persona vector and the merged vector (BILLY), and the projection of the
   activation change on each persona axis (:func:`persona_lens.analysis.projection.run`);
   the answers are scored per persona (trait judge), for coherence and length.
5. ``monitor`` - last-prompt projection (before generating) of held-out prompts under the
   positive vs negative creative_professional system prompts: AUROC, and correlation with the
   trait score of the answers.
6. ``screen`` - training-data screening by projection difference on a small mixed data set
   (``persona_lens/data/screen_demo.jsonl`` when installed, else one generated here).
7. ``report`` - ``DIR/report.html`` (every figure inline, plotly.js once, works offline) with
   a summary computed from the numbers; ``DIR/summary.json`` is rewritten on every run.

The default trait judge is the offline embedding proxy (``--judge embedding``; per persona a
logistic regression on MiniLM embeddings fitted on that persona's extraction answers), not the
papers' LLM judge; ``--judge none`` drops trait scores, ``openai:MODEL``/``local:MODEL`` use
the spec's eval prompt. ``--backend vllm`` generates every answer on a vLLM engine (same
checkpoint; activations are still read by the model's HF hooks); the demo decodes greedily, so
the stages' caches are shared with ``--backend hf``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..backends import GenerationBackend
from ..runs.stages import StageRunner
from .config import SCREEN_TRAIT, DemoConfig
from .findings import answer_metrics, compute_findings
from .pipeline import Demo

__all__ = ["SCREEN_TRAIT", "Demo", "DemoConfig", "StageRunner", "answer_metrics", "compute_findings", "run_demo",
           "set_threads"]


def run_demo(out: str | os.PathLike, *, quick: bool = False, model: str | Any = "default", judge: str = "embedding",
             threads: int | str | None = "auto", force: bool = False, progress: bool = True, stream=None,
             backend: str | GenerationBackend = "hf", **overrides) -> dict:
    """Run (or resume) the demo into ``out``; returns the summary (also ``out/summary.json``).

    ``model``: a name for :func:`persona_lens.models.load_model` (loaded only if a stage needs
    it) or an already loaded model. ``backend``: who generates, a name of
    :data:`persona_lens.backends.BACKENDS` (built on the model when a stage first generates) or a
    :class:`~persona_lens.backends.GenerationBackend` serving the model's checkpoint (its ``name``
    is recorded). ``threads``: torch CPU threads; ``"auto"`` keeps torch's default unless the
    machine is oversubscribed (1-minute load average above the core count), then uses 1 thread
    (OpenMP spin-waiting makes oversubscribed multi-threading many times slower). ``overrides``
    replace :class:`DemoConfig` fields.
    """
    set_threads(threads)
    name = model if isinstance(model, str) else getattr(model, "persona_lens_key", None) or "default"
    engine = backend if isinstance(backend, str) else backend.name
    cfg = (DemoConfig.quick_config if quick else DemoConfig.full)(model=name, judge=judge, backend=engine, **overrides)
    demo = Demo(out, cfg, model=None if isinstance(model, str) else model,
                backend=None if isinstance(backend, str) else backend, progress=progress, force=force, stream=stream)
    return demo.run()


def set_threads(threads) -> None:
    """Torch CPU threads: a number, ``"default"`` (torch's) or ``"auto"`` (1 when oversubscribed)."""
    if threads in (None, "", "default"):
        return
    if threads == "auto":
        try:
            load = os.getloadavg()[0]
        except OSError:
            return
        cores = os.cpu_count() or 1
        if load > cores:
            torch.set_num_threads(1)
        return
    torch.set_num_threads(max(1, int(threads)))
