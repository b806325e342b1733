"""The demo's screening data: a small set mixing neutral and trait-styled answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..analysis.screen import screen_demo_path
from ..generation import GenerateIds
from ..io import atomic_write_json, atomic_write_text, iter_jsonl
from ..personas import load_persona
from .config import DemoConfig
from .findings import row_label


def screen_data(folder: Path, cfg: DemoConfig, generator: Callable[[], GenerateIds], *,
                progress: bool = True) -> tuple[Path, str]:
    """The mixed data set in ``folder``: the packaged one when present (first ``screen_rows``
    rows, sources balanced by taking rows in file order), else pos/neg answers generated here,
    greedily, by the ``generate_ids`` of a backend that ``generator()`` (called, and the model
    loaded, only then) returns."""
    path = folder / "data.jsonl"
    src = screen_demo_path()
    if src.exists():
        rows = list(iter_jsonl(src))
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(str(row_label(r)), []).append(r)
        picked: list = []
        while len(picked) < min(cfg.screen_rows, len(rows)):  # round-robin over labels
            for g in list(groups):
                if groups[g] and len(picked) < cfg.screen_rows:
                    picked.append(groups[g].pop(0))
        atomic_write_json(folder / "data_source.json", {"source": str(src), "n": len(picked)})
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))
        return path, f"packaged {src.name} (first {len(picked)} rows, round-robin over labels)"
    # generated: answers to held-out questions under the trait's pos / neg system prompts
    spec = load_persona(cfg.screen_trait)
    qs = list(spec.eval_questions or spec.questions)[: max(1, cfg.screen_rows // 2)]
    items = []
    for i, q in enumerate(qs):
        pair = spec.instruction[i % len(spec.instruction)]
        items += [(q, pair.pos, cfg.screen_trait), (q, pair.neg, "neutral")]
    prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}] for q, s, _ in items]
    texts = [g.text for g in generator()(prompts, max_new_tokens=cfg.screen_tokens, temperature=0.0, top_p=1.0,
                                         seed=None, batch_size=cfg.batch_size, steering=None, progress=progress)]
    atomic_write_text(path, "".join(json.dumps({"prompt": q, "response": t, "label": lab}, ensure_ascii=False) + "\n"
                                    for (q, _, lab), t in zip(items, texts)))
    return path, f"generated: {len(qs)} held-out {cfg.screen_trait} questions answered under its pos/neg prompts"
