"""Generation backends (persona_lens.backends): every generating path routes its generations
through the backend it is given, and keeps its outputs and resume fingerprints.

A stand-in backend (HF generation on the same model, recording each call) stands for vLLM here;
the real engine is checked in tests/test_vllm_backends.py (marker ``vllm``)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from click.testing import CliRunner

from persona_lens import testing
from persona_lens.analysis import screen, sweep
from persona_lens.analysis.sweep import SweepConfig
from persona_lens.backends import BACKENDS, HFBackend, make_backend
from persona_lens.cli import cli
from persona_lens.cli import options as cli_options
from persona_lens.errors import ModelMismatchError
from persona_lens.evals.creativity import load_tasks
from persona_lens.evals.creativity.methods import Discussion, SingleCall
from persona_lens.extraction import extract
from persona_lens.interop.vllm import VLLMBackend
from persona_lens.models import model_id
from persona_lens.personas import load_persona
from persona_lens.steering import Steering

gen_module = importlib.import_module("persona_lens.generation")  # the package re-exports a function of that name


class StandIn:
    """HF generation on ``model`` under another name, recording the prompts of each call."""

    name = "stand-in"

    def __init__(self, model, served_id: str | None = None):
        self.model = model
        self.model_id = served_id or model_id(model)
        self.calls: list[dict] = []

    def generate_ids(self, prompts, **kwargs):
        self.calls.append({"prompts": list(prompts), **kwargs})
        return HFBackend(self.model).generate_ids(prompts, **kwargs)


@pytest.fixture
def no_hf_generation(monkeypatch):
    """Fails any generation that does not go through the backend."""
    real = gen_module.generate_ids

    def refuse(*args, **kwargs):
        raise AssertionError("generated on the HF path although a backend was given")

    monkeypatch.setattr(gen_module, "generate_ids", refuse)
    return real


def tiny_spec():
    spec = load_persona("humorous")
    return dataclasses.replace(spec, instruction=list(spec.instruction[:1]), questions=list(spec.questions[:2]))


def test_hf_backend_is_generate_ids(tiny_model):
    prompts = ["Hi!", "What is 2 + 2?"]
    steering = Steering({1: 0.01 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0))}, "response")
    kw = dict(max_new_tokens=6, temperature=0.0, top_p=1.0, seed=None, batch_size=2, steering=steering, progress=False)
    assert HFBackend(tiny_model).generate_ids(prompts, **kw) == gen_module.generate_ids(tiny_model, prompts, **kw)
    assert HFBackend(tiny_model).model_id == model_id(tiny_model)


def test_make_backend_registry(tiny_model):
    assert sorted(BACKENDS) == ["hf", "vllm"]
    assert isinstance(make_backend("hf", tiny_model, model_name="x"), HFBackend)
    with pytest.raises(ValueError, match="unknown generation backend 'sglang'"):
        make_backend("sglang", tiny_model, model_name="x")
    with pytest.raises(TypeError, match="no engine options"):
        make_backend("hf", tiny_model, model_name="x", tensor_parallel_size=2)


def test_make_backend_vllm_serves_the_model_checkpoint_in_its_dtype(tiny_model):
    engine = make_backend("vllm", tiny_model, model_name="default", max_model_len=256)
    assert isinstance(engine, VLLMBackend) and not engine.booted  # boots on first use only
    assert engine.dtype == "float32" and engine.engine_kwargs == {"max_model_len": 256}
    assert engine.name == "vllm" and engine.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_contrastive_routes_through_backend_with_same_rows_and_fingerprints(tiny_model, tmp_path, no_hf_generation):
    settings = dict(max_new_tokens=5, temperature=0.0, seed=0, batch_size=2, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf_rows = gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "hf.jsonl", **settings)
    backend = StandIn(tiny_model)
    rows = gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "b.jsonl", backend=backend, **settings)
    assert len(backend.calls) == 2 and all(len(c["prompts"]) == 2 for c in backend.calls)
    assert rows == hf_rows  # same responses and the same fingerprints (greedy rows do not depend on the backend)
    # so a greedy run on the stand-in resumes from the HF run's rows without generating
    again = StandIn(tiny_model)
    assert gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "hf.jsonl", backend=again,
                                           **settings) == hf_rows
    assert again.calls == []


def test_contrastive_sampled_rows_record_their_backend(tiny_model, tmp_path, no_hf_generation):
    settings = dict(max_new_tokens=5, temperature=1.0, seed=3, batch_size=2, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf_rows = gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "r.jsonl", **settings)
    backend = StandIn(tiny_model)
    rows = gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "r.jsonl", backend=backend, **settings)
    assert len(backend.calls) == 2  # HF-drawn samples are not reused for another backend's draws
    assert [r["response"] for r in rows] == [r["response"] for r in hf_rows]  # the stand-in draws as HF does
    assert {r["fingerprint"] for r in rows}.isdisjoint(r["fingerprint"] for r in hf_rows)


def test_backend_of_another_checkpoint_is_refused(tiny_model, tmp_path):
    with pytest.raises(ModelMismatchError, match="serves 'org/other'"):
        gen_module.generate_contrastive(tiny_model, tiny_spec(), tmp_path / "r.jsonl", max_new_tokens=4,
                                        progress=False, backend=StandIn(tiny_model, "org/other"))
    assert not (tmp_path / "r.jsonl").exists()


def test_extract_routes_through_backend_and_gives_the_same_vector(tiny_model, tmp_path, no_hf_generation):
    settings = dict(max_new_tokens=6, batch_size=4, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        v_hf, _ = extract(tiny_model, tiny_spec(), tmp_path / "hf.safetensors", **settings)
    backend = StandIn(tiny_model)
    v, report = extract(tiny_model, tiny_spec(), tmp_path / "b.safetensors", backend=backend, **settings)
    assert len(backend.calls) == 1 and len(backend.calls[0]["prompts"]) == 4  # 1 pair x 2 questions x pos/neg
    assert torch.equal(v.vectors, v_hf.vectors) and report["n_rows"] == 4


def test_sweep_routes_held_out_and_steered_generation_through_backend(tiny_model, tmp_path, no_hf_generation):
    config = SweepConfig(layers=(1,), alphas=(0.0, 0.5), n_eval=2, n_steer=1, max_new_tokens=4, batch_size=8)
    spec, vector = load_persona("creative_professional"), testing.tiny_vector(tiny_model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf = sweep.run(tiny_model, config, vector=vector, spec=spec, resume_dir=tmp_path / "hf", progress=False)
    backend = StandIn(tiny_model)
    res = sweep.run(tiny_model, config, vector=vector, spec=spec, resume_dir=tmp_path / "b", progress=False,
                    backend=backend)
    assert [len(c["prompts"]) for c in backend.calls] == [4, 2]  # held-out pos/neg; base + steered
    steered = backend.calls[1]["steering"]
    assert steered is not None and steered.batch_size == 2  # the steered call carries its per-row steering
    assert res.heldout == hf.heldout and res.generations == hf.generations and res.steering == hf.steering
    again = StandIn(tiny_model)  # greedy rows of the HF run are reused by a run on another backend
    sweep.run(tiny_model, config, vector=vector, spec=spec, resume_dir=tmp_path / "hf", progress=False, backend=again)
    assert again.calls == []


def test_cli_backend_option_routes_generation(tiny_model, monkeypatch):
    made: list[StandIn] = []

    def fake_make_backend(name, model, *, model_name):
        assert (name, model_name) == ("vllm", "tiny")
        made.append(StandIn(model))
        return made[-1]

    monkeypatch.setattr(cli_options, "make_backend", fake_make_backend)
    find_spec = cli_options.importlib.util.find_spec
    monkeypatch.setattr(cli_options.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else find_spec(name, *a))  # "installed"
    monkeypatch.setattr(cli_options.models, "load_model", lambda *a, **k: tiny_model)
    result = CliRunner().invoke(cli, ["generate", "--model", "tiny", "--backend", "vllm", "--max-new-tokens", "4",
                                      "Hi!", "Bye"])
    assert result.exit_code == 0, result.output
    assert len(made) == 1 and made[0].calls[0]["prompts"] == [[{"role": "user", "content": "Hi!"}],
                                                               [{"role": "user", "content": "Bye"}]]
    want = gen_module.generate(tiny_model, ["Hi!", "Bye"], max_new_tokens=4, progress=False)
    assert [json.loads(line)["completion"] for line in result.output.splitlines()] == want


def test_cli_backend_vllm_without_vllm_is_a_usage_error(monkeypatch):
    find_spec = cli_options.importlib.util.find_spec
    monkeypatch.setattr(cli_options.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    result = CliRunner().invoke(cli, ["steer", "--backend", "vllm", "--vector", __file__, "--layer", "1",
                                      "--alpha", "1", "Hi"])
    assert result.exit_code == 2
    assert "vLLM is not installed" in result.output and "scripts/setup_vllm.sh" in result.output


@pytest.mark.parametrize("command", ["extract", "steer", "generate", "sweep", "screen", "serve", "eval creativity"])
def test_generating_commands_take_backend(command):
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0 and "--backend [hf|vllm]" in result.output


def test_screen_base_responses_route_through_backend(tiny_model, tmp_path, no_hf_generation):
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vector = testing.tiny_vector(tiny_model)

    def config(name):
        return screen.ScreenConfig(data=str(data), out=str(tmp_path / f"{name}.jsonl"), layer=1, max_new_tokens=4)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        screen.run(tiny_model, config("hf"), vector=vector, progress=False)
    backend = StandIn(tiny_model)
    screen.run(tiny_model, config("b"), vector=vector, progress=False, backend=backend)
    assert sum(len(c["prompts"]) for c in backend.calls) == 3
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "hf.jsonl").read_text()
    assert (tmp_path / "b.base_cache.jsonl").read_text() == (tmp_path / "hf.base_cache.jsonl").read_text()


def test_creativity_methods_route_through_backend(tiny_model, no_hf_generation):
    items = load_tasks(["aut"], n=2)["aut"]
    steering = Steering({1: 0.01 * torch.ones(64)}, "response")
    for method in (SingleCall("sa_t", steering=steering), Discussion(roles=["futurist"], rounds=1)):
        backend = StandIn(tiny_model)
        outs = method.run(tiny_model, items, seed=3, max_new_tokens=4, batch_size=2, backend=backend)
        assert len(outs) == 2 and sum(len(c["prompts"]) for c in backend.calls) == 2
        assert backend.calls[0]["steering"] is getattr(method, "steering", None)
