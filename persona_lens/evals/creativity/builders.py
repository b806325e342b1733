"""The compared methods built from a :class:`CreativityConfig`: persona vectors (files, a
folder of them, or built-in personas extracted on the fly and cached), BILLY's merged vector,
the resolved steering layer and alpha."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from ...blend import blend
from ...extraction import extract_from_rows
from ...generation import generate_contrastive
from ...interop import load_vector
from ...models import model_id, n_layers
from ...personas import load_persona
from ...personas.billy import BILLY_PERSONAS, PAPER_ALPHA, multi_role_system_prompt, paper_layer
from ...runs.fingerprint import model_fingerprint
from ...steering import Steering
from ...vectors import PersonaVector
from .config import CreativityConfig, read_sweep
from .methods import Discussion, Method, SingleCall

log = logging.getLogger(__name__)

MERGED = "__merged__"


def check_method_name(name: str) -> None:
    if name in ("sa", "sa_t1", "mrp", "discussion", "billy") or re.fullmatch(r"billy_k\d+", name):
        return
    if name.startswith("single:") and name.split(":", 1)[1]:
        return
    raise ValueError(f"unknown method {name!r}; choose from sa, sa_t1, mrp, discussion, billy, single:NAME")


class MethodBuilder:
    """Builds each method of a run; vectors are loaded or extracted once (extractions are cached
    under ``out/vectors/<model id>/<weights hash>``)."""

    def __init__(self, model, config: CreativityConfig, out: Path, *, progress: bool = True):
        self.model, self.cfg, self.out, self.progress = model, config, Path(out), progress
        self._vectors: dict[str, PersonaVector] = {}
        self.steer_settings: dict | None = None

    def vector_cache_dir(self) -> Path:
        """``out/vectors/<model id>/<weights hash>``: a vector extracted from other weights under
        the same model name is never reused."""
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id(self.model))
        return self.out / "vectors" / tag / model_fingerprint(self.model).rsplit("@", 1)[1]

    def persona_vector(self, name_or_path: str) -> PersonaVector:
        """A vector file, or a built-in persona extracted on the fly (cached under ``out/vectors``)."""
        if name_or_path in self._vectors:
            return self._vectors[name_or_path]
        path = Path(name_or_path)
        in_dir = Path(self.cfg.vector_dir) / f"{name_or_path}.safetensors" if self.cfg.vector_dir else None
        if path.suffix in (".safetensors", ".pt", ".gguf") or path.exists():
            vec = load_vector(path)
        elif in_dir is not None and in_dir.exists():
            vec = PersonaVector.load(in_dir)
        else:
            vec = self._extract_builtin(name_or_path)
        vec.check_model(self.model)
        self._vectors[name_or_path] = vec
        return vec

    def _extract_builtin(self, name: str) -> PersonaVector:
        spec = load_persona(name)
        nq, tok = self.cfg.extract_questions, self.cfg.extract_max_tokens
        folder = self.vector_cache_dir()
        path = folder / f"{spec.name}-q{nq}-t{tok}.safetensors"
        if path.exists():
            return PersonaVector.load(path)
        log.info("extracting %s (%d questions, %d tokens) into %s", spec.name, nq, tok, path)
        batch = max(self.cfg.batch_size, 10)
        rows = generate_contrastive(self.model, spec, folder / f"{spec.name}-q{nq}-t{tok}.responses.jsonl",
                                    questions=list(spec.questions)[:nq], max_new_tokens=tok, temperature=0.0,
                                    seed=0, batch_size=batch, progress=self.progress)
        rows = [r for r in rows if r["response"].strip()]
        vec = extract_from_rows(self.model, rows, persona=spec.name, batch_size=batch, progress=self.progress,
                                extra_metadata={"n_questions": nq, "max_new_tokens": tok, "source": "creativity eval"})
        vec.save(path)
        return vec

    def blended(self, names: Sequence[str], label: str) -> PersonaVector:
        vecs = [self.persona_vector(n) for n in names]
        return blend(vecs, "mean", name=label) if len(vecs) > 1 else vecs[0]

    def merged_vector(self) -> PersonaVector:
        if MERGED not in self._vectors:
            cfg = self.cfg
            if cfg.merged:
                vec = self.persona_vector(cfg.merged)
            elif cfg.vectors:
                vec = self.blended(list(cfg.vectors), "merged")
            else:
                vec = self.blended(list(cfg.personas), "merged(" + "+".join(cfg.personas) + ")")
            self._vectors[MERGED] = vec
        return self._vectors[MERGED]

    def steering_settings(self) -> dict:
        """BILLY's layer and alpha: the config's, else the sweep's recommendation, else BILLY's
        relative depth and alpha (with a warning: not calibrated for this model)."""
        if self.steer_settings is None:
            layer, alpha, source = self.cfg.layer, self.cfg.alpha, "flags"
            if (layer is None or alpha is None) and self.cfg.sweep:
                s_layer, s_alpha = read_sweep(self.cfg.sweep)
                layer = s_layer if layer is None else layer
                alpha = s_alpha if alpha is None else alpha
                source = f"sweep {self.cfg.sweep}"
            if layer is None or alpha is None:
                layer = paper_layer(n_layers(self.model)) if layer is None else layer
                alpha = PAPER_ALPHA if alpha is None else alpha
                source = "default (BILLY's relative depth and alpha; not calibrated for this model)"
                log.warning("billy: no --layer/--alpha/--sweep; using layer %d, alpha %.2f (%s)", layer, alpha, source)
            self.steer_settings = {"layer": int(layer), "alpha": float(alpha), "positions": self.cfg.positions,
                                   "source": source}
        return self.steer_settings

    def build(self, name: str) -> Method:
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
        n_vec: int | None
        if name == "billy":
            vec = self.merged_vector()
            n_vec = len(cfg.vectors) if cfg.vectors else (None if cfg.merged else len(cfg.personas))
            components = list(cfg.vectors) if cfg.vectors else [cfg.merged] if cfg.merged else list(cfg.personas)
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
