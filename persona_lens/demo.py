"""The end-to-end demo: ``persona-lens demo --out DIR [--quick]`` (offline, embedded model).

Stages (each writes its outputs under ``DIR`` and a ``DIR/stages/<name>.json`` record holding a
hash of its parameters and of its inputs' records; a rerun skips a stage whose record exists,
whose hash matches and whose output files exist):

1. ``extract_<persona>`` - Persona Vectors extraction for creative_professional, environmentalist
   and futurist (BILLY's personas), and for the screening trait (humorous), on a subset of
   each built-in spec's instruction pairs and questions; responses are resumable JSONL.
2. ``blend`` - BILLY's merged vector (plain mean of the three raw vectors) and the cosine
   similarities between the vectors per layer.
3. ``sweep`` - :func:`persona_lens.analysis.sweep.layer_sweep` on creative_professional:
   held-out separation, norms, steering effect over layer x alpha with a coherence guard; gives
   the layer and steering strength used below.
4. ``billy`` - AUT prompts answered (greedy) with no persona, the multi-role system prompt,
   each single persona vector and the merged vector (BILLY), and the projection of the
   activation change on each persona axis (:func:`persona_lens.analysis.projection_analysis`);
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
the spec's eval prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._version import __version__
from .io import atomic_write_json, iter_jsonl, json_safe, read_jsonl

BILLY_PERSONAS = ("creative_professional", "environmentalist", "futurist")
SCREEN_TRAIT = "humorous"
STAGE_VERSION = 3  # bump when a stage's code changes what it writes


@dataclass
class DemoConfig:
    """Sizes of every stage (``quick()`` for CI, ``full()`` for the main job)."""

    quick: bool = False
    model: str = "default"
    personas: tuple = BILLY_PERSONAS
    screen_trait: str = SCREEN_TRAIT
    judge: str = "embedding"
    batch_size: int = 16
    # extraction
    n_pairs: int = 4
    n_questions: int = 4
    extract_tokens: int = 48
    # sweep (fractions of the residual norm)
    # swept layers as fractions of the depth (layer = round(f * (n_layers - 1))): 5, 10, 15, 20, 25 on SmolLM2
    sweep_layer_fracs: tuple = (0.17, 0.34, 0.52, 0.69, 0.86)
    sweep_alphas: tuple = (-0.25, 0.0, 0.1, 0.2, 0.35, 0.5)
    sweep_eval: int = 10
    sweep_steer: int = 4
    sweep_tokens: int = 40
    fallback_alpha_frac: float = 0.2
    # BILLY / AUT
    aut_prompts: int = 5
    aut_tokens: int = 64
    # screening
    screen_rows: int = 30
    screen_tokens: int = 40

    @classmethod
    def full(cls, **kw) -> "DemoConfig":
        return cls(**kw)

    @classmethod
    def quick_config(cls, **kw) -> "DemoConfig":
        base = dict(quick=True, n_pairs=2, n_questions=3, extract_tokens=32, sweep_layer_fracs=(0.28, 0.48, 0.69),
                    sweep_alphas=(0.0, 0.2, 0.4), sweep_eval=4, sweep_steer=2, sweep_tokens=32, aut_prompts=2,
                    aut_tokens=40, screen_rows=12, screen_tokens=32)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- stages


class StageRunner:
    """Runs named stages, skipping those whose record (same parameter hash, outputs present) exists."""

    def __init__(self, out: Path, *, total: int, log: Callable[[str], None], force: bool = False):
        self.out = out
        self.total = total
        self.log = log
        self.force = force
        self.records: dict[str, dict] = {}
        self.index = 0

    def run(self, name: str, params: dict, fn: Callable[[], dict], outputs: Callable[[dict], list] | None = None) -> dict:
        self.index += 1
        path = self.out / "stages" / f"{name}.json"
        key = _hash({"stage": name, "version": STAGE_VERSION, "params": params})
        if path.exists() and not self.force:
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                rec = None
            if rec and rec.get("config_hash") == key:
                files = outputs(rec["result"]) if outputs else rec.get("outputs", [])
                if all((self.out / f).exists() for f in files):
                    self.log(f"[{self.index}/{self.total}] {name}: cached (config {key})")
                    self.records[name] = {"status": "cached", "seconds": 0.0, "config_hash": key,
                                          "first_run_seconds": rec.get("seconds")}
                    return rec["result"]
        self.log(f"[{self.index}/{self.total}] {name}: running ...")
        t = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t
        files = outputs(result) if outputs else []
        atomic_write_json(path, {"name": name, "config_hash": key, "params": params, "result": result,
                                 "outputs": files, "seconds": secs, "version": STAGE_VERSION})
        self.records[name] = {"status": "ran", "seconds": secs, "config_hash": key}
        self.log(f"[{self.index}/{self.total}] {name}: done in {secs:.1f}s")
        return result

    def hash_of(self, name: str) -> str | None:
        return self.records.get(name, {}).get("config_hash")


# --------------------------------------------------------------------------- helpers


_ITEM_LINE = re.compile(r"^\s*(?:\d+[.):]|[-*•])\s+(\S.*)$", re.M)


def answer_metrics(text: str) -> dict:
    """Length, a crude AUT fluency proxy (distinct list items, else distinct sentences) and coherence."""
    from .analysis.sweep import text_coherence

    items = len({m.strip().lower() for m in _ITEM_LINE.findall(text or "")})
    sentences = len({" ".join(s.lower().split()) for s in re.split(r"[.!?\n]+", text or "") if s.strip()})
    c = text_coherence(text)
    return {"words": c["words"], "ideas": items if items else sentences, "coherence": c["coherence"],
            "distinct": c["distinct"], "repetition": c["repetition"]}


def _mean(xs) -> float | None:
    a = np.asarray([np.nan if x is None else float(x) for x in xs], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else None


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


class Demo:
    def __init__(self, out: str | os.PathLike, config: DemoConfig, *, model=None, progress: bool = True,
                 force: bool = False, stream=None):
        self.out = Path(out)
        self.cfg = config
        self._model = model
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.out.mkdir(parents=True, exist_ok=True)
        self._logfh = (self.out / "demo.log").open("a", encoding="utf-8")
        n_stages = len(config.personas) + 1 + 6  # extractions + screen trait, blend, sweep, billy, monitor, screen, report
        self.stages = StageRunner(self.out, total=n_stages, log=self.log, force=force)
        self._judges: dict[str, Any] = {}
        self.model_loaded_here = False

    # ---------------------------------------------------------------- plumbing
    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(f"[demo] {msg}", file=self.stream, flush=True)
        self._logfh.write(line + "\n")
        self._logfh.flush()

    @property
    def model(self):
        if self._model is None:
            from .models import load_model

            self.log(f"loading model {self.cfg.model!r} ...")
            t = time.perf_counter()
            self._model = load_model(self.cfg.model)
            self.model_loaded_here = True
            self.log(f"model loaded in {time.perf_counter() - t:.1f}s")
        return self._model

    def rel(self, p: Path | str) -> str:
        return str(Path(p).relative_to(self.out))

    def vector(self, name: str):
        from .vectors import PersonaVector

        return PersonaVector.load(self.out / "vectors" / f"{name}.safetensors")

    def spec(self, name: str):
        from .personas import load_persona

        return load_persona(name)

    def sub_spec(self, name: str):
        spec = self.spec(name)
        return dataclasses.replace(spec, instruction=list(spec.instruction[: self.cfg.n_pairs]),
                                   questions=list(spec.questions[: self.cfg.n_questions]))

    def judge_for(self, name: str):
        """The trait judge of one persona (embedding proxy fitted on its extraction answers), or None."""
        if self.cfg.judge in (None, "", "none"):
            return None
        if name in self._judges:
            return self._judges[name]
        from .judges import make_judge

        judge = make_judge(self.cfg.judge)
        if hasattr(judge, "fit") and not getattr(judge, "is_fitted", True):
            rows = read_jsonl(self.out / "responses" / f"{name}.jsonl")
            judge.fit([r["response"] for r in rows if r["polarity"] == "pos" and r["response"].strip()],
                      [r["response"] for r in rows if r["polarity"] == "neg" and r["response"].strip()])
        self._judges[name] = judge
        return judge

    def trait_scores(self, name: str, qa: list[tuple[str, str]]) -> list:
        judge = self.judge_for(name)
        if judge is None:
            return [None] * len(qa)
        spec = self.spec(name)
        if hasattr(judge, "score_trait_many"):
            return list(judge.score_trait_many(spec, qa))
        return list(judge.score_many([spec.format_eval_prompt(q, a) for q, a in qa]))

    # ---------------------------------------------------------------- stages
    def sweep_layers(self) -> list[int]:
        from .models import n_layers

        total = n_layers(self.model)
        return sorted({min(total - 1, max(0, round(f * (total - 1)))) for f in self.cfg.sweep_layer_fracs})

    def stage_extract(self, name: str) -> dict:
        from .extract import extract

        spec = self.sub_spec(name)
        out = self.out / "vectors" / f"{name}.safetensors"
        resp = self.out / "responses" / f"{name}.jsonl"
        vec, report = extract(self.model, spec, out, responses_path=resp, n_per_question=1,
                              max_new_tokens=self.cfg.extract_tokens, temperature=0.0,
                              batch_size=self.cfg.batch_size, progress=self.progress)
        norms = vec.norms()
        return {"persona": name, "vector": self.rel(out), "responses": self.rel(resp),
                "n_pos": report["n_pos"], "n_neg": report["n_neg"], "n_pairs": len(spec.instruction),
                "n_questions": len(spec.questions), "norm_max": float(norms.max()),
                "norm_argmax": int(norms.argmax())}

    def stage_blend(self) -> dict:
        import torch

        from .blend import blend

        vecs = [self.vector(p) for p in self.cfg.personas]
        merged = blend(vecs, "mean", name="billy_merged")
        path = merged.save(self.out / "vectors" / "billy_merged.safetensors")
        allv = vecs + [merged]
        names = list(self.cfg.personas) + ["billy_merged"]
        units = torch.stack([v.vectors / v.norms().clamp_min(1e-12)[:, None] for v in allv])  # [k, L, d]
        cos = torch.einsum("ald,bld->lab", units, units)  # [L, k, k]
        return {"merged": self.rel(path), "names": names, "cosine": cos.tolist(),
                "merged_norms": merged.norms().tolist(),
                "component_norms": {p: v.norms().tolist() for p, v in zip(self.cfg.personas, vecs)}}

    def stage_sweep(self) -> dict:
        from .analysis.sweep import layer_sweep

        name = self.cfg.personas[0]
        res = layer_sweep(self.model, self.vector(name), self.spec(name), layers=self.sweep_layers(),
                          alphas=self.cfg.sweep_alphas, n_eval=self.cfg.sweep_eval, n_steer=self.cfg.sweep_steer,
                          max_new_tokens=self.cfg.sweep_tokens, judge=self.judge_for(name),
                          out_dir=self.out / "sweep", batch_size=self.cfg.batch_size, progress=self.progress)
        rec = res.recommendation
        best = max((r for r in res.layers if r.get("auroc") is not None), key=lambda r: r["auroc"])
        return {"persona": name, "recommendation": rec, "summary": res.summary_text(),
                "readout_layer": res.config.get("readout_layer"),
                "best_auroc_layer": best["layer"], "best_auroc": best["auroc"],
                "resid_norm": {str(r["layer"]): r["resid_norm"] for r in res.layers},
                "files": ["sweep/sweep.json", "sweep/heldout.scored.jsonl"]}

    def steering_choice(self, sweep: dict) -> tuple[int, float, float, str]:
        """(layer, raw alpha for the merged vector, alpha fraction, how it was chosen)."""
        rec = sweep["recommendation"]
        layer = int(rec["layer"])
        frac = (rec.get("alpha_frac_range") or [None])[0]
        how = "lower end of the sweep's recommended range"
        if frac is None or not frac > 0:
            frac = self.cfg.fallback_alpha_frac
            how = f"fallback fraction {frac} (the sweep found no coherent positive effect)"
        merged = self.vector("billy_merged")
        resid = float(sweep["resid_norm"][str(layer)])
        alpha = frac * resid / max(float(merged.norms()[layer]), 1e-12)
        return layer, float(alpha), float(frac), how

    def stage_billy(self, sweep: dict) -> dict:
        from .analysis.projection import multi_role_system_prompt, projection_analysis, task_prompts

        layer, alpha, frac, how = self.steering_choice(sweep)
        prompts = task_prompts("aut", self.cfg.aut_prompts)
        vecs = [self.vector(p) for p in self.cfg.personas]
        t = time.perf_counter()
        attempts = []
        for attempt in range(2):
            res = projection_analysis(self.model, vecs, prompts, layer=layer, alpha=alpha,
                                      merged=self.vector("billy_merged"),
                                      multi_role_prompt=multi_role_system_prompt(list(self.cfg.personas)),
                                      max_new_tokens=self.cfg.aut_tokens, batch_size=self.cfg.batch_size,
                                      progress=self.progress)
            coh = {c: _mean(answer_metrics(x)["coherence"] for x in res.responses[c]) for c in ("none", "merged")}
            ok = (coh["merged"] or 0.0) >= 0.75 * (coh["none"] or 0.0)
            attempts.append({"alpha": alpha, "alpha_frac": frac, "coherence": coh, "passes_guard": ok})
            if ok or attempt == 1:
                break
            self.log(f"billy: merged steering at α·‖v‖/‖h‖ = {frac:.3g} fails the coherence guard "
                     f"({coh['merged']:.2f} vs {coh['none']:.2f} unsteered); retrying at half strength")
            alpha, frac = alpha / 2, frac / 2
            how += "; halved once because the merged answers failed the coherence guard"
        gen_secs = time.perf_counter() - t
        folder = self.out / "billy"
        res.save(folder)
        questions = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        rows = []
        conditions = ["none"] + list(res.conditions)
        for cond in conditions:
            texts = res.responses[cond]
            scores = {p: self.trait_scores(p, list(zip(questions, texts))) for p in self.cfg.personas}
            for i, (q, t_) in enumerate(zip(questions, texts)):
                m = answer_metrics(t_)
                rows.append({"condition": cond, "prompt_index": i, "question": q, "response": t_, **m,
                             **{f"trait_{p}": scores[p][i] for p in self.cfg.personas}})
        atomic_write_json(folder / "answers.json", rows)
        return {"layer": layer, "alpha": alpha, "alpha_frac": frac, "alpha_choice": how, "attempts": attempts,
                "n_prompts": len(prompts), "conditions": conditions, "seconds_generate_and_capture": gen_secs,
                "files": ["billy/projection.json", "billy/answers.json"]}

    def stage_monitor(self, sweep: dict) -> dict:
        from .analysis.monitor import monitor_scores, pearson
        from .analysis.sweep import auroc, cohens_d

        name = self.cfg.personas[0]
        layer = int(sweep["recommendation"]["layer"])
        held = read_jsonl(self.out / "sweep" / "heldout.scored.jsonl")
        prompts = [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]}]
                   for r in held]
        scores = monitor_scores(self.model, self.vector(name), layer, prompts, batch_size=self.cfg.batch_size)
        is_pos = np.array([r["polarity"] == "pos" for r in held])
        trait = self.trait_scores(name, [(r["question"], r["response"]) for r in held])
        rows = [{"polarity": r["polarity"], "question": r["question"], "monitor_score": float(s),
                 "trait_score": t} for r, s, t in zip(held, scores, trait)]
        folder = self.out / "monitor"
        atomic_write_json(folder / "monitor.json", rows)
        corr = pearson([r["monitor_score"] for r in rows], [r["trait_score"] for r in rows])
        return {"persona": name, "layer": layer, "n": len(rows), "auroc": auroc(scores[is_pos], scores[~is_pos]),
                "cohens_d": cohens_d(scores[is_pos], scores[~is_pos]), "pearson": corr,
                "trait_auroc": auroc([t for t, p in zip(trait, is_pos) if p and t is not None],
                                     [t for t, p in zip(trait, is_pos) if not p and t is not None])
                if any(t is not None for t in trait) else None,
                "files": ["monitor/monitor.json"]}

    def _screen_data(self) -> tuple[Path, str]:
        """The mixed data set: the packaged one when present (first ``screen_rows`` rows, sources
        balanced by taking rows in file order), else pos/neg answers generated here."""
        folder = self.out / "screen"
        path = folder / "data.jsonl"
        src = None
        try:
            from .analysis.screen import screen_demo_path

            p = screen_demo_path()
            src = p if p.exists() else None
        except Exception:
            src = None
        if src is not None:
            rows = list(iter_jsonl(src))
            groups: dict[str, list] = {}
            for r in rows:
                groups.setdefault(str(_row_label(r)), []).append(r)
            picked: list = []
            while len(picked) < min(self.cfg.screen_rows, len(rows)):  # round-robin over labels
                for g in list(groups):
                    if groups[g] and len(picked) < self.cfg.screen_rows:
                        picked.append(groups[g].pop(0))
            atomic_write_json(folder / "data_source.json", {"source": str(src), "n": len(picked)})
            from .io import atomic_write_text

            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))
            return path, f"packaged {src.name} (first {len(picked)} rows, round-robin over labels)"
        # generated: answers to held-out questions under the trait's pos / neg system prompts
        from .generate import generate

        spec = self.spec(self.cfg.screen_trait)
        qs = list(spec.eval_questions or spec.questions)[: max(1, self.cfg.screen_rows // 2)]
        items = []
        for i, q in enumerate(qs):
            pair = spec.instruction[i % len(spec.instruction)]
            items += [(q, pair.pos, self.cfg.screen_trait), (q, pair.neg, "neutral")]
        texts = generate(self.model, [[{"role": "system", "content": s}, {"role": "user", "content": q}]
                                      for q, s, _ in items], max_new_tokens=self.cfg.screen_tokens,
                         batch_size=self.cfg.batch_size, progress=self.progress, desc="screen: data")
        from .io import atomic_write_text

        atomic_write_text(path, "".join(json.dumps({"prompt": q, "response": t, "label": lab}, ensure_ascii=False) + "\n"
                                        for (q, _, lab), t in zip(items, texts)))
        return path, f"generated: {len(qs)} held-out {self.cfg.screen_trait} questions answered under its pos/neg prompts"

    def stage_screen(self, layer: int) -> dict:
        from .analysis.screen import screen_file
        from .analysis.sweep import auroc

        data, source = self._screen_data()
        vec = self.vector(self.cfg.screen_trait)
        out = self.out / "screen" / "screened.jsonl"
        summary = screen_file(self.model, vec, layer, data, out, max_new_tokens=self.cfg.screen_tokens,
                              batch_size=self.cfg.batch_size, top_k=5, figure=False, progress=self.progress)
        rows = read_jsonl(out)
        labels = [str(_row_label(r)) for r in rows]
        by = {}
        for lab, r in zip(labels, rows):
            if r.get("projection_diff") is not None:
                by.setdefault(lab, []).append(r["projection_diff"])
        neutral = next((k for k in by if k.lower() in ("neutral", "base", "normal", "none", "clean")), None)
        aurocs = {k: auroc(v, by[neutral]) for k, v in by.items() if neutral and k != neutral}
        return {"trait": self.cfg.screen_trait, "layer": layer, "source": source, "n": summary.n,
                "n_scored": summary.n_scored, "mean_projection_diff": summary.mean_projection_diff,
                "by_label": {k: {"n": len(v), "mean": float(np.mean(v))} for k, v in by.items()},
                "neutral_label": neutral, "auroc_vs_neutral": aurocs,
                "top": [{"index": t["index"], "projection_diff": t["projection_diff"],
                         "label": labels[t["index"]] if t["index"] < len(labels) else None} for t in summary.top],
                "files": ["screen/screened.jsonl"]}

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            if not self._logfh.closed:
                self._logfh.close()

    def _run(self) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.log(f"persona_lens {__version__} demo -> {self.out} ({'quick' if cfg.quick else 'full'}; model {cfg.model})")
        base = {"model": cfg.model, "batch_size": cfg.batch_size}
        ex = {}
        for p in list(cfg.personas) + [cfg.screen_trait]:
            params = {**base, "persona": p, "n_pairs": cfg.n_pairs, "n_questions": cfg.n_questions,
                      "tokens": cfg.extract_tokens}
            ex[p] = self.stages.run(f"extract_{p}", params, lambda p=p: self.stage_extract(p),
                                    outputs=lambda r: [r["vector"], r["responses"]])
        up = {p: self.stages.hash_of(f"extract_{p}") for p in cfg.personas}
        blend_res = self.stages.run("blend", {"inputs": up}, self.stage_blend, outputs=lambda r: [r["merged"]])
        sweep_params = {**base, "inputs": up[cfg.personas[0]], "layers": cfg.sweep_layer_fracs, "alphas": cfg.sweep_alphas,
                        "n_eval": cfg.sweep_eval, "n_steer": cfg.sweep_steer, "tokens": cfg.sweep_tokens,
                        "judge": cfg.judge}
        sweep = self.stages.run("sweep", sweep_params, self.stage_sweep, outputs=lambda r: r["files"])
        billy_params = {**base, "inputs": [up, self.stages.hash_of("blend"), self.stages.hash_of("sweep")],
                        "n": cfg.aut_prompts, "tokens": cfg.aut_tokens, "fallback": cfg.fallback_alpha_frac,
                        "judge": cfg.judge}
        billy = self.stages.run("billy", billy_params, lambda: self.stage_billy(sweep), outputs=lambda r: r["files"])
        monitor = self.stages.run("monitor", {**base, "inputs": self.stages.hash_of("sweep"), "judge": cfg.judge},
                                  lambda: self.stage_monitor(sweep), outputs=lambda r: r["files"])
        screen_layer = int(sweep["recommendation"]["layer"])
        screen = self.stages.run("screen", {**base, "inputs": [self.stages.hash_of(f"extract_{cfg.screen_trait}"),
                                                               self.stages.hash_of("sweep")],
                                            "rows": cfg.screen_rows, "tokens": cfg.screen_tokens, "layer": screen_layer},
                                 lambda: self.stage_screen(screen_layer), outputs=lambda r: r["files"])
        results = {"extract": ex, "blend": blend_res, "sweep": sweep, "billy": billy, "monitor": monitor,
                   "screen": screen}
        findings = compute_findings(self.out, cfg, results)
        report_params = {"inputs": {k: v["config_hash"] for k, v in self.stages.records.items()},
                         "findings": _hash(findings)}
        self.stages.run("report", report_params, lambda: self.stage_report(results, findings),
                        outputs=lambda r: ["report.html"])
        total = time.perf_counter() - t0
        stages = dict(self.stages.records)
        summary = {
            "persona_lens_version": __version__, "quick": cfg.quick, "config": cfg.to_dict(),
            "out": str(self.out), "report": "report.html", "total_seconds": total,
            "model_loaded": self.model_loaded_here or self._model is not None,
            "stages": stages, "skipped": [k for k, v in stages.items() if v["status"] == "cached"],
            "ran": [k for k, v in stages.items() if v["status"] == "ran"],
            "findings": findings["numbers"], "summary": findings["text"],
        }
        atomic_write_json(self.out / "summary.json", json_safe(summary, str_keys=True))
        self.log(f"finished in {total:.1f}s: {len(summary['ran'])} stage(s) ran, {len(summary['skipped'])} cached; "
                 f"report: {self.out / 'report.html'}")
        return summary

    def stage_report(self, results: dict, findings: dict) -> dict:
        from .report import build_demo_report

        path = build_demo_report(self.out, self.cfg, results, findings)
        return {"report": self.rel(path)}


def _row_label(row: dict):
    for k in ("label", "source", "style", "trait", "kind", "category", "group"):
        if k in row:
            return row[k]
    return "rows"


# --------------------------------------------------------------------------- findings


def compute_findings(out: Path, cfg: DemoConfig, results: dict) -> dict:
    """Numbers and sentences for the report and summary.json, computed from the stage outputs."""
    from .vectors import PersonaVector

    nums: dict = {}
    text: dict[str, list[str]] = {}
    personas = list(cfg.personas)
    nums["model_id"] = PersonaVector.load(out / results["blend"]["merged"]).model_id or cfg.model

    # extraction + blend
    ex = results["extract"]
    nums["extraction"] = {p: {k: ex[p][k] for k in ("n_pos", "n_neg", "norm_max", "norm_argmax")} for p in ex}
    blend = results["blend"]
    sweep = results["sweep"]
    layer = int(sweep["recommendation"]["layer"])
    cos = np.asarray(blend["cosine"])[layer]
    names = blend["names"]
    pair_cos = {f"{names[i]}~{names[j]}": float(cos[i, j]) for i in range(len(personas))
                for j in range(i + 1, len(personas))}
    merged_cos = {p: float(cos[i, len(names) - 1]) for i, p in enumerate(personas)}
    nums["blend"] = {"layer": layer, "pairwise_cosine": pair_cos, "merged_cosine": merged_cos,
                     "merged_norm": blend["merged_norms"][layer],
                     "component_norms": {p: blend["component_norms"][p][layer] for p in personas}}
    lo = min(pair_cos, key=pair_cos.get)
    hi = max(pair_cos, key=pair_cos.get)
    text["extraction"] = [
        f"Extracted {len(personas) + 1} persona vectors from {ex[personas[0]]['n_pos']} positive and "
        f"{ex[personas[0]]['n_neg']} negative answers each ({cfg.n_pairs} instruction pairs × {cfg.n_questions} "
        f"questions, greedy, {cfg.extract_tokens} new tokens).",
        f"At layer {layer} the BILLY personas' vectors are {'similar' if min(pair_cos.values()) > 0.5 else 'partly aligned'}: "
        f"cosine {pair_cos[hi]:.2f} ({hi.replace('~', ' vs ')}) to {pair_cos[lo]:.2f} ({lo.replace('~', ' vs ')}); "
        f"the merged (mean) vector has norm {nums['blend']['merged_norm']:.2f} vs "
        f"{np.mean(list(nums['blend']['component_norms'].values())):.2f} for the components on average, "
        f"and cosine {min(merged_cos.values()):.2f}–{max(merged_cos.values()):.2f} with each of them.",
    ]

    # sweep
    nums["sweep"] = {"recommendation": sweep["recommendation"], "best_auroc_layer": sweep["best_auroc_layer"],
                     "best_auroc": sweep["best_auroc"], "readout_layer": sweep["readout_layer"]}
    text["sweep"] = [sweep["summary"]]

    # BILLY: projection + answers
    billy = results["billy"]
    proj = json.loads((out / "billy" / "projection.json").read_text(encoding="utf-8"))
    answers = json.loads((out / "billy" / "answers.json").read_text(encoding="utf-8"))
    L = proj["layers"]
    later = [i for i, l in enumerate(L) if l >= billy["layer"]]
    mean_rm = np.asarray(proj["mean"]["response_mean"], dtype=float)  # [C, A, L]
    per_cond = {}
    for ci, c in enumerate(proj["conditions"]):
        per_cond[c] = {a: float(np.nanmean(mean_rm[ci, ai, later])) for ai, a in enumerate(proj["axes"])}
    nums["projection"] = {"steer_layer": billy["layer"], "alpha": billy["alpha"], "alpha_frac": billy["alpha_frac"],
                          "mean_over_layers_from_steer_layer": per_cond}
    cond_stats = {}
    for c in billy["conditions"]:
        rows = [r for r in answers if r["condition"] == c]
        cond_stats[c] = {"words": _mean(r["words"] for r in rows), "ideas": _mean(r["ideas"] for r in rows),
                         "coherence": _mean(r["coherence"] for r in rows),
                         **{f"trait_{p}": _mean(r.get(f"trait_{p}") for r in rows) for p in personas}}
        vals = [cond_stats[c][f"trait_{p}"] for p in personas]
        cond_stats[c]["trait_mean"] = _mean(vals) if any(v is not None for v in vals) else None
    nums["billy"] = {"conditions": cond_stats, "layer": billy["layer"], "alpha": billy["alpha"],
                     "alpha_choice": billy["alpha_choice"], "n_prompts": billy["n_prompts"]}
    t = [f"On {billy['n_prompts']} AUT prompts, steering at layer {billy['layer']} with α = {billy['alpha']:.3g} "
         f"(α·‖v_merged‖/‖h‖ = {billy['alpha_frac']:.2f}, {billy['alpha_choice']}):"]
    m, mr = per_cond.get("merged", {}), per_cond.get("multi_role", {})
    if m:
        t.append("Averaged over layers ≥ the steering layer, BILLY merged steering shifts the response activation by "
                 + ", ".join(f"{m[a]:+.2f} along {a}" for a in proj["axes"])
                 + (" and the multi-role prompt by " + ", ".join(f"{mr[a]:+.2f}" for a in proj["axes"]) if mr else "")
                 + f" (Δa·v/‖v‖ relative to no persona).")
        both = [a for a in proj["axes"] if m[a] > 0]
        t.append(f"The merged vector moves the activation positively along {len(both)} of {len(proj['axes'])} persona axes"
                 + (f" ({', '.join(both)})" if both else "") + ".")
    resid = sweep.get("resid_norm", {}).get(str(billy["layer"]))
    if resid:
        eff = {p: billy["alpha"] * blend["component_norms"][p][billy["layer"]] / resid for p in personas}
        nums["billy"]["single_alpha_frac"] = eff
        t.append("The single persona vectors get the same raw α, i.e. α·‖v_i‖/‖h‖ = "
                 + ", ".join(f"{eff[p]:.2f} ({p})" for p in personas)
                 + ": each is longer than the merged vector, so it is steered harder.")
    if cond_stats.get("none", {}).get("trait_mean") is not None:
        order = sorted(cond_stats, key=lambda c: -(cond_stats[c]["trait_mean"] or 0))
        t.append("Mean trait score over the three persona judges (embedding proxy, 0-100): "
                 + "; ".join(f"{c} {cond_stats[c]['trait_mean']:.1f}" for c in order) + ".")
    t.append("Coherence (distinct words × (1 − repetition)): "
             + "; ".join(f"{c} {_fmt(cond_stats[c]['coherence'])}" for c in cond_stats) + ".")
    last = (billy.get("attempts") or [{}])[-1]
    if last and not last.get("passes_guard", True):
        t.append(f"Even at this strength the merged steering lowers coherence below 0.75× the unsteered answers "
                 f"({_fmt(last['coherence']['merged'])} vs {_fmt(last['coherence']['none'])}): this small model "
                 "tolerates little steering on long AUT answers.")
    text["billy"] = t

    # monitor
    mon = results["monitor"]
    nums["monitor"] = {k: mon[k] for k in ("layer", "n", "auroc", "cohens_d", "pearson", "trait_auroc")}
    r = (mon.get("pearson") or {}).get("r")
    text["monitor"] = [
        f"Monitoring at layer {mon['layer']}: the last-prompt projection, computed before any token is generated, "
        f"separates held-out prompts with the positive vs negative {personas[0]} system prompt with AUROC "
        f"{_fmt(mon['auroc'])} (Cohen's d {_fmt(mon['cohens_d'])}, n = {mon['n']})"
        + (f"; it correlates with the trait score of the answers at r = {r:.2f}." if r is not None else ".")]
    if mon.get("trait_auroc") is not None:
        text["monitor"].append(
            f"The trait judge ({cfg.judge}) itself separates the same held-out answers (pos vs neg prompt) with AUROC "
            f"{_fmt(mon['trait_auroc'])}" + (": near chance, so correlations with its scores carry little signal here."
                                             if abs(mon["trait_auroc"] - 0.5) < 0.15 else "."))

    # screen
    sc = results["screen"]
    nums["screen"] = {k: sc[k] for k in ("trait", "layer", "n", "n_scored", "mean_projection_diff", "by_label",
                                          "auroc_vs_neutral", "source")}
    by = sc["by_label"]
    s = [f"Screening {sc['n_scored']} training rows ({sc['source']}) by projection difference along {sc['trait']} "
         f"at layer {sc['layer']}: mean ΔP per label " + ", ".join(f"{k} {v['mean']:+.2f} (n={v['n']})" for k, v in by.items())
         + "."]
    if sc["auroc_vs_neutral"]:
        s.append("AUROC of ΔP against the neutral rows: "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in sc["auroc_vs_neutral"].items()) + ".")
    top_labels = [t_["label"] for t_ in sc["top"]]
    if top_labels:
        s.append(f"The top {len(top_labels)} flagged rows are labelled: {', '.join(map(str, top_labels))}.")
    text["screen"] = s
    return {"numbers": json_safe(nums, str_keys=True), "text": text}


# --------------------------------------------------------------------------- entry point


def run_demo(out: str | os.PathLike, *, quick: bool = False, model: str | Any = "default", judge: str = "embedding",
             threads: int | str | None = "auto", force: bool = False, progress: bool = True, stream=None,
             **overrides) -> dict:
    """Run (or resume) the demo into ``out``; returns the summary (also ``out/summary.json``).

    ``model``: a name for :func:`persona_lens.models.load_model` (loaded only if a stage needs
    it) or an already loaded model. ``threads``: torch CPU threads; ``"auto"`` keeps torch's
    default unless the machine is oversubscribed (1-minute load average above the core count),
    then uses 1 thread (OpenMP spin-waiting makes oversubscribed multi-threading many times
    slower). ``overrides`` replace :class:`DemoConfig` fields.
    """
    set_threads(threads)
    name = model if isinstance(model, str) else getattr(model, "persona_lens_key", None) or "default"
    cfg = (DemoConfig.quick_config if quick else DemoConfig.full)(model=name, judge=judge, **overrides)
    demo = Demo(out, cfg, model=None if isinstance(model, str) else model, progress=progress, force=force,
                stream=stream)
    return demo.run()


def set_threads(threads) -> None:
    import torch

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
