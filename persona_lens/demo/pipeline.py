"""The demo's stages (:class:`Demo`), run and cached by :class:`persona_lens.runs.stages.StageRunner`;
each calls an analysis through its config (see the package docstring)."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..analysis import projection, screen, sweep
from ..analysis.monitor import monitor_scores
from ..analysis.projection import multi_role_system_prompt, task_prompts
from ..backends import GenerationBackend, make_backend
from ..blend import blend
from ..extraction import extract
from ..generation import backend_generation, generate_contrastive
from ..io import atomic_write_json, json_safe, read_jsonl
from ..judges import make_judge, needs_fit
from ..models import load_model, n_layers
from ..personas import load_persona
from ..runs.fingerprint import content_hash
from ..runs.stages import StageRunner
from ..stats import auroc, cohens_d, pearson
from ..vectors import PersonaVector
from ..viz import sweep as sweep_viz
from .config import DemoConfig
from .findings import _mean, answer_metrics, compute_findings, row_label
from .report import build_demo_report
from .screen_data import screen_data


class Demo:
    def __init__(self, out: str | os.PathLike, config: DemoConfig, *, model=None,
                 backend: GenerationBackend | None = None, progress: bool = True, force: bool = False, stream=None):
        self.out = Path(out)
        self.cfg = config
        self._model = model
        self._backend = backend
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
            self.log(f"loading model {self.cfg.model!r} ...")
            t = time.perf_counter()
            self._model = load_model(self.cfg.model)
            self.model_loaded_here = True
            self.log(f"model loaded in {time.perf_counter() - t:.1f}s")
        return self._model

    @property
    def backend(self) -> GenerationBackend:
        """Who generates: the backend given, else ``config.backend`` built on :attr:`model` (vLLM
        boots on first use)."""
        if self._backend is None:
            self._backend = make_backend(self.cfg.backend, self.model, model_name=self.cfg.model)
        return self._backend

    def rel(self, p: Path | str) -> str:
        return str(Path(p).relative_to(self.out))

    def vector(self, name: str):
        return PersonaVector.load(self.out / "vectors" / f"{name}.safetensors")

    def spec(self, name: str):
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
        api = {"base_url": self.cfg.judge_base_url, "api_key_env": self.cfg.judge_api_key_env}
        judge = make_judge(self.cfg.judge, **(api if self.cfg.judge.startswith("openai:") else {}))
        if needs_fit(judge):
            rows = [r for r in self.extraction_rows(name) if r["response"].strip()]
            judge.fit([r["response"] for r in rows], [int(r["polarity"] == "pos") for r in rows])
        self._judges[name] = judge
        return judge

    def trait_scores(self, name: str, qa: list[tuple[str, str]]) -> list:
        judge = self.judge_for(name)
        if judge is None:
            return [None] * len(qa)
        return list(judge.score_trait_many(self.spec(name), qa))

    # ---------------------------------------------------------------- stages
    def sweep_layers(self) -> list[int]:
        total = n_layers(self.model)
        return sorted({min(total - 1, max(0, round(f * (total - 1)))) for f in self.cfg.sweep_layer_fracs})

    def extract_settings(self) -> dict:
        return {"n_per_question": 1, "max_new_tokens": self.cfg.extract_tokens, "temperature": 0.0,
                "batch_size": self.cfg.batch_size}

    def extraction_rows(self, name: str) -> list[dict]:
        """The rows of this run's extraction of ``name`` (a resume: nothing is generated), not the
        stale rows an earlier run with other settings left in the same file."""
        return generate_contrastive(self.model, self.sub_spec(name), self.out / "responses" / f"{name}.jsonl",
                                    progress=False, backend=self.backend, **self.extract_settings())

    def stage_extract(self, name: str) -> dict:
        spec = self.sub_spec(name)
        out = self.out / "vectors" / f"{name}.safetensors"
        resp = self.out / "responses" / f"{name}.jsonl"
        vec, report = extract(self.model, spec, out, responses_path=resp, progress=self.progress,
                              backend=self.backend, **self.extract_settings())
        norms = vec.norms()
        return {"persona": name, "vector": self.rel(out), "responses": self.rel(resp),
                "n_pos": report["n_pos"], "n_neg": report["n_neg"], "n_pairs": len(spec.instruction),
                "n_questions": len(spec.questions), "norm_max": float(norms.max()),
                "norm_argmax": int(norms.argmax())}

    def stage_blend(self) -> dict:
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
        name = self.cfg.personas[0]
        config = sweep.SweepConfig(layers=tuple(self.sweep_layers()), alphas=tuple(self.cfg.sweep_alphas),
                                   n_eval=self.cfg.sweep_eval, n_steer=self.cfg.sweep_steer,
                                   max_new_tokens=self.cfg.sweep_tokens, batch_size=self.cfg.batch_size)
        res = sweep.run(self.model, config, vector=self.vector(name), spec=self.spec(name),
                        judge=self.judge_for(name), resume_dir=self.out / "sweep", progress=self.progress,
                        backend=self.backend)
        res.save(self.out / "sweep")
        sweep_viz.save_figures(res, self.out / "sweep")
        rec = res.recommendation
        best = max((r for r in res.layers if r.get("auroc") is not None), key=lambda r: r["auroc"])
        return {"persona": name, "recommendation": rec, "summary": res.summary_text(),
                "readout_layer": res.config.readout_layer,
                "best_auroc_layer": best["layer"], "best_auroc": best["auroc"],
                "resid_norm": {str(r["layer"]): r["resid_norm"] for r in res.layers},
                "files": ["sweep/result.json", "sweep/heldout.scored.jsonl"]}

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
        layer, alpha, frac, how = self.steering_choice(sweep)
        prompts = task_prompts("aut", self.cfg.aut_prompts)
        vecs = [self.vector(p) for p in self.cfg.personas]
        t = time.perf_counter()
        attempts = []
        for attempt in range(2):
            config = projection.ProjectionConfig(
                layer=layer, alpha=alpha, multi_role_prompt=multi_role_system_prompt(list(self.cfg.personas)),
                max_new_tokens=self.cfg.aut_tokens, batch_size=self.cfg.batch_size)
            res = projection.run(self.model, config, vectors=vecs, prompts=prompts, merged=self.vector("billy_merged"),
                                 progress=self.progress, backend=self.backend)
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
                "files": ["billy/result.json", "billy/answers.json"]}

    def stage_monitor(self, sweep: dict) -> dict:
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

    def stage_screen(self, layer: int) -> dict:
        data, source = screen_data(self.out / "screen", self.cfg,
                                   lambda: backend_generation(self.model, self.backend)[1], progress=self.progress)
        vec = self.vector(self.cfg.screen_trait)
        out = self.out / "screen" / "screened.jsonl"
        config = screen.ScreenConfig(data=str(data), out=str(out), layer=layer, top_k=5,
                                     max_new_tokens=self.cfg.screen_tokens, batch_size=self.cfg.batch_size)
        summary = screen.run(self.model, config, vector=vec, progress=self.progress, backend=self.backend)
        summary.save(self.out / "screen")
        rows = read_jsonl(out)
        labels = [str(row_label(r)) for r in rows]
        by: dict[str, list[float]] = {}
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
        # Not cfg.backend: every stage decodes greedily, the same on every backend (see DemoConfig.backend).
        base = {"model": cfg.model, "batch_size": cfg.batch_size}
        run = self.stages.run
        ex = {}
        for p in list(cfg.personas) + [cfg.screen_trait]:
            params = {**base, "persona": p, "spec": self.sub_spec(p).to_dict(), "n_pairs": cfg.n_pairs,
                      "n_questions": cfg.n_questions, "tokens": cfg.extract_tokens}
            ex[p] = run(f"extract_{p}", params, functools.partial(self.stage_extract, p),
                        outputs=lambda r: [r["vector"], r["responses"]])
        first = cfg.personas[0]
        vectors = [f"vectors/{p}.safetensors" for p in cfg.personas]
        responses = [f"responses/{p}.jsonl" for p in cfg.personas]  # the trait judges are fitted on them
        blend_res = run("blend", {}, self.stage_blend, inputs=vectors, outputs=lambda r: [r["merged"]])
        sweep_params = {**base, "layers": cfg.sweep_layer_fracs, "alphas": cfg.sweep_alphas, "n_eval": cfg.sweep_eval,
                        "n_steer": cfg.sweep_steer, "tokens": cfg.sweep_tokens, "judge": cfg.judge}
        sweep = run("sweep", sweep_params, self.stage_sweep, inputs=self.stages.outputs_of(f"extract_{first}"),
                    outputs=lambda r: r["files"])
        billy_params = {**base, "n": cfg.aut_prompts, "tokens": cfg.aut_tokens, "fallback": cfg.fallback_alpha_frac,
                        "judge": cfg.judge}
        billy = run("billy", billy_params, lambda: self.stage_billy(sweep),
                    inputs=vectors + responses + self.stages.outputs_of("blend", "sweep"), outputs=lambda r: r["files"])
        monitor = run("monitor", {**base, "judge": cfg.judge}, lambda: self.stage_monitor(sweep),
                      inputs=self.stages.outputs_of(f"extract_{first}", "sweep"), outputs=lambda r: r["files"])
        screen_layer = int(sweep["recommendation"]["layer"])
        screen = run("screen", {**base, "rows": cfg.screen_rows, "tokens": cfg.screen_tokens, "layer": screen_layer},
                     lambda: self.stage_screen(screen_layer), inputs=[f"vectors/{cfg.screen_trait}.safetensors"],
                     outputs=lambda r: r["files"])
        results = {"extract": ex, "blend": blend_res, "sweep": sweep, "billy": billy, "monitor": monitor,
                   "screen": screen}
        findings = compute_findings(self.out, cfg, results)
        run("report", {"findings": content_hash(findings)}, lambda: self.stage_report(results, findings),
            inputs=self.stages.outputs_of(*self.stages.records), outputs=lambda r: ["report.html"])
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
        path = build_demo_report(self.out, self.cfg, results, findings)
        return {"report": self.rel(path)}
