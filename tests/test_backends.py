"""Generation backends (persona_lens.backends): every generating path routes its generations
through the backend it is given, and keeps its outputs and resume fingerprints.

A stand-in backend (HF generation on the same model, recording each call) stands for vLLM here;
the real engine is checked in tests/test_vllm_backends.py (marker ``vllm``)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from persona_lens import testing
from persona_lens.analysis import monitor, projection, screen, shift, sweep
from persona_lens.analysis.monitor import MonitorConfig
from persona_lens.analysis.projection import AUT_OBJECTS, AUT_TEMPLATE, ProjectionConfig
from persona_lens.analysis.sweep import SweepConfig
from persona_lens.backends import BACKENDS, HFBackend, make_backend
from persona_lens.cli import cli
from persona_lens.cli import options as cli_options
from persona_lens.demo import pipeline as demo_pipeline
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


@pytest.fixture
def cli_vllm(tiny_model, monkeypatch) -> list[StandIn]:
    """The command line on ``tiny_model`` with vLLM "installed": ``--backend vllm`` makes a
    stand-in (appended to the returned list), checking it was asked for vllm on the ``--model``."""
    made: list[StandIn] = []

    def fake_make_backend(name, model, *, model_name):
        assert (name, model_name) == ("vllm", "tiny")
        made.append(StandIn(model))
        return made[-1]

    for module in (cli_options, demo_pipeline):  # the commands' backends, and the demo's
        monkeypatch.setattr(module, "make_backend", fake_make_backend)
    monkeypatch.setattr(cli_options.models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(demo_pipeline, "load_model", lambda *a, **k: tiny_model)  # imported by name there
    find_spec = cli_options.importlib.util.find_spec
    monkeypatch.setattr(cli_options.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else find_spec(name, *a))  # "installed"
    monkeypatch.setattr(cli_options.models, "resolve_model_name",
                        lambda name: ("tiny", "tiny", model_id(tiny_model)))
    return made


def test_cli_backend_option_routes_generation(tiny_model, cli_vllm):
    made = cli_vllm
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


@pytest.mark.parametrize("command", ["extract", "steer", "generate", "sweep", "screen", "serve", "eval creativity",
                                     "monitor", "project", "shift", "demo"])
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


class FittedOnAnswers:
    """A judge that must be fitted first (like the embedding proxy), recording what it was fitted
    on; its trait score is the answer's length."""

    name = "fitted-on-answers"

    def __init__(self):
        self.fitted_on: tuple[list, list] | None = None

    @property
    def is_fitted(self) -> bool:
        return self.fitted_on is not None

    def fit(self, texts, labels):
        self.fitted_on = (list(texts), list(labels))
        return self

    def cross_fit(self, texts, labels, folds):
        raise AssertionError("monitor fits on every answer")

    def score_trait(self, spec, question, answer):
        return float(len(answer))

    def score_trait_many(self, spec, qa, *, progress=False):
        return [self.score_trait(spec, q, a) for q, a in qa]


