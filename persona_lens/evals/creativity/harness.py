"""The creativity evaluation harness (BILLY's Table 1 setting, scaled to any model).

``run(model, CreativityConfig(...), out=DIR) -> CreativityResult`` runs every method on every
task item and seed and scores the answers (numbers only; ``result.save(dir)`` writes the
tables, :func:`persona_lens.viz.creativity.save_figures` the figures). In ``out`` it keeps

* ``responses.jsonl`` — one row per (task, item, method, seed): prompt, answer text, parsed idea
  lists, calls, prompt/generated tokens, wall time, sampling seed, method settings (and the
  discussion transcript). Resumable (:mod:`persona_lens.runs.store`): a finished row is reused
  only if its fingerprint matches — same model weights, max_new_tokens, batch size, method
  settings (temperature, system prompt, steering layer/alpha and vector values) and prompt
  text; rows written with other settings are stale and generated again. Items are generated in
  fixed chunks with a seed derived from (seed, task, method, chunk), so a resumed run produces
  the same rows as an uninterrupted one.
* ``judgments.jsonl`` — raw judge replies by request hash (resumable; fingerprinted by the
  judge's settings and endpoint), with an LLM judge.
* ``vectors/`` — persona vectors extracted on the fly, per model weights.

The result holds per response the metrics (see ``metrics.py``) and efficiency numbers, and the
mean ± std (sample std over responses) per task x method, efficiency per method and the
BILLY / discussion ratios.

Judges: ``"none"`` (fluency by exact-text dedupe + efficiency), ``"embedding"`` (default: adds
the offline proxies), ``"openai:MODEL"`` / ``"local:MODEL"`` (the paper's rubric judging; the
offline proxies are added too).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...generation import backend_generation
from ...judges import make_judge
from ...judges.embedding import embed_texts
from ...models import model_id
from ...runs.fingerprint import model_fingerprint, steering_fingerprint
from ...runs.store import ResumeStore
from .builders import MethodBuilder, check_method_name
from .config import CreativityConfig
from .judging import CreativityJudge, judge_lists
from .methods import Method, _stable_seed
from .metrics import EFFICIENCY, average_dicts, offline_metrics
from .result import CreativityResult, score_table
from .tasks import load_tasks

log = logging.getLogger(__name__)

KEY_FIELDS = ("task", "item_id", "method", "seed")
RESPONSES_FILE = "responses.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"


def row_key(row: dict) -> tuple:
    return tuple(row[f] for f in KEY_FIELDS)


class CreativityHarness:
    """One run's generation (resumable, in ``out``) and scoring; :func:`run` drives it."""

    def __init__(self, model, config: CreativityConfig, *, out, judge=None, progress: bool = True, backend=None):
        self.cfg = config
        self.model = model
        self.backend = backend  # generates (e.g. vLLM); None: HF on model
        self.sampler = backend_generation(model, backend)[0]
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self._judge = judge
        self.judge_info: dict = {"judge": config.judge}
        self.items = load_tasks(list(config.tasks), n=config.n, tasks_dir=config.tasks_dir, split=config.split)
        self.method_names = config.method_names
        for name in self.method_names:
            check_method_name(name)
        self.builder = MethodBuilder(model, config, self.out, progress=progress)

    @property
    def steer_settings(self) -> dict | None:
        return self.builder.steer_settings

    # ------------------------------------------------------------------ generation
    @property
    def responses_path(self) -> Path:
        return self.out / RESPONSES_FILE

    def planned_keys(self) -> list[tuple]:
        return [(t, it.item_id, m, int(s)) for m in self.method_names for t, items in self.items.items()
                for s in self.cfg.seeds for it in items]

    def generate(self) -> list[dict]:
        cfg = self.cfg
        chunk = max(1, cfg.batch_size)
        # The chunk size decides each chunk's sampling seed, and the backend how it draws from a
        # seed (HF and vLLM draw differently), so both are part of every fingerprint.
        store = ResumeStore(self.responses_path, KEY_FIELDS, shared={
            "model": model_fingerprint(self.model), "max_new_tokens": cfg.max_new_tokens, "chunk": chunk,
            "sampler": self.sampler})
        found: dict[tuple, Any] = {}
        with store.writing():
            for name in self.method_names:
                method = self.builder.build(name)
                settings = {"method": method.describe(), "steering": steering_fingerprint(getattr(method, "steering", None))}
                for task, items in self.items.items():
                    for seed in cfg.seeds:
                        for c, start in enumerate(range(0, len(items), chunk)):
                            part = items[start:start + chunk]
                            sampling_seed = _stable_seed(seed, task, name, c)
                            keys = [(task, it.item_id, name, int(seed)) for it in part]
                            fps = [store.fingerprint(**settings, prompt=it.prompt, sampling_seed=sampling_seed)
                                   for it in part]
                            todo = [store.get(k, fp) is None for k, fp in zip(keys, fps)]
                            if any(todo):
                                self._generate_chunk(store, method, part, todo, fps, task, int(seed), sampling_seed, c)
                            found.update((k, store.get(k, fp)) for k, fp in zip(keys, fps))
        return [found[k] for k in self.planned_keys()]

    def _generate_chunk(self, store: ResumeStore, method: Method, part, todo, fps, task: str, seed: int,
                        sampling_seed: int, c: int) -> None:
        """Run a whole chunk (same composition and seed as an uninterrupted run, even if part of it
        is on disk already) and append its missing rows."""
        cfg = self.cfg
        t0 = time.perf_counter()
        outs = method.run(self.model, part, seed=sampling_seed, max_new_tokens=cfg.max_new_tokens,
                          batch_size=cfg.batch_size, backend=self.backend)
        wall = time.perf_counter() - t0
        rows = []
        for it, o, new, fp in zip(part, outs, todo, fps):
            if not new:
                continue
            rows.append({"task": task, "item_id": it.item_id, "method": method.name, "seed": seed,
                         "sampling_seed": sampling_seed, "chunk": c, "chunk_size": len(part),
                         "chunk_wall_s": wall, "question": it.question, "subject": it.subject,
                         "prompt": it.prompt, "response": o.text, "idea_lists": o.idea_lists,
                         "n_ideas": [len(x) for x in o.idea_lists], "calls": o.calls,
                         "prompt_tokens": o.prompt_tokens, "gen_tokens": o.gen_tokens,
                         "wall_s": o.wall_s, "max_new_tokens": cfg.max_new_tokens,
                         "model_id": model_id(self.model), "method_info": method.describe(),
                         **o.extra, "fingerprint": fp})
        store.append(rows)
        if self.progress:
            log.info("%s %s chunk %d: %d rows in %.1fs", method.name, task, c, len(rows), wall)

    # ------------------------------------------------------------------ scoring
    def judge(self):
        if self._judge is None and self.cfg.judged:
            kwargs = {}
            if self.cfg.judge.startswith("openai:"):
                kwargs = {"base_url": self.cfg.judge_base_url, "api_key_env": self.cfg.judge_api_key_env}
            self._judge = make_judge(self.cfg.judge, **kwargs)
        return self._judge

    def score(self, rows: Sequence[dict]) -> list[dict]:
        cfg = self.cfg
        use_embeddings = cfg.judge != "none"
        lists: list[tuple[int, int, str, list[str]]] = []  # (row, list index, question, ideas)
        for ri, row in enumerate(rows):
            for li, ideas in enumerate(row["idea_lists"]):
                lists.append((ri, li, row["question"], list(ideas)))
        emb_by_list: list = [None] * len(lists)
        prompt_emb: dict[str, Any] = {}
        if use_embeddings:
            try:
                texts = list(dict.fromkeys([i for _, _, _, ideas in lists for i in ideas]
                                           + [r["question"] for r in rows]))
                matrix = embed_texts(texts)
                index = {t: i for i, t in enumerate(texts)}
                emb_by_list = [matrix[[index[i] for i in ideas]] if ideas else matrix[:0]
                               for _, _, _, ideas in lists]
                prompt_emb = {r["question"]: matrix[index[r["question"]]] for r in rows}
            except ImportError as exc:  # the offline embedding package is missing
                log.warning("offline proxies skipped: %s", exc)
                use_embeddings = False
        per_list = [offline_metrics(ideas, emb_by_list[k], prompt_emb.get(q) if use_embeddings else None)
                    for k, (_, _, q, ideas) in enumerate(lists)]
        judge = self.judge()
        if judge is not None:
            cj = CreativityJudge(judge, samples=cfg.judge_samples, temperature=cfg.judge_temperature,
                                 mode=cfg.judge_mode)
            # the request key hashes the judge's name and messages; the endpoint is not in it
            replies = ResumeStore(self.out / JUDGMENTS_FILE, ("key",), shared={
                "judge": cj.describe(), "endpoint": getattr(judge, "endpoint", None)})
            judge_fp = replies.fingerprint()
            with replies.writing():
                done = {r["key"]: r["reply"] for r in replies.rows() if r["fingerprint"] == judge_fp}

                def on_reply(req, text):
                    replies.append([{"key": req.key, "judge": cj.name, "criterion": req.criterion,
                                     "sample": req.sample, "idea": req.idea, "temperature": cj.temperature,
                                     "reply": text, "fingerprint": judge_fp}])

                judged = judge_lists(cj, [(q, ideas) for _, _, q, ideas in lists],
                                     embeddings=emb_by_list if use_embeddings else None, done=done,
                                     on_reply=on_reply, progress=self.progress)
            for m, j in zip(per_list, judged):
                if "fluency" in j:  # the judge's relevance filter applies; keep the plain count too
                    m["fluency_dedupe"] = m["fluency"]
                m.update(j)
            self.judge_info = cj.describe()
        else:
            self.judge_info = {"judge": cfg.judge}
        scores = []
        by_row: dict[int, list[dict]] = {}
        for (ri, _, _, _), m in zip(lists, per_list):
            by_row.setdefault(ri, []).append(m)
        for ri, row in enumerate(rows):
            metrics = average_dicts(by_row.get(ri, [])) if by_row.get(ri) else {"n_ideas": 0.0, "fluency": 0.0}
            scores.append({"task": row["task"], "item_id": row["item_id"], "method": row["method"],
                           "seed": row["seed"], "n_lists": len(row["idea_lists"]), **metrics,
                           **{k: row[k] for k in EFFICIENCY}, "n_vectors": (row.get("method_info") or {}).get("n_vectors")})
        return scores


def run(model, config: CreativityConfig, *, out: str | os.PathLike, judge=None, progress: bool = True,
        backend=None) -> CreativityResult:
    """Run the whole evaluation (see the module docstring) with its resumable files in ``out``.
    ``judge``: an already built judge (None: built from ``config.judge`` when it names a model).
    ``backend``: a :class:`persona_lens.backends.GenerationBackend` serving ``model``'s checkpoint
    (e.g. vLLM) generates the responses; None: HF on ``model``."""
    t0 = time.perf_counter()
    harness = CreativityHarness(model, config, out=out, judge=judge, progress=progress, backend=backend)
    rows = harness.generate()
    scores = harness.score(rows)
    table, metrics, ratios = score_table(scores)
    return CreativityResult(
        config=config, tasks={t: len(v) for t, v in harness.items.items()}, methods=harness.method_names,
        n_responses=len(rows), steering=harness.steer_settings, judge=harness.judge_info, table=table,
        metrics=metrics, ratios=ratios, model_id=model_id(model), wall_s=time.perf_counter() - t0, scores=scores,
        responses=rows)
