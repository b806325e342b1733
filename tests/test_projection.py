"""Projection analysis (BILLY Eq. 5): hand-computed math, prompts, and the pipeline on SmolLM2."""

import json

import numpy as np
import pytest
import torch

from persona_lens import testing
from persona_lens.analysis import projection
from persona_lens.analysis.projection import (
    AUT_OBJECTS,
    ProjectionConfig,
    ProjectionResult,
    multi_role_system_prompt,
    project_deltas,
    task_prompts,
    with_system,
)
from persona_lens.analysis.shift import ShiftConfig, ShiftResult
from persona_lens.evals.creativity import builders
from persona_lens.personas import billy
from persona_lens.vectors import PersonaVector
from persona_lens.viz import (
    monitor_scatter_figure,
    projection_figure,
    save_figure,
    screen_histogram_figure,
    shift_figure,
)
from persona_lens.viz import projection as projection_viz


def test_project_deltas_by_hand():
    # n=2 prompts, L=2 layers, d=2; axes: x (raw (2,0)) and the diagonal (raw (1,1))
    base = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    cond = torch.tensor([[[1.0, 2.0], [1.0, 3.0]], [[4.0, 0.0], [0.0, -2.0]]])
    axes = torch.tensor([[[2.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    mean, std, n = project_deltas({"c": cond}, base, axes)
    # deltas: prompt0 = [(1,2), (0,2)], prompt1 = [(3,0), (0,-2)]
    # on x: prompt0 -> [1, 0], prompt1 -> [3, 0]; mean [2, 0], std [1, 0]
    # on diag: prompt0 -> [3/r2, 2/r2], prompt1 -> [3/r2, -2/r2]; mean [3/r2, 0], std [0, 2/r2]
    r2 = np.sqrt(2)
    assert mean.shape == (1, 2, 2) and std.shape == (1, 2, 2)
    np.testing.assert_allclose(mean[0], [[2.0, 0.0], [3 / r2, 0.0]], atol=1e-12)
    np.testing.assert_allclose(std[0], [[1.0, 0.0], [0.0, 2 / r2]], atol=1e-12)
    assert n.tolist() == [2]
    # a NaN row (empty response) is left out of that condition only
    cond2 = cond.clone()
    cond2[1] = float("nan")
    mean2, std2, n2 = project_deltas({"c": cond, "d": cond2}, base, axes)
    assert n2.tolist() == [2, 1]
    np.testing.assert_allclose(mean2[1], [[1.0, 0.0], [3 / r2, 2 / r2]], atol=1e-12)


def test_multi_role_prompt_is_the_creativity_evals():
    # one prompt object, shared by the projection analysis and the creativity eval's mrp baseline
    assert multi_role_system_prompt is billy.multi_role_system_prompt is builders.multi_role_system_prompt
    text = multi_role_system_prompt(["creative_professional", "environmentalist", "futurist", "futurist"])
    assert text.startswith("You are a team of experts answering together: a creative professional (expert in ")
    assert text.count("futurist") == 1 and "an environmentalist (expert in sustainability" in text
    # a persona outside BILLY's seven is named, not described
    assert "a humorous persona and a random persona." in multi_role_system_prompt(["humorous", "random"])
    with pytest.raises(ValueError):
        multi_role_system_prompt([])


def test_with_system_prepends():
    assert with_system("hi", "S") == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    msgs = [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}]
    assert with_system(msgs, "S")[0]["content"] == "S\n\nold"


def test_task_prompts(tmp_path):
    aut = task_prompts("aut")
    assert len(aut) == len(AUT_OBJECTS) and "brick" in aut[0]
    assert len(task_prompts("aut", 3)) == 3
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert task_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "q", "system": "s"}) + "\n"
                                      + json.dumps({"messages": [{"role": "user", "content": "m"},
                                                                 {"role": "assistant", "content": "x"}]}) + "\n")
    rows = task_prompts(tmp_path / "p.jsonl")
    assert rows[0] == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert rows[1] == [{"role": "user", "content": "m"}]
    (tmp_path / "aut.json").write_text(json.dumps({"Task": [{"Problem": ["Uses for {object}?", "Go."]}],
                                                   "Examples": [{"object": "Fork"}, {"object": "Cup"}]}))
    assert task_prompts(tmp_path / "aut.json") == ["Uses for Fork? Go.", "Uses for Cup? Go."]
    with pytest.raises(FileNotFoundError):
        task_prompts(tmp_path / "missing.txt")


