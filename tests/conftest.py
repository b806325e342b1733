import os
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


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

    from persona_lens.extract import extract
    from persona_lens.io import read_jsonl
    from persona_lens.personas import load_persona

    spec = load_persona("humorous")
    sub = dataclasses.replace(spec, instruction=[spec.instruction[i] for i in HUMOROUS_EXTRACT_PAIRS],
                              questions=spec.questions[:10])
    out = tmp_path_factory.mktemp("humorous") / "humorous.safetensors"
    vector, report = extract(default_model, sub, out, max_new_tokens=48, batch_size=20, progress=False)
    return vector, read_jsonl(report["responses"]), spec
