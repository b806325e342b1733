"""`persona-lens info | extract | steer`, in-process through ``persona_lens.cli.main``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persona_lens.cli import main
from persona_lens.personas import load_persona
from persona_lens.vectors import PersonaVector


def _write_small_spec(folder: Path) -> Path:
    """The built-in `humorous` spec restricted to 2 pairs x 2 questions."""
    spec = load_persona("humorous").to_dict()
    spec["instruction"] = spec["instruction"][:2]
    spec["questions"] = spec["questions"][:2]
    path = folder / "humorous.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_console_script_help():
    script = Path(sys.executable).with_name("persona-lens")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "persona_lens.cli"]
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    for command in ("info", "extract", "steer"):
        assert command in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out.lower()


@pytest.mark.slow
def test_info_json(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["n_layers"] == 30 and info["d_model"] == 576
    assert info["hooks"] == [f"blocks.{l}.hook_resid_post" for l in range(30)]
    assert info["chat_template"] is True


def test_unknown_model(capsys):
    assert main(["info", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "UnknownModelError" in err and "no-such-model" in err


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """`persona-lens extract <2x2 humorous spec> --n-per-question 1 --max-new-tokens 16`."""
    folder = tmp_path_factory.mktemp("cli_extract")
    spec = _write_small_spec(folder)
    out = folder / "humorous.safetensors"
    code = main(["extract", str(spec), "--out", str(out), "--n-per-question", "1", "--max-new-tokens", "16"])
    return code, folder, out


@pytest.mark.slow
def test_extract_writes_vector_and_responses(extracted):
    code, folder, out = extracted
    assert code == 0
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") == [  # the resume store's hidden .lock
        "humorous.json", "humorous.report.json", "humorous.responses.jsonl", "humorous.safetensors"]
    v = PersonaVector.load(out)
    assert v.n_layers == 30 and v.d_model == 576 and v.name == "humorous"
    assert v.metadata["max_new_tokens"] == 16 and v.metadata["n_per_question"] == 1
    rows = [json.loads(x) for x in (folder / "humorous.responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 1 * 2
    assert {r["polarity"] for r in rows} == {"pos", "neg"}
    report = json.loads((folder / "humorous.report.json").read_text())
    assert report["n_rows"] == 8 and report["persona"] == "humorous"


@pytest.mark.slow
def test_steer_prints_one_json_line_per_prompt(extracted, capsys, default_model):
    _, _, out = extracted
    capsys.readouterr()
    prompts = ["Tell me about the moon.", "What should I cook tonight?"]
    code = main(["steer", "--vector", str(out), "--layer", "10", "--alpha", "4", "--max-new-tokens", "16", *prompts])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [set(r) for r in records] == [{"prompt", "completion"}] * 2
    assert [r["prompt"] for r in records] == prompts
    assert all(isinstance(r["completion"], str) and r["completion"] for r in records)
    # the CLI is the library: same greedy output as generate() with the same steering
    from persona_lens.generation import generate
    from persona_lens.steering import Steering

    expected = generate(default_model, prompts, max_new_tokens=16, progress=False,
                        steering=Steering.from_vector(PersonaVector.load(out), [10], 4.0))
    assert [r["completion"] for r in records] == expected


@pytest.mark.slow
def test_steer_wrong_width_vector(tmp_path, capsys):
    bad = PersonaVector(torch.randn(30, 100), {"persona": "narrow"}).save(tmp_path / "narrow.safetensors")
    code = main(["steer", "--vector", str(bad), "--layer", "10", "--alpha", "4", "hello"])
    captured = capsys.readouterr()
    assert code == 1
    assert "VectorShapeError" in captured.err and "576" in captured.err
    assert captured.out == ""


def test_steer_bad_vector_files(tmp_path, capsys):
    from safetensors.torch import save_file

    nan = torch.randn(30, 576)
    nan[3, 3] = float("nan")
    save_file({"vectors": nan}, str(tmp_path / "nan.safetensors"))
    assert main(["steer", "--vector", str(tmp_path / "nan.safetensors"), "--layer", "1", "--alpha", "1", "x"]) == 1
    assert "NonFiniteError" in capsys.readouterr().err
    assert main(["steer", "--vector", str(tmp_path / "missing.safetensors"), "--layer", "1", "--alpha", "1", "x"]) == 2
    assert "missing.safetensors' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_steer_layer_out_of_range(extracted, capsys):
    _, _, out = extracted
    assert main(["steer", "--vector", str(out), "--layer", "30", "--alpha", "4", "hello"]) == 1
    captured = capsys.readouterr()
    assert "LayerOutOfRangeError" in captured.err and captured.out == ""


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"instruction": [{"pos": "a", "neg": "b"}], "questions": ["q"]}', "missing required key"),
        ('{"instruction": [], "questions": ["q"], "eval_prompt": "e"}', "empty list"),
        ('{"instruction": [{"pos": "a", "neg": "b"}], "questions": [], "eval_prompt": "e"}', "empty list"),
        ('{"instruction": [', "not valid JSON"),
    ],
)
def test_extract_bad_persona_writes_nothing(tmp_path, capsys, content, match):
    spec = tmp_path / "bad.json"
    spec.write_text(content, encoding="utf-8")
    out = tmp_path / "out" / "bad.safetensors"
    code = main(["extract", str(spec), "--out", str(out), "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert code == 1
    assert "PersonaSpecError" in captured.err and match in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.json"]  # no vector, no responses, no folder
    assert captured.out == ""


def test_extract_unknown_persona(tmp_path, capsys):
    assert main(["extract", "no_such_persona", "--out", str(tmp_path / "v.safetensors")]) == 1
    assert "PersonaSpecError" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_generate_is_the_unsteered_baseline(extracted, capsys, default_model):
    """`generate` needs no vector and prints what `steer --alpha 0` and the library print."""
    _, _, out = extracted
    prompts = ["Tell me about the moon."]
    capsys.readouterr()
    assert main(["generate", "--max-new-tokens", "12", *prompts]) == 0
    baseline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["steer", "--vector", str(out), "--layer", "10", "--alpha", "0", "--max-new-tokens", "12", *prompts]) == 0
    steered0 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from persona_lens.generation import generate

    expected = generate(default_model, prompts, max_new_tokens=12, progress=False)
    assert [r["completion"] for r in baseline] == [r["completion"] for r in steered0] == expected