def _fake_result():
    mean = {"last_prompt": np.arange(8, dtype=float).reshape(2, 2, 2), "response_mean": np.ones((2, 2, 2))}
    std = {k: np.zeros((2, 2, 2)) for k in mean}
    return ProjectionResult(ProjectionConfig(layer=3, alpha=2.0), conditions=["multi_role", "merged"], axes=["a", "b"],
                            layers=[3, 4], mean=mean, std=std,
                            n_valid={"last_prompt": [2, 2], "response_mean": [2, 1]}, n_prompts=2,
                            settings={"layer": 3, "alpha": 2.0})


def test_result_serialisation_and_figure(tmp_path):
    r = _fake_result()
    assert r.value("last_prompt", "merged", "a", 4) == 5.0
    csv_text = r.to_csv(tmp_path / "p.csv")
    lines = csv_text.strip().splitlines()
    assert lines[0] == "position,condition,axis,layer,mean,std,n" and len(lines) == 1 + 2 * 2 * 2 * 2
    assert "last_prompt,merged,a,4,5.0,0.0,2" in lines
    d = json.loads(json.dumps(r.to_dict()))
    assert d["mean"]["last_prompt"][1][0][1] == 5.0 and d["shape"] == "[condition, axis, layer]"
    fig = projection_figure(r, "last_prompt")
    assert len(fig.layout.annotations) >= 2  # one panel title per axis
    path = save_figure(fig, tmp_path / "fig")
    assert path.exists() and path.suffix == ".html"

    figs = [monitor_scatter_figure([0.0, 1.0, 2.0], [10.0, 30.0, 20.0], r=0.5, persona="p", layer=3),
            screen_histogram_figure({"edges": [0.0, 0.5, 1.0], "counts": [3, 1]}, persona="p", layer=3, mean=0.2),
            shift_figure(ShiftResult(ShiftConfig(), [0, 1], np.array([0.1, 0.2]), np.zeros(2), np.zeros(2), np.zeros(2),
                                     2, {"vector": "p", "position": "response_mean"}))]
    for i, f in enumerate(figs):
        assert len(f.data) >= 1
        assert save_figure(f, tmp_path / f"f{i}").exists()



def test_projection_config_round_trip_and_result_save_load(tmp_path):
    cfg = ProjectionConfig(layer=2, alpha=1.5, multi_role=False, positions="all", layers=(0, 2))
    assert ProjectionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    r = _fake_result()
    r.prompts, r.responses = [[{"role": "user", "content": "q"}]] * 2, {"none": ["a", "b"], "merged": ["c", "d"]}
    r.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "projection.csv", "responses.json",
                                                          "result.json"]
    back = ProjectionResult.load(tmp_path)
    assert back.config == r.config and back.to_dict() == r.to_dict()
    assert back.prompts == r.prompts and back.responses == r.responses
    assert set(projection_viz.figures(back)) == {"projection_last_prompt", "projection_response_mean"}


def test_projection_run_on_tiny_model(tiny_model, tmp_path):
    """The pipeline on a random 3-layer model: conditions, shapes, steering leaves earlier layers unmoved."""
    vecs = [testing.tiny_vector(tiny_model, seed=1, persona="a"), testing.tiny_vector(tiny_model, seed=2, persona="b")]
    config = ProjectionConfig(layer=1, alpha=0.2, max_new_tokens=3)
    res = projection.run(tiny_model, config, vectors=vecs, prompts=["Name a colour.", "Say hi."], progress=False)
    assert res.config.layers == (0, 1, 2) and res.conditions == ["multi_role", "steer:a", "steer:b", "merged"]
    assert res.mean["last_prompt"].shape == (4, 2, 3)
    np.testing.assert_allclose(res.mean["last_prompt"][1:, :, 0], 0.0, atol=1e-5)  # steered at layer 1, read at 0
    # at the steering layer the last prompt token moves by alpha * ||v_a|| = 0.2 along a's unit axis
    np.testing.assert_allclose(res.mean["last_prompt"][1, 0, 1], 0.2, rtol=1e-3)
    back = ProjectionResult.load(res.save(tmp_path))
    assert back.config == res.config and back.to_dict() == res.to_dict()


