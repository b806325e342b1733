"""The creativity evaluation harness (BILLY's Table 1 setting, scaled to any model).

``run_creativity(CreativityConfig(...))`` runs every method on every task item and seed,
scores the answers and writes into ``out``:

* ``responses.jsonl`` — one row per (task, item, method, seed): prompt, answer text, parsed idea
  lists, calls, prompt/generated tokens, wall time, sampling seed, method settings (and the
  discussion transcript). Resumable: finished keys are skipped; items are generated in fixed
  chunks with a seed derived from (seed, task, method, chunk), so a resumed run produces the same
  rows as an uninterrupted one.
* ``judgments.jsonl`` — raw judge replies by request hash (resumable), with an LLM judge.
* ``scores.jsonl`` — per response: the metrics (see ``metrics.py``) and efficiency numbers.
* ``results.csv`` / ``results.md`` — mean ± std (sample std over responses) per task x method,
  efficiency per method and the BILLY / discussion ratios.
* ``figures/`` — scores per method and task, latency and tokens per method, and the ablation
  (originality, or the offline diversity proxy without a judge, vs the number of blended vectors).
* ``summary.json`` — configuration, resolved layer/alpha, ratios, paths.

Judges: ``"none"`` (fluency by exact-text dedupe + efficiency), ``"embedding"`` (default: adds
the offline proxies), ``"openai:MODEL"`` / ``"local:MODEL"`` (the paper's rubric judging; the
offline proxies are added too).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ...io import JsonlAppender, atomic_write_json, atomic_write_text, iter_jsonl
from .methods import (
    BILLY_PERSONAS,
    DEFAULT_MERGE,
    DEFAULT_ROLES,
    Discussion,
    Method,
    SingleCall,
    _stable_seed,
    multi_role_system_prompt,
)
from .metrics import EFFICIENCY, METRICS, average_dicts, fmt, offline_metrics, summarize
from .tasks import TASKS, load_tasks

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("sa", "sa_t1", "mrp", "discussion", "billy")
#: BILLY's setting on Qwen2.5-7B-Instruct: hidden_states[20] = our layer 19, alpha 2.0
PAPER_LAYER_FRACTION = 20 / 28
PAPER_ALPHA = 2.0


@dataclass
class CreativityConfig:
    out: str
    tasks: Sequence[str] = TASKS
    methods: Sequence[str] = DEFAULT_METHODS
    n: int | None = 10
    seeds: Sequence[int] = (0,)
    model: str = "default"
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.7
    batch_size: int = 8
    tasks_dir: str | None = None
    split: str = "auto"
    # BILLY / steering
    layer: int | None = None
    alpha: float | None = None
    positions: str = "response"
    sweep: str | None = None
    vectors: Sequence[str] | None = None
    merged: str | None = None
    personas: Sequence[str] = DEFAULT_MERGE
    vector_dir: str | None = None  # NAME.safetensors files used for persona names before extracting
    extract_questions: int = 5
    extract_max_tokens: int = 96
    # discussion
    roles: Sequence[str] = DEFAULT_ROLES
    rounds: int = 3
    discussion_final: str = "agents"
    # judging
    judge: str = "embedding"
    judge_samples: int = 3
    judge_temperature: float | None = None
    judge_mode: str = "batch"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    # ablation: numbers of blended BILLY personas (first k of BILLY_PERSONAS or of --vectors)
    ablation_vectors: Sequence[int] | None = None
    figures: bool = True
    progress: bool = True

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def row_key(row: dict) -> tuple:
    return (row["task"], row["item_id"], row["method"], int(row["seed"]))


def parse_ablation(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"1..7"`` -> 1..7; ``"1,3,5"`` -> [1, 3, 5]; ``"4"`` -> 1..4."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        return [int(k) for k in spec]
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.|-|:)\s*(\d+)\s*", spec)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return list(range(a, b + 1))
    if "," in spec:
        return [int(x) for x in spec.split(",") if x.strip()]
    return list(range(1, int(spec) + 1))


def read_sweep(path: str | os.PathLike) -> tuple[int, float]:
    """The recommended (layer, alpha) from a layer-sweep ``sweep.json`` (or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "sweep.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    for holder in (data.get("recommendation"), data.get("recommended"), data.get("best"), data):
        if isinstance(holder, dict):
            layer = holder.get("layer", holder.get("recommended_layer"))
            alpha = holder.get("alpha", holder.get("recommended_alpha"))
            if layer is not None and alpha is not None:
                return int(layer), float(alpha)
    raise ValueError(f"{p}: no recommended layer and alpha found (expected recommendation.layer/alpha)")


# ----------------------------------------------------------------------------- the harness


class CreativityHarness:
    def __init__(self, config: CreativityConfig, model=None, judge=None):
        self.cfg = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._model = model
        self._judge = judge
        self._vectors: dict[str, object] = {}
        self.steer_settings: dict | None = None
        self.judge_info: dict = {"judge": config.judge}
        self.ablation = parse_ablation(config.ablation_vectors) if config.ablation_vectors is not None else None
        self.items = load_tasks(list(config.tasks), n=config.n, tasks_dir=config.tasks_dir, split=config.split)
        self.method_names = list(dict.fromkeys(list(config.methods) + [f"billy_k{k}" for k in (self.ablation or [])]))
        for name in self.method_names:
            self._check_method_name(name)

    # ------------------------------------------------------------------ model, vectors
    @property
    def model(self):
        if self._model is None:
            from ...models import load_model

            self._model = load_model(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype)
        return self._model

    @staticmethod
    def _check_method_name(name: str) -> None:
        if name in ("sa", "sa_t1", "mrp", "discussion", "billy") or re.fullmatch(r"billy_k\d+", name):
            return
        if name.startswith("single:") and name.split(":", 1)[1]:
            return
        raise ValueError(f"unknown method {name!r}; choose from sa, sa_t1, mrp, discussion, billy, single:NAME")

    def vector_cache_dir(self) -> Path:
        from ...models import model_id

        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id(self.model))
        return self.out / "vectors" / tag

    def persona_vector(self, name_or_path: str):
        """A vector file, or a built-in persona extracted on the fly (cached under ``out/vectors``)."""
        if name_or_path in self._vectors:
            return self._vectors[name_or_path]
        from ...vectors import PersonaVector

        path = Path(name_or_path)
        in_dir = Path(self.cfg.vector_dir) / f"{name_or_path}.safetensors" if self.cfg.vector_dir else None
        if path.suffix in (".safetensors", ".pt", ".gguf") or path.exists():
            vec = PersonaVector.load(path)
        elif in_dir is not None and in_dir.exists():
            vec = PersonaVector.load(in_dir)
        else:
            vec = self._extract_builtin(name_or_path)
        vec.check_model(self.model)
        self._vectors[name_or_path] = vec
        return vec

    def _extract_builtin(self, name: str):
        from ...extract import extract_from_rows
        from ...generate import generate_contrastive
        from ...personas import load_persona
        from ...vectors import PersonaVector

        spec = load_persona(name)
        nq, tok = self.cfg.extract_questions, self.cfg.extract_max_tokens
        folder = self.vector_cache_dir()
        path = folder / f"{spec.name}-q{nq}-t{tok}.safetensors"
        if path.exists():
            return PersonaVector.load(path)
        log.info("extracting %s (%d questions, %d tokens) into %s", spec.name, nq, tok, path)
        rows = generate_contrastive(self.model, spec, folder / f"{spec.name}-q{nq}-t{tok}.responses.jsonl",
                                    questions=list(spec.questions)[:nq], max_new_tokens=tok, temperature=0.0,
                                    seed=0, batch_size=max(self.cfg.batch_size, 10), progress=self.cfg.progress)
        rows = [r for r in rows if r["response"].strip()]
        vec = extract_from_rows(self.model, rows, persona=spec.name, batch_size=max(self.cfg.batch_size, 10),
                                progress=self.cfg.progress,
                                extra_metadata={"n_questions": nq, "max_new_tokens": tok, "source": "creativity eval"})
        vec.save(path)
        return vec

    def blended(self, names: Sequence[str], label: str):
        from ...blend import blend

        vecs = [self.persona_vector(n) for n in names]
        return blend(vecs, "mean", name=label) if len(vecs) > 1 else vecs[0]

    def merged_vector(self):
        if "__merged__" in self._vectors:
            return self._vectors["__merged__"]
        if self.cfg.merged:
            vec = self.persona_vector(self.cfg.merged)
        elif self.cfg.vectors:
            vec = self.blended(list(self.cfg.vectors), "merged")
        else:
            vec = self.blended(list(self.cfg.personas), "merged(" + "+".join(self.cfg.personas) + ")")
        self._vectors["__merged__"] = vec
        return vec

    def steering_settings(self) -> dict:
        if self.steer_settings is None:
            from ...models import n_layers

            layer, alpha, source = self.cfg.layer, self.cfg.alpha, "flags"
            if (layer is None or alpha is None) and self.cfg.sweep:
                s_layer, s_alpha = read_sweep(self.cfg.sweep)
                layer = s_layer if layer is None else layer
                alpha = s_alpha if alpha is None else alpha
                source = f"sweep {self.cfg.sweep}"
            if layer is None or alpha is None:
                L = n_layers(self.model)
                layer = max(0, round(L * PAPER_LAYER_FRACTION) - 1) if layer is None else layer
                alpha = PAPER_ALPHA if alpha is None else alpha
                source = "default (BILLY's relative depth and alpha; not calibrated for this model)"
                log.warning("billy: no --layer/--alpha/--sweep; using layer %d, alpha %.2f (%s)", layer, alpha, source)
            self.steer_settings = {"layer": int(layer), "alpha": float(alpha), "positions": self.cfg.positions,
                                   "source": source}
        return self.steer_settings

    def build_method(self, name: str) -> Method:
        from ...steering import Steering

        cfg = self.cfg
        if name == "sa":
            return SingleCall("sa", temperature=cfg.temperature)
        if name == "sa_t1":
            return SingleCall("sa_t1", temperature=1.0)
        if name == "mrp":
            return SingleCall("mrp", temperature=cfg.temperature, system=multi_role_system_prompt(cfg.roles),
                              info={"roles": list(cfg.roles)}, kind="multi_role_prompt")
        if name == "discussion":
            return Discussion("discussion", roles=cfg.roles, rounds=cfg.rounds, temperature=cfg.temperature,
                              final=cfg.discussion_final)
        st = self.steering_settings()
        if name == "billy":
            vec = self.merged_vector()
            n_vec = len(cfg.vectors) if cfg.vectors else (None if cfg.merged else len(cfg.personas))
            components = list(cfg.vectors or ([] if cfg.merged else cfg.personas)) or [cfg.merged]
        elif name.startswith("billy_k"):
            k = int(name[len("billy_k"):])
            pool = list(cfg.vectors) if cfg.vectors else list(BILLY_PERSONAS)
            if not 1 <= k <= len(pool):
                raise ValueError(f"ablation k={k} needs 1 <= k <= {len(pool)} vectors")
            components = pool[:k]
            vec = self.blended(components, f"merged(first {k})")
            n_vec = k
        else:  # single:NAME
            components = [name.split(":", 1)[1]]
            vec = self.persona_vector(components[0])
            n_vec = 1
        steering = Steering.from_vector(vec, st["layer"], st["alpha"], st["positions"])
        info = {**st, "n_vectors": n_vec, "components": [str(c) for c in components]}
        return SingleCall(name, temperature=cfg.temperature, steering=steering, info=info, kind="steering")

    # ------------------------------------------------------------------ generation
    @property
    def responses_path(self) -> Path:
        return self.out / "responses.jsonl"

    def planned_keys(self) -> list[tuple]:
        return [(t, it.item_id, m, int(s)) for m in self.method_names for t, items in self.items.items()
                for s in self.cfg.seeds for it in items]

    def generate(self) -> list[dict]:
        from ...models import model_id

        cfg = self.cfg
        done = {row_key(r): r for r in iter_jsonl(self.responses_path)} if self.responses_path.exists() else {}
        chunk = max(1, cfg.batch_size)
        with JsonlAppender(self.responses_path) as sink:
            for name in self.method_names:
                method = None
                for task, items in self.items.items():
                    for seed in cfg.seeds:
                        for c, start in enumerate(range(0, len(items), chunk)):
                            part = items[start:start + chunk]
                            if all((task, it.item_id, name, int(seed)) in done for it in part):
                                continue
                            if method is None:
                                method = self.build_method(name)
                            sampling_seed = _stable_seed(seed, task, name, c)
                            t0 = time.perf_counter()
                            outs = method.run(self.model, part, seed=sampling_seed, max_new_tokens=cfg.max_new_tokens,
                                              batch_size=cfg.batch_size)
                            wall = time.perf_counter() - t0
                            rows = []
                            for it, o in zip(part, outs):
                                if (task, it.item_id, name, int(seed)) in done:
                                    continue  # a partly written chunk: regenerated whole (same seed), kept once
                                row = {"task": task, "item_id": it.item_id, "method": name, "seed": int(seed),
                                       "sampling_seed": sampling_seed, "chunk": c, "chunk_size": len(part),
                                       "chunk_wall_s": wall, "question": it.question, "subject": it.subject,
                                       "prompt": it.prompt, "response": o.text, "idea_lists": o.idea_lists,
                                       "n_ideas": [len(x) for x in o.idea_lists], "calls": o.calls,
                                       "prompt_tokens": o.prompt_tokens, "gen_tokens": o.gen_tokens,
                                       "wall_s": o.wall_s, "max_new_tokens": cfg.max_new_tokens,
                                       "model_id": model_id(self.model), "method_info": method.describe(),
                                       **o.extra}
                                rows.append(row)
                            sink.write(rows)
                            done.update((row_key(r), r) for r in rows)
                            if cfg.progress:
                                log.info("%s %s chunk %d: %d rows in %.1fs", name, task, c, len(rows), wall)
        keys = self.planned_keys()
        rows = [done[k] for k in keys]
        if self.steer_settings is None:  # a fully resumed run: report what the rows used
            info = next((r["method_info"] for r in rows if "layer" in (r.get("method_info") or {})), None)
            if info:
                self.steer_settings = {k: info[k] for k in ("layer", "alpha", "positions", "source") if k in info}
        return rows

    # ------------------------------------------------------------------ scoring
    def judge(self):
        if self._judge is None and self.cfg.judge not in ("none", "embedding", None, ""):
            from ...judges import make_judge

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
        prompt_emb: dict[str, object] = {}
        if use_embeddings:
            try:
                from ...judges.embedding import embed_texts

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
            from .judging import CreativityJudge, judge_lists

            cj = CreativityJudge(judge, samples=cfg.judge_samples, temperature=cfg.judge_temperature,
                                 mode=cfg.judge_mode)
            jpath = self.out / "judgments.jsonl"
            done = {}
            if jpath.exists():
                done = {r["key"]: r["reply"] for r in iter_jsonl(jpath) if r.get("judge") == cj.name}
            with JsonlAppender(jpath) as sink:
                def on_reply(req, text):
                    sink.write([{"key": req.key, "judge": cj.name, "criterion": req.criterion, "sample": req.sample,
                                 "idea": req.idea, "temperature": cj.temperature, "reply": text}])

                judged = judge_lists(cj, [(q, ideas) for _, _, q, ideas in lists],
                                     embeddings=emb_by_list if use_embeddings else None, done=done,
                                     on_reply=on_reply, progress=cfg.progress)
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
        atomic_write_text(self.out / "scores.jsonl",
                          "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in scores))
        return scores

    # ------------------------------------------------------------------ tables
    def tables(self, scores: Sequence[dict]) -> dict:
        metric_names = [m for m in METRICS if any(m in s for s in scores)]
        long = summarize(scores, metric_names + list(EFFICIENCY))
        overall = summarize([{**s, "task": "all"} for s in scores], metric_names + list(EFFICIENCY))
        rows = long + overall
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["task", "method", "metric", "mean", "std", "n", "proxy"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        ratios = efficiency_ratios(overall)
        atomic_write_text(self.out / "results.md", markdown_report(rows, self.method_names, list(self.items),
                                                                   metric_names, ratios, self.judge_info,
                                                                   self.steer_settings))
        return {"rows": rows, "ratios": ratios, "metrics": metric_names}

    def run(self) -> dict:
        t0 = time.perf_counter()
        atomic_write_json(self.out / "config.json", self.cfg.to_dict())
        rows = self.generate()
        scores = self.score(rows)
        tables = self.tables(scores)
        figures = {}
        if self.cfg.figures:
            from .figures import write_figures

            figures = write_figures(self.out / "figures", tables["rows"], self.method_names, list(self.items),
                                    tables["metrics"], scores, judged=self.cfg.judge not in ("none", "embedding"))
        summary = {
            "config": self.cfg.to_dict(), "tasks": {t: len(v) for t, v in self.items.items()},
            "methods": self.method_names, "n_responses": len(rows), "steering": self.steer_settings,
            "judge": self.judge_info, "ratios_billy_over_discussion": tables["ratios"],
            "files": {"responses": str(self.responses_path), "scores": str(self.out / "scores.jsonl"),
                      "results_csv": str(self.out / "results.csv"), "results_md": str(self.out / "results.md"),
                      "figures": {k: str(v) for k, v in figures.items()}},
            "wall_s": time.perf_counter() - t0,
        }
        atomic_write_json(self.out / "summary.json", summary)
        return summary


def efficiency_ratios(overall_rows: Sequence[dict], num: str = "billy", den: str = "discussion") -> dict:
    """``num / den`` for each efficiency metric's mean (over all tasks)."""
    get = {(r["method"], r["metric"]): r["mean"] for r in overall_rows}
    out = {}
    for metric in EFFICIENCY:
        a, b = get.get((num, metric)), get.get((den, metric))
        if a is not None and b not in (None, 0) and not math.isnan(b):
            out[metric] = a / b
    return out


def markdown_report(rows, methods, tasks, metrics, ratios, judge_info, steer) -> str:
    get = {(r["task"], r["method"], r["metric"]): r for r in rows}
    lines = ["# Creativity evaluation", ""]
    lines.append(f"Judge: `{(judge_info or {}).get('judge')}`"
                 + (f" ({judge_info.get('samples')} samples, T={judge_info.get('temperature')}, "
                    f"{judge_info.get('mode')})" if judge_info and "samples" in judge_info else ""))
    if steer:
        lines.append(f"BILLY steering: layer {steer['layer']}, alpha {steer['alpha']}, positions "
                     f"{steer['positions']} ({steer['source']})")
    lines += ["", "Cells: mean ± sample std over responses. Metrics marked *(proxy)* are offline "
              "embedding proxies, not the paper's judge metrics.", ""]
    for task in list(tasks) + ["all"]:
        present = [m for m in metrics if any((task, meth, m) in get for meth in methods)]
        if not present:
            continue
        lines += [f"## {task}", ""]
        header = ["method"] + [METRICS[m][0] + (" *(proxy)*" if METRICS[m][1] else "") for m in present]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for meth in methods:
            cells = [fmt(get[(task, meth, m)]["mean"], get[(task, meth, m)]["std"]) if (task, meth, m) in get else "—"
                     for m in present]
            lines.append("| " + " | ".join([meth] + cells) + " |")
        lines.append("")
    lines += ["## Efficiency (per query, all tasks)", ""]
    header = ["method"] + list(EFFICIENCY.values())
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for meth in methods:
        cells = [fmt(get[("all", meth, m)]["mean"], get[("all", meth, m)]["std"], 3 if m == "wall_s" else 1)
                 if ("all", meth, m) in get else "—" for m in EFFICIENCY]
        lines.append("| " + " | ".join([meth] + cells) + " |")
    if ratios:
        lines += ["", "BILLY / discussion: " + ", ".join(f"{EFFICIENCY[k]} × {v:.3g}" for k, v in ratios.items())]
    return "\n".join(lines) + "\n"


def run_creativity(config: CreativityConfig, model=None, judge=None) -> dict:
    """Run the whole evaluation (see the module docstring); returns the summary dict."""
    return CreativityHarness(config, model=model, judge=judge).run()