def test_monitor_answers_and_judge_fit_route_through_backend(tiny_model, tmp_path, no_hf_generation):
    rows = [{"prompt": "What is rain?"}, {"prompt": "Why?", "response": "Because."}, {"prompt": "Who are you?"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vector, spec = testing.tiny_vector(tiny_model), tiny_spec()

    def run(name, backend=None):
        judge = FittedOnAnswers()
        config = MonitorConfig(prompts=str(data), out=str(tmp_path / f"{name}.jsonl"), layer=1, max_new_tokens=4)
        return monitor.run(tiny_model, config, vector=vector, judge=judge, spec=spec, progress=False,
                           backend=backend), judge

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf, hf_judge = run("hf")
    backend = StandIn(tiny_model)
    res, judge = run("b", backend)
    # the judge's training answers (2 questions x pos/neg), then the two rows without an answer
    assert [len(c["prompts"]) for c in backend.calls] == [4, 2]
    assert [p[0]["content"] for p in backend.calls[0]["prompts"]] == [spec.instruction[0].pos,
                                                                      spec.instruction[0].neg] * 2
    assert all(c["temperature"] == 0.0 and c["steering"] is None for c in backend.calls)
    assert judge.fitted_on == hf_judge.fitted_on and res.judge_fit == hf.judge_fit
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "hf.jsonl").read_text()


def test_projection_conditions_route_through_backend_with_their_steering(tiny_model, no_hf_generation):
    vecs = [testing.tiny_vector(tiny_model, seed=1, persona="a"), testing.tiny_vector(tiny_model, seed=2, persona="b")]
    config = ProjectionConfig(layer=1, alpha=0.2, max_new_tokens=3)
    prompts = ["Name a colour.", "Say hi."]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf = projection.run(tiny_model, config, vectors=vecs, prompts=prompts, progress=False)
    backend = StandIn(tiny_model)
    res = projection.run(tiny_model, config, vectors=vecs, prompts=prompts, progress=False, backend=backend)
    (call,) = backend.calls  # none, multi_role, steer:a, steer:b, merged: one call, one steering row each
    assert len(call["prompts"]) == 10 and call["steering"].batch_size == 10 and call["temperature"] == 0.0
    assert res.responses == hf.responses
    for pos in res.mean:
        np.testing.assert_array_equal(res.mean[pos], hf.mean[pos])


def test_cli_monitor_and_project_take_backend(tiny_model, cli_vllm, tmp_path):
    vector = testing.tiny_vector(tiny_model).save(tmp_path / "v.safetensors")
    common = ["--model", "tiny", "--backend", "vllm", "--max-new-tokens", "3"]
    result = CliRunner().invoke(cli, ["project", "--vectors", str(vector), "--layer", "1", "--alpha", "0.2",
                                      "--task", "aut", "--n", "1", "--out", str(tmp_path / "proj"), *common])
    assert result.exit_code == 0, result.output
    (engine,) = cli_vllm
    assert [c["content"] for p in engine.calls[0]["prompts"] for c in p if c["role"] == "user"] == \
        [AUT_TEMPLATE.format(object=AUT_OBJECTS[0])] * 4  # none, multi_role, steer, merged
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "What is rain?"}) + "\n")
    result = CliRunner().invoke(cli, ["monitor", str(data), "--vector", str(vector), "--layer", "1",
                                      "--out", str(tmp_path / "m.jsonl"), "--judge", "embedding",
                                      "--persona", "humorous", *common])
    assert result.exit_code == 0, result.output
    assert len(cli_vllm) == 2 and cli_vllm[1].calls[-1]["prompts"] == [[{"role": "user", "content": "What is rain?"}]]


def test_demo_routes_every_generation_through_backend_and_shares_its_caches(tiny_model, cli_vllm, tmp_path,
                                                                            no_hf_generation):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--quick", "--model", "tiny", "--judge", "none", "--threads", "default",
            "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--backend", "vllm"])
    assert result.exit_code == 0, result.output
    (engine,) = cli_vllm
    users = {m["content"] for c in engine.calls for p in c["prompts"] for m in p if m["role"] == "user"}
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["backend"] == "vllm"
    for persona in (*config["personas"], config["screen_trait"]):  # extraction
        assert set(load_persona(persona).questions[:config["n_questions"]]) <= users
    steered = {m["content"] for c in engine.calls if c["steering"] is not None for p in c["prompts"] for m in p
               if m["role"] == "user"}
    swept = load_persona(config["personas"][0])
    assert set(swept.eval_questions[:config["sweep_steer"]]) <= steered  # the sweep's steered answers
    assert AUT_TEMPLATE.format(object=AUT_OBJECTS[0]) in steered  # BILLY's steered conditions
    assert {json.loads(line)["prompt"] for line in (out / "screen" / "data.jsonl").open()} <= users  # screen
    # every demo generation is greedy: the same on either backend, so hf reuses every stage
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["ran"] == []


def test_shift_responses_route_through_backend_of_the_responses_model(tiny_model, no_hf_generation):
    finetuned = testing.tiny_model(seed=1)  # same architecture, other weights
    vector = testing.tiny_vector(tiny_model)
    config = shift.ShiftConfig(max_new_tokens=3)
    prompts = ["Name a colour.", "Say hi."]
    backend = StandIn(finetuned)
    res = shift.run(tiny_model, config, finetuned=finetuned, vector=vector, prompts=prompts, progress=False,
                    backend=backend)
    (call,) = backend.calls
    assert len(call["prompts"]) == 2 and call["temperature"] == 0.0 and call["steering"] is None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen_module, "generate_ids", no_hf_generation)
        hf = shift.run(tiny_model, config, finetuned=finetuned, vector=vector, prompts=prompts, progress=False)
    assert res.responses == hf.responses
    np.testing.assert_array_equal(res.shift, hf.shift)