@pytest.mark.slow
def test_projection_analysis_on_smollm2(default_model, humorous_extraction, tmp_path):
    from persona_lens.analysis.projection import unit_directions

    vec, _, _ = humorous_extraction
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(vec.vectors.shape, generator=g)
    rnd = rnd / rnd.norm(dim=-1, keepdim=True) * vec.norms()[:, None]
    other = PersonaVector(rnd, {"persona": "random", "model_id": vec.model_id})
    layer, alpha = 12, 2.0
    layers = [4, 11, 12, 16, 20]
    prompts = task_prompts("aut", 2)
    config = ProjectionConfig(layer=layer, alpha=alpha, max_new_tokens=12, batch_size=16, layers=tuple(layers))
    res = projection.run(default_model, config, vectors=[vec, other, other], prompts=prompts, progress=False)
    assert res.conditions == ["multi_role", "steer:humorous", "steer:random", "merged"]
    assert res.settings["multi_role_prompt"] == billy.multi_role_system_prompt(["humorous", "random"])
    assert res.axes == ["humorous", "random"]  # the repeated vector is one axis
    for pos in ("last_prompt", "response_mean"):
        assert res.mean[pos].shape == (4, 2, len(layers))
        assert np.isfinite(res.mean[pos]).all()
    lp = res.mean["last_prompt"]
    li = layers.index(layer)
    # Steering adds alpha*v at the output of `layer` at the last prompt token, so below the
    # steering layer nothing moves, and at it the shift along the unit axis is alpha*||v_l||
    # (merged = (v + 2 r)/3, so alpha * merged_l . u_axis).
    for c in ("steer:humorous", "steer:random", "merged"):
        ci = res.conditions.index(c)
        np.testing.assert_allclose(lp[ci, :, :2], 0.0, atol=2e-3)
    u = torch.stack([unit_directions(vec, [layer])[0], unit_directions(other, [layer])[0]]).double()
    merged_l = ((vec.layer(layer) + 2 * other.layer(layer)) / 3).double()
    np.testing.assert_allclose(lp[1, 0, li], alpha * float(vec.norms()[layer]), rtol=1e-3)
    np.testing.assert_allclose(lp[2, 1, li], alpha * float(other.norms()[layer]), rtol=1e-3)
    np.testing.assert_allclose(lp[3, :, li], (alpha * u @ merged_l).numpy(), rtol=1e-3, atol=1e-3)
    # multi-role prompting changes the prompt, so the last-prompt activation moves at every layer
    assert np.abs(lp[0]).max() > 0.1
    # steering with humorous moves the generated text along humorous (response mean, later layers)
    rm = res.mean["response_mean"]
    assert rm[1, 0, layers.index(16)] > 0
    assert len(res.responses["none"]) == 2 and res.settings["alpha"] == alpha
    assert res.n_valid["response_mean"] == [2, 2, 2, 2]
    res.save(tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["axes"] == ["humorous", "random"]


@pytest.mark.slow
def test_cli_project(default_model, humorous_extraction, tmp_path, monkeypatch, capsys):
    from persona_lens.cli import main

    vec, _, _ = humorous_extraction
    vpath = vec.save(tmp_path / "h.safetensors")
    monkeypatch.setattr("persona_lens.models.load_model", lambda *a, **k: default_model)
    out = tmp_path / "proj"
    assert main(["project", "--vectors", str(vpath), "--layer", "12", "--alpha", "2", "--task", "aut", "--n", "1",
                 "--max-new-tokens", "6", "--out", str(out)]) == 0
    d = json.loads((out / "result.json").read_text())
    assert d["conditions"] == ["multi_role", "steer:humorous", "merged"]
    assert len(d["layers"]) == 30
    assert (out / "projection_response_mean.html").exists() and (out / "projection.csv").exists()
    # a single vector: merged == that vector, so both conditions steer identically
    lp = np.array(d["mean"]["last_prompt"])
    np.testing.assert_allclose(lp[1], lp[2], atol=1e-4)
    assert "figures" in capsys.readouterr().out
