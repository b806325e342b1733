"""viz: every figure function builds a figure in the shared style; save_figure writes offline HTML."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

go = pytest.importorskip("plotly.graph_objects")

from persona_lens import viz  # noqa: E402

# a script or stylesheet fetched from the network (plotly.js itself mentions cdn.plot.ly for geo data)
_REMOTE = re.compile(r"<(?:script|link)[^>]+(?:src|href)=[\"']?(?:https?:)?//", re.I)


def _styled(fig):
    assert isinstance(fig, go.Figure)
    assert list(fig.layout.template.layout.colorway) == list(viz.PALETTE)
    assert fig.layout.title.text
    return fig


def test_sweep_figures():
    rows = [{"layer": l, "auroc": 0.5 + l / 20, "cohens_d": l / 4, "vector_norm": 1 + l, "resid_norm": 10 + l}
            for l in range(6)]
    f = _styled(viz.sweep_separation(rows, recommended_layer=3))
    assert [t.name for t in f.data] == ["AUROC", "Cohen's d"]
    f2 = _styled(viz.sweep_separation([0, 1], [0.5, 0.9], [0.1, 2.0]))
    with pytest.raises(ValueError):
        viz.sweep_separation([0, 1])  # neither rows nor auroc / cohens_d
    assert list(f2.data[0].y) == [0.5, 0.9]
    n = _styled(viz.sweep_norms(rows))
    ratio = n.data[2].y
    assert ratio[2] == pytest.approx(3 / 12)
    h = _styled(viz.sweep_heatmap([4, 8], [0.0, 0.5, 1.0], np.arange(6.0), valid=[1, 1, 0, 1, 1, 1],
                                    recommended=(8, 0.5)))
    assert h.data[0].z.shape == (2, 3) if hasattr(h.data[0].z, "shape") else len(h.data[0].z) == 2
    assert "✗" in h.data[0].text[0][2] and "✗" not in h.data[0].text[0][1]
    assert h.data[1].name == "recommended"


def test_projection_panels_inputs_agree():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 2, 5))
    conds, axes, layers = ["multi_role", "steer:a", "merged"], ["a", "b"], list(range(5))
    from_arrays = viz.projection_panels(mean, conds, axes, layers)
    as_dict = {"conditions": conds, "axes": axes, "layers": layers, "mean": {"response_mean": mean.tolist()},
               "std": {"response_mean": np.zeros_like(mean).tolist()}}
    from_dict = viz.projection_panels(as_dict)
    lines = [t for t in from_dict.data if t.mode == "lines+markers"]
    assert len([t for t in from_arrays.data if t.mode == "lines+markers"]) == len(lines) == 6  # 3 conditions x 2 axes
    np.testing.assert_allclose(lines[0].y, mean[0, 0])
    # a subset of conditions / axes
    sub = viz.projection_panels(as_dict, conditions=["merged"], axes=["b"])
    np.testing.assert_allclose([t for t in sub.data if t.mode == "lines+markers"][0].y, mean[2, 1])
    assert {t.name for t in lines} == {"multi-role prompt", "steer a", "BILLY merged steering"}
    with pytest.raises(ValueError):
        viz.projection_panels(mean, conds, axes, layers[:3])


def test_projection_panels_from_result_object():
    from persona_lens.analysis.projection import ProjectionConfig, ProjectionResult

    mean = {"response_mean": np.ones((2, 1, 3)), "last_prompt": np.zeros((2, 1, 3))}
    res = ProjectionResult(ProjectionConfig(layer=1, alpha=1.0), ["multi_role", "merged"], ["a"], [0, 1, 2], mean,
                           {k: v * 0 for k, v in mean.items()},
                           {"response_mean": [1, 1], "last_prompt": [1, 1]}, 1)
    fig = _styled(viz.projection_panels(res, position="last_prompt", steer_layer=1))
    assert all(list(t.y) == [0, 0, 0] for t in fig.data if t.mode == "lines+markers")


def test_monitor_screen_shift_and_generic_figures():
    m = _styled(viz.monitor_scatter([1, 2, 3, 4], [10, None, 30, 50], ["pos", "neg", "pos", "neg"]))
    assert "r = " in m.layout.title.text
    assert f"r = {np.corrcoef([1, 3, 4], [10, 30, 50])[0, 1]:.2f}" in m.layout.title.text  # the None pair skipped
    s = _styled(viz.screening_histogram([0.1, -0.2, None, 0.5], ["a", "b", "a", "b"], mean=0.1))
    assert len(s.data) == 2
    s2 = _styled(viz.screening_histogram({"edges": [0, 1, 2], "counts": [3, 4]}))
    assert list(s2.data[0].y) == [3, 4]
    sh = _styled(viz.shift_per_layer([0, 1, 2], [0.1, 0.2, 0.3], [0.01, 0.02, 0.03]))
    assert sh.data[-1].name == "shift"
    sh2 = viz.shift_per_layer({"layers": [0, 1], "shift": [1.0, 2.0], "std": [0.0, 0.0]})
    assert list(sh2.data[-1].y) == [1.0, 2.0]
    rows = [{"method": "billy", "task": "aut", "score": 3.0, "sd": 0.2},
            {"method": "single", "task": "aut", "score": 2.5, "sd": 0.1},
            {"method": "billy", "task": "riddles", "score": 3.5}]
    b = _styled(viz.grouped_bars(rows, x="task", group="method", value="score", error="sd", title="scores"))
    assert [t.name for t in b.data] == ["billy", "single"]
    assert list(b.data[1].y) == [2.5, None]  # single has no riddles row
    assert list(b.data[0].error_y.array) == [0.2, 0.0]
    _styled(viz.similarity_heatmap(np.eye(2), ["a", "b"]))
    _styled(viz.lines_per_layer([0, 1], {"x": [1, 2]}, mark_layer=1))
    _styled(viz.histogram({"a": [1, 2, 3], "b": [2, 3, 4]}))


def test_save_figure_is_offline_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_LENS_STATIC_EXPORT", "0")
    fig = viz.sweep_separation([0, 1], [0.5, 1.0], [0.0, 1.0])
    out = viz.save_figure(fig, tmp_path / "sub" / "sep", data=[{"layer": 0, "auroc": 0.5}, {"layer": 1, "auroc": 1.0}])
    html = out
    assert html == tmp_path / "sub" / "sep.html"
    text = html.read_text()
    assert not _REMOTE.search(text)
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in text or 'src="plotly.min.js"' in text
    js = tmp_path / "sub" / "plotly.min.js"
    assert js.stat().st_size > 1_000_000
    assert json.loads((tmp_path / "sub" / "sep.json").read_text())[1]["auroc"] == 1.0
    assert (tmp_path / "sub" / "sep.csv").read_text().splitlines()[0] == "layer,auroc"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left
    inline = viz.save_figure(fig, tmp_path / "inline", plotlyjs="inline")
    assert Path(inline).stat().st_size > 1_000_000 and not _REMOTE.search(Path(inline).read_text())
    with pytest.raises(ValueError):
        viz.save_figure(fig, tmp_path / "x", plotlyjs="cdn")


def test_static_export_failure_is_remembered(tmp_path, monkeypatch):
    import importlib.util

    fig = viz.histogram([1, 2, 3])
    if importlib.util.find_spec("kaleido") is None:
        viz.save_figure(fig, tmp_path / "h", static=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["h.html", "plotly.min.js"]
        assert viz.static_export_status()["ok"] is False
    else:  # kaleido present: either it works, or the failure is remembered and nothing raises
        viz.save_figure(fig, tmp_path / "h", static=True, static_timeout=60)
        status = viz.static_export_status()
        assert (tmp_path / "h.png").exists() == bool(status["ok"])


def test_figure_div_has_no_script_src():
    div = viz.figure_div(viz.histogram([1, 2]), div_id="f1")
    assert 'id="f1"' in div and "<script src" not in div and not _REMOTE.search(div)


def test_one_plotting_package():
    import importlib.util

    for old in ("persona_lens.plots", "persona_lens.plots_analysis", "persona_lens.evals.creativity.figures"):
        assert importlib.util.find_spec(old) is None, old


def test_creativity_figures(tmp_path, monkeypatch):
    from persona_lens.evals.creativity import CreativityConfig, CreativityResult
    from persona_lens.evals.creativity.metrics import EFFICIENCY, METRICS
    from persona_lens.viz.creativity import save_figures

    monkeypatch.setenv("PERSONA_LENS_STATIC_EXPORT", "0")
    rows = [{"task": t, "method": m, "metric": k, "mean": v, "std": 0.1, "n": 2}
            for t in ("aut", "all") for m, v in (("sa", 1.0), ("billy_k1", 2.0), ("billy_k2", 3.0))
            for k in ("diversity_proxy", *EFFICIENCY)]
    scores = [{"task": "aut", "item_id": i, "method": m, "seed": 0, "diversity_proxy": v}
              for i, (m, v) in enumerate([("billy_k1", 0.2), ("billy_k1", 0.4), ("billy_k2", 0.6)])]
    methods = ["sa", "billy_k1", "billy_k2"]
    s = _styled(viz.scores_figure(rows, methods, ["aut"], ["diversity_proxy"], METRICS))
    assert s.layout.annotations[0].text.endswith("offline proxy")
    assert [list(t.y) for t in s.data] == [[1.0], [2.0], [3.0]]
    _styled(viz.efficiency_figure(rows, methods, EFFICIENCY))
    a = _styled(viz.ablation_figure(scores, ["aut"], "diversity_proxy", METRICS))
    assert list(a.data[0].x) == [1, 2] and list(a.data[0].y) == pytest.approx([0.3, 0.6])
    assert list(a.data[-1].error_y.array) == pytest.approx([np.std([0.2, 0.4], ddof=1), 0.0])
    result = CreativityResult(config=CreativityConfig(tasks=("aut",), methods=("sa",), ablation_vectors=(1, 2)),
                              tasks={"aut": 3}, methods=methods, n_responses=3, steering=None,
                              judge={"judge": "embedding"}, table=rows, metrics=["diversity_proxy"], ratios={},
                              scores=scores)
    out = save_figures(result, tmp_path)
    assert sorted(out) == ["ablation", "efficiency", "scores"]
    assert all(p.exists() and p.with_suffix(".csv").exists() for p in out.values())
