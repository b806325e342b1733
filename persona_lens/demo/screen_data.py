"""The demo's screening data: a small set mixing neutral and trait-styled answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.screen import screen_demo_path
from ..generation import generate
from ..io import atomic_write_json, atomic_write_text, iter_jsonl
from ..personas import load_persona
from .config import DemoConfig
from .findings import row_label


def screen_data(folder: Path, cfg: DemoConfig, model: Callable[[], Any], *, progress: bool = True) -> tuple[Path, str]:
    """The mixed data set in ``folder``: the packaged one when present (first ``screen_rows``
    rows, sources balanced by taking rows in file order), else pos/neg answers generated here
    (``model()`` loads the model only then)."""
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
    texts = generate(model(), [[{"role": "system", "content": s}, {"role": "user", "content": q}]
                               for q, s, _ in items], max_new_tokens=cfg.screen_tokens,
                     batch_size=cfg.batch_size, progress=progress, desc="screen: data")
    atomic_write_text(path, "".join(json.dumps({"prompt": q, "response": t, "label": lab}, ensure_ascii=False) + "\n"
                                    for (q, _, lab), t in zip(items, texts)))
    return path, f"generated: {len(qs)} held-out {cfg.screen_trait} questions answered under its pos/neg prompts"
