"""The demo's settings: :class:`DemoConfig` (``quick_config()`` for CI, ``full()`` for the main job)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..personas.billy import MERGE_PERSONAS

SCREEN_TRAIT = "humorous"


@dataclass
class DemoConfig:
    """Sizes of every stage (``quick()`` for CI, ``full()`` for the main job)."""

    quick: bool = False
    model: str = "default"
    personas: tuple = MERGE_PERSONAS
    screen_trait: str = SCREEN_TRAIT
    judge: str = "embedding"
    judge_base_url: str | None = None  # for an openai:MODEL judge (None: $OPENAI_BASE_URL or OpenAI)
    judge_api_key_env: str = "OPENAI_API_KEY"
    # who generates (persona_lens.backends: hf | vllm); capture stays on the model's HF hooks. Every
    # demo generation is greedy, token-identical on both backends in fp32, so no stage hash holds it
    # (as greedy rows of the resume stores share fingerprints across backends).
    backend: str = "hf"
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
    def full(cls, **kw) -> DemoConfig:
        return cls(**kw)

    @classmethod
    def quick_config(cls, **kw) -> DemoConfig:
        base: dict[str, Any] = dict(quick=True, n_pairs=2, n_questions=3, extract_tokens=32, sweep_layer_fracs=(0.28, 0.48, 0.69),
                    sweep_alphas=(0.0, 0.2, 0.4), sweep_eval=4, sweep_steer=2, sweep_tokens=32, aut_prompts=2,
                    aut_tokens=40, screen_rows=12, screen_tokens=32)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
