"""Shared fixtures, and the two test tiers.

Fast tier, ``pytest -m "not slow"``: no real model; engine behaviour is checked on tiny
random-weight models (``tiny_model``, ``tiny_gemma``: :mod:`persona_lens.testing`). Slow tier,
``pytest -m slow``: everything that loads SmolLM2 or Gemma-3-270M. A test that uses a real-model
fixture (``REAL_MODEL_FIXTURES``) is marked ``slow`` here; one that loads a model itself
(``load_model``, the CLI in a subprocess) carries ``@pytest.mark.slow`` in its module.
Plain ``pytest`` runs both.
"""

from pathlib import Path

import pytest

from persona_lens import testing

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REAL_MODEL_FIXTURES = frozenset({"default_model", "gemma_model", "humorous_extraction"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model():
    """Random-weight Llama (3 layers, d_model 64) with a ChatML template, like SmolLM2."""
    return testing.tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gemma():
    """Random-weight Gemma 3 (3 layers, sliding + full attention) without a chat template, like
    Gemma-3-270M."""
    return testing.tiny_model("gemma3", chat_template=False)


@pytest.fixture(scope="session")
def default_model():
    from persona_lens.models import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def gemma_model():
    from persona_lens.models import load_model

    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.exists():
        pytest.skip("../shared/reference is not present")
    return REFERENCE


# Analysis tests (monitor, screen, shift, projection) share one humorous vector, extracted once
# per session from the built-in spec with a reduced set: instruction pairs 0-1 and the first 10
# extraction questions (40 greedy responses of <= 48 tokens). Pairs 2-4 and eval_questions stay
# held out for the monitoring/screening checks.
HUMOROUS_LAYER = 16  # a middle layer of the 30-layer SmolLM2 (chosen by a quick AUROC scan)
HUMOROUS_EXTRACT_PAIRS = (0, 1)


@pytest.fixture(scope="session")
def humorous_extraction(default_model, tmp_path_factory):
    """``(vector, rows, spec)``: the session humorous PersonaVector, its contrastive rows, the full spec."""
    import dataclasses

    from persona_lens.extraction import extract
    from persona_lens.io import read_jsonl
    from persona_lens.personas import load_persona

    spec = load_persona("humorous")
    sub = dataclasses.replace(spec, instruction=[spec.instruction[i] for i in HUMOROUS_EXTRACT_PAIRS],
                              questions=spec.questions[:10])
    out = tmp_path_factory.mktemp("humorous") / "humorous.safetensors"
    vector, report = extract(default_model, sub, out, max_new_tokens=48, batch_size=20, progress=False)
    return vector, read_jsonl(report["responses"]), spec
