"""The quick demo end to end (run ONCE per test session, shared with test_report_browser.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_lens.demo import StageRunner, answer_metrics, run_demo

STAGES = ["extract_creative_professional", "extract_environmentalist", "extract_futurist", "extract_humorous",
          "blend", "sweep", "billy", "monitor", "screen", "report"]

_RUN: dict = {}


def quick_demo_run(tmp_path_factory, model) -> dict:
    """Run ``persona-lens demo --quick`` once per session (in process, reusing the session model)."""
    if not _RUN:
        out = tmp_path_factory.mktemp("quick_demo")
        t = time.perf_counter()
        summary = run_demo(out, quick=True, model=model, progress=False)
        _RUN.update(out=Path(out), summary=summary, seconds=time.perf_counter() - t)
    return _RUN


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, default_model):
    return quick_demo_run(tmp_path_factory, default_model)


@pytest.mark.slow
def test_quick_demo_outputs(quick_demo):
    out, summary = quick_demo["out"], quick_demo["summary"]
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js inline
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["ran"] == STAGES and on_disk["skipped"] == []
    assert summary["quick"] is True
    for key in ("extraction", "blend", "sweep", "projection", "billy", "monitor", "screen"):
        assert key in on_disk["findings"], key
    for key in ("extraction", "sweep", "billy", "monitor", "screen"):
        assert on_disk["summary"][key] and all(isinstance(s, str) and s for s in on_disk["summary"][key])
    f = on_disk["findings"]
    rec = f["sweep"]["recommendation"]
    assert rec["layer"] in (8, 14, 20)
    assert 0.0 <= f["monitor"]["auroc"] <= 1.0
    assert set(f["billy"]["conditions"]) == {"none", "multi_role", "steer:creative_professional",
                                             "steer:environmentalist", "steer:futurist", "merged"}
    assert set(f["projection"]["mean_over_layers_from_steer_layer"]["merged"]) == {
        "creative_professional", "environmentalist", "futurist"}
    # every stage wrote its outputs under out/
    for rel in ("vectors/creative_professional.safetensors", "vectors/billy_merged.safetensors",
                "responses/futurist.jsonl", "sweep/result.json", "sweep/sweep_layers.csv", "sweep/sweep_effect.html",
                "billy/result.json", "billy/answers.json", "monitor/monitor.json", "screen/screened.jsonl",
                "figures/projection_response_mean.html", "figures/projection_response_mean.csv", "demo.log"):
        assert (out / rel).exists(), rel
    assert all((out / "stages" / f"{s}.json").exists() for s in STAGES)
    # the written summary quotes the computed numbers
    html = (out / "report.html").read_text()
    assert f"Recommended layer: {rec['layer']}" in html
    assert f"AUROC {f['monitor']['auroc']:.2f}" in html


@pytest.mark.slow
def test_quick_demo_rerun_uses_cache(quick_demo):
    out = quick_demo["out"]
    report_mtime = (out / "report.html").stat().st_mtime
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "persona_lens.cli", "demo", "--out", str(out), "--quick",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == STAGES and summary["ran"] == []
    assert summary["model_loaded"] is False
    assert all(f"{s}: cached" in proc.stderr for s in STAGES)
    assert (out / "report.html").stat().st_mtime == report_mtime
    # much faster than the first run (which includes no model load: the session model was reused)
    assert seconds < max(0.5 * quick_demo["seconds"], 20.0), (seconds, quick_demo["seconds"])


@pytest.mark.slow
def test_changed_config_reruns_dependent_stages(quick_demo, tmp_path):
    """A stage is skipped only when its hash (parameters + input file contents) matches its record;
    changed parameters rerun it."""
    out = quick_demo["out"]
    rec = json.loads((out / "stages" / "monitor.json").read_text())
    runner = StageRunner(out, total=1, log=lambda m: None)
    calls = []
    again = runner.run("monitor", rec["params"], lambda: calls.append(1) or {}, inputs=list(rec["inputs"]),
                       outputs=lambda r: r["files"])
    assert calls == [] and again == rec["result"]
    assert "sweep/heldout.scored.jsonl" in rec["inputs"] and "vectors/creative_professional.safetensors" in rec["inputs"]
    changed = dict(rec["params"], judge="none")
    runner2 = StageRunner(tmp_path, total=1, log=lambda m: None)
    runner2.run("monitor", changed, lambda: calls.append(1) or {"files": []}, outputs=lambda r: r["files"])
    assert calls == [1]


def test_answer_metrics():
    m = answer_metrics("Ideas:\n1. Doorstop\n2. Bookend\n- Garden marker\n2. Bookend")
    assert m["ideas"] == 3  # distinct list items
    loop = answer_metrics("A brick is tangible. A brick is tangible. A brick is tangible.")
    assert loop["ideas"] == 1 and loop["coherence"] < 0.3
