"""The ``vllm`` generation backend end to end (marker ``vllm``, run in ``.venv-vllm``; see
tests/test_vllm_engine.py): ``extract`` and the ``steer`` / ``extract`` commands give the same
output with ``--backend vllm`` as with ``--backend hf`` (fp32, greedy) on the embedded model.

One engine boots for the module (``persona_lens.backends.make_backend``, the CLI's factory); the
commands get that engine after checking that the CLI asked for the same one (model, dtype).

Run: ``OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm
tests/test_vllm_backends.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (scripts/setup_vllm.sh)"),
]

from click.testing import CliRunner  # noqa: E402

from persona_lens import testing  # noqa: E402
from persona_lens.backends import make_backend  # noqa: E402
from persona_lens.cli import cli  # noqa: E402
from persona_lens.cli import options as cli_options  # noqa: E402
from persona_lens.extraction import extract  # noqa: E402
from persona_lens.models import load_model  # noqa: E402
from persona_lens.personas import load_persona  # noqa: E402
from persona_lens.vectors import PersonaVector  # noqa: E402

TOKENS = 8


@pytest.fixture(scope="module")
def hf():
    return load_model("default", dtype=torch.float32)


@pytest.fixture(scope="module")
def engine(hf):
    backend = make_backend("vllm", hf, model_name="default", max_model_len=512)
    assert backend.dtype == "float32"  # the HF model's dtype: token-identical greedy
    _ = backend.llm  # boot once for the module
    yield backend
    backend.close()


@pytest.fixture
def cli_engine(engine, monkeypatch):
    """The CLI's ``--backend vllm`` gets the module's engine once it asked for the same one."""
    asked: list[str] = []

    def shared(name, model, *, model_name):
        fresh = make_backend(name, model, model_name=model_name)  # not booted: costs nothing
        assert (fresh.name, fresh.model_id, fresh.dtype) == (engine.name, engine.model_id, engine.dtype)
        asked.append(name)
        return engine

    monkeypatch.setattr(cli_options, "make_backend", lambda name, model, *, model_name: (
        shared(name, model, model_name=model_name) if name == "vllm" else make_backend(name, model, model_name=model_name)))
    return asked


def tiny_spec():
    spec = load_persona("humorous")
    return dataclasses.replace(spec, instruction=list(spec.instruction[:1]), questions=list(spec.questions[:2]))


def test_extract_on_vllm_equals_hf(hf, engine, tmp_path):
    kw = dict(max_new_tokens=TOKENS, progress=False)
    v_hf, _ = extract(hf, tiny_spec(), tmp_path / "hf.safetensors", **kw)
    v_vllm, _ = extract(hf, tiny_spec(), tmp_path / "vllm.safetensors", backend=engine, **kw)
    rows = [(tmp_path / f"{n}.responses.jsonl").read_text().splitlines() for n in ("hf", "vllm")]
    assert rows[0] == rows[1] and len(rows[0]) == 4  # the same responses, fingerprints included
    assert torch.equal(v_vllm.vectors, v_hf.vectors)  # capture is HF's in both


def test_extract_command_backend_vllm_equals_hf(cli_engine, tmp_path):
    spec_path = tiny_spec().save(tmp_path / "tiny.json")
    outs = []
    for name in ("hf", "vllm"):
        result = CliRunner().invoke(cli, ["extract", str(spec_path), "--out", str(tmp_path / f"{name}.safetensors"),
                                          "--max-new-tokens", str(TOKENS), "--backend", name])
        assert result.exit_code == 0, result.output
        outs.append((tmp_path / f"{name}.responses.jsonl").read_text())
    assert cli_engine == ["vllm"] and outs[0] == outs[1]
    vectors = [PersonaVector.load(tmp_path / f"{n}.safetensors").vectors for n in ("hf", "vllm")]
    assert torch.equal(*vectors)


def test_steer_command_backend_vllm_positions_response_equals_hf(hf, cli_engine, tmp_path):
    vector = testing.tiny_vector(hf)  # unit directions: alpha is the norm added
    vector.save(tmp_path / "v.safetensors")
    prompts = ["What is the capital of France?", "Tell me a joke about computers.", "Hi!"]
    args = ["steer", *prompts, "--vector", str(tmp_path / "v.safetensors"), "--layer", "10", "--layer", "14",
            "--alpha", "12", "--positions", "response", "--max-new-tokens", "16"]
    outs = {}
    for name in ("hf", "vllm"):
        result = CliRunner().invoke(cli, [*args, "--backend", name])
        assert result.exit_code == 0, result.output
        outs[name] = [json.loads(line) for line in result.stdout.splitlines()]
    assert cli_engine == ["vllm"] and len(outs["hf"]) == 3
    assert outs["vllm"] == outs["hf"]
    plain = CliRunner().invoke(cli, ["generate", *prompts, "--max-new-tokens", "16", "--backend", "vllm"])
    assert plain.exit_code == 0, plain.output
    assert [json.loads(line) for line in plain.stdout.splitlines()] != outs["hf"]  # the steering is visible
