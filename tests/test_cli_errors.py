"""Every bad input to the command line: one line naming the problem, the right exit code, no
traceback, and nothing loaded or written first (issue 13). Runs in-process with click's CliRunner;
``persona_lens.models.load_model`` is replaced by a recorder, so a case that reaches a model
load shows up in ``model_loads``."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from persona_lens.cli import cli, main
from persona_lens.vectors import PersonaVector


@pytest.fixture
def model_loads(monkeypatch):
    """Records every load_model call and refuses it: these checks must come first."""
    calls = []

    def refuse(name="default", *args, **kwargs):
        calls.append(name)
        raise RuntimeError(f"test: load_model({name!r}) was called")

    monkeypatch.setattr("persona_lens.models.load_model", refuse)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("PERSONA_LENS_DEBUG", raising=False)
    return calls


@pytest.fixture
def files(tmp_path):
    """Good and bad inputs; placeholders for the argv table."""
    spec = {"instruction": [{"pos": "Be funny.", "neg": "Be dry."}], "questions": ["Why?"],
            "eval_prompt": "Rate {question} {answer}"}
    paths = {
        "vec": PersonaVector(torch.randn(4, 8), {"persona": "x"}).save(tmp_path / "v.safetensors"),
        "vec2": PersonaVector(torch.randn(4, 8), {"persona": "y"}).save(tmp_path / "w.safetensors"),
        "spec": tmp_path / "spec.json",
        "spec_latin1": tmp_path / "latin1.json",
        "dir": tmp_path / "adir",
        "file": tmp_path / "afile.txt",
        "prompts": tmp_path / "prompts.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "nonutf8": tmp_path / "nonutf8.jsonl",
        "not_object": tmp_path / "list.jsonl",
        "empty": tmp_path / "empty.jsonl",
        "blank": tmp_path / "blank.jsonl",
        "no_response": tmp_path / "no_response.jsonl",
        "empty_txt": tmp_path / "empty.txt",
        "latin1_txt": tmp_path / "latin1.txt",
        "missing": tmp_path / "missing.jsonl",
        "out": tmp_path / "new" / "out.jsonl",
        "outdir": tmp_path / "new_dir",
    }
    paths["spec"].write_text(json.dumps(spec), encoding="utf-8")
    paths["spec_latin1"].write_bytes(json.dumps(spec).replace("Be dry.", "Be s\\u00e9rieux.").encode()
                                     .replace(b"\\u00e9", b"\xe9"))
    paths["dir"].mkdir()
    paths["file"].write_text("a file\n", encoding="utf-8")
    paths["prompts"].write_text('{"prompt": "hi"}\n{"system": "Be funny.", "prompt": "hello"}\n', encoding="utf-8")
    paths["malformed"].write_text('{"prompt": "hi"}\n{"prompt": \n{"prompt": "x"}\n', encoding="utf-8")
    paths["nonutf8"].write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    paths["not_object"].write_text('["a list"]\n', encoding="utf-8")
    paths["empty"].write_text("", encoding="utf-8")
    paths["blank"].write_text("\n  \n", encoding="utf-8")
    paths["no_response"].write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q2"}\n', encoding="utf-8")
    paths["empty_txt"].write_text("\n", encoding="utf-8")
    paths["latin1_txt"].write_bytes(b"first prompt\nsecond caf\xe9\n")
    return {k: str(v) for k, v in paths.items()}


def run_cli(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def assert_one_line_error(result, code: int, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


V = ["--vector", "{vec}", "--layer", "1"]
API = ["--judge", "openai:gpt-4o-mini"]
CASES = [
    # persona files
    ("extract: persona file not UTF-8", ["extract", "{spec_latin1}", "--out", "{outdir}/v.safetensors"], 1,
     ["PersonaSpecError", "latin1.json", "not UTF-8"]),
    ("extract: persona path is a directory", ["extract", "{dir}", "--out", "{outdir}/v.safetensors"], 1,
     ["PersonaSpecError", "adir", "is a directory"]),
    ("sweep: unknown persona", ["sweep", "--vector", "{vec}", "--persona", "no_such", "--out", "{outdir}"], 1,
     ["PersonaSpecError", "no_such"]),
    # JSONL inputs: the file and line
    ("monitor: malformed JSONL line", ["monitor", "{malformed}", *V, "--out", "{out}"], 1,
     ["InputFileError", "malformed.jsonl:2", "malformed JSON"]),
    ("monitor: non-UTF-8 row", ["monitor", "{nonutf8}", *V, "--out", "{out}"], 1,
     ["InputFileError", "nonutf8.jsonl:2", "not UTF-8", "0xe9"]),
    ("monitor: row is not an object", ["monitor", "{not_object}", *V, "--out", "{out}"], 1,
     ["list.jsonl:1", "expected a JSON object"]),
    ("screen: row missing its response", ["screen", "{no_response}", *V, "--out", "{out}"], 1,
     ["InputFileError", "no_response.jsonl:2", "'response'"]),
    ("screen: row missing its prompt", ["screen", "{prompts}", *V, "--out", "{out}"], 1,
     ["InputFileError", "prompts.jsonl:1", "'response'"]),
    ("monitor: missing input", ["monitor", "{missing}", *V, "--out", "{out}"], 2, ["missing.jsonl", "does not exist"]),
    ("monitor: input is a directory", ["monitor", "{dir}", *V, "--out", "{out}"], 2, ["adir", "is a directory"]),
    ("steer: missing vector", ["steer", "--vector", "{missing}", "--layer", "1", "--alpha", "1", "hi"], 2,
     ["--vector", "does not exist"]),
    # empty inputs are refused
    ("monitor: empty file", ["monitor", "{empty}", *V, "--out", "{out}"], 1, ["empty.jsonl", "no rows"]),
    ("screen: blank lines only", ["screen", "{blank}", *V, "--out", "{out}"], 1, ["blank.jsonl", "no rows"]),
    ("project: empty prompts file", ["project", "--vectors", "{vec}", "--layer", "1", "--alpha", "1", "--prompts",
                                     "{empty_txt}", "--out", "{outdir}"], 1, ["empty.txt", "empty"]),
    ("shift: prompts not UTF-8", ["shift", "--finetuned", "default", "--vector", "{vec}", "--prompts", "{latin1_txt}",
                                  "--out", "{outdir}"], 1, ["latin1.txt:2", "not UTF-8"]),
    # output paths
    ("extract: --out is a directory", ["extract", "{spec}", "--out", "{dir}"], 2, ["--out", "is a directory"]),
    ("monitor: --out is a directory", ["monitor", "{prompts}", *V, "--out", "{dir}"], 2, ["--out", "is a directory"]),
    ("screen: --out under a file", ["screen", "{no_response}", *V, "--out", "{file}/x.jsonl"], 2,
     ["--out", "afile.txt is not a directory"]),
    ("blend: --out is a directory", ["blend", "{vec}", "{vec2}", "--out", "{dir}"], 2, ["--out", "is a directory"]),
    ("export: --out is a directory", ["export", "{vec}", "--format", "pt", "--out", "{dir}"], 2, ["is a directory"]),
    ("demo: --out is an existing file", ["demo", "--out", "{file}"], 2, ["--out", "is not a directory"]),
    ("sweep: --out is an existing file", ["sweep", "--vector", "{vec}", "--persona", "{spec}", "--out", "{file}"], 2,
     ["--out", "is not a directory"]),
    ("eval: --out is an existing file", ["eval", "creativity", "--out", "{file}"], 2, ["is not a directory"]),
    ("persona new: --out is a directory", ["persona", "new", "x", "y", "--out", "{dir}"], 2, ["is a directory"]),
    # numbers out of range
    ("extract: --max-new-tokens 0", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--max-new-tokens", "0"],
     2, ["--max-new-tokens", "x>=1"]),
    ("extract: --batch-size 0", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--batch-size", "0"], 2,
     ["--batch-size"]),
    ("extract: --n-per-question 0", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--n-per-question", "0"],
     2, ["--n-per-question"]),
    ("extract: --temperature -1", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--temperature", "-1"], 2,
     ["--temperature"]),
    ("steer: --top-p 0", ["steer", *V, "--alpha", "1", "--top-p", "0", "hi"], 2, ["--top-p"]),
    ("steer: --top-p 1.5", ["steer", *V, "--alpha", "1", "--top-p", "1.5", "hi"], 2, ["--top-p"]),
    ("steer: --alpha nan", ["steer", *V, "--alpha", "nan", "hi"], 2, ["--alpha", "not a finite number"]),
    ("steer: --alpha inf", ["steer", *V, "--alpha", "-inf", "hi"], 2, ["--alpha", "not a finite number"]),
    ("steer: --layer -1", ["steer", "--vector", "{vec}", "--layer", "-1", "--alpha", "1", "hi"], 2, ["--layer"]),
    ("steer: layer beyond the vector", ["steer", "--vector", "{vec}", "--layer", "9", "--alpha", "1", "hi"], 1,
     ["LayerOutOfRangeError"]),
    ("monitor: --chunk-size 0", ["monitor", "{prompts}", *V, "--out", "{out}", "--chunk-size", "0"], 2,
     ["--chunk-size"]),
    ("sweep: --alphas not numbers", ["sweep", "--vector", "{vec}", "--persona", "{spec}", "--out", "{outdir}",
                                     "--alphas", "a,b"], 2, ["--alphas"]),
    ("sweep: --threads 0", ["sweep", "--vector", "{vec}", "--persona", "{spec}", "--out", "{outdir}", "--threads", "0"],
     2, ["--threads"]),
    ("blend: weights count", ["blend", "{vec}", "{vec2}", "--weights", "1,2,3", "--out", "{outdir}/m.safetensors"], 2,
     ["--weights", "3 weight(s) for 2 vector(s)"]),
    ("export: gguf --alpha 0", ["export", "{vec}", "--format", "gguf", "--alpha", "0", "--out", "{outdir}/v.gguf"], 2,
     ["--alpha", "all-zero"]),
    # dtype, device, model
    ("info: --dtype float33", ["info", "--dtype", "float33"], 2, ["--dtype", "float33", "not a floating-point"]),
    ("info: --dtype int8", ["info", "--dtype", "int8"], 2, ["--dtype"]),
    ("info: --device nonsense", ["info", "--device", "gpu0"], 2, ["--device", "gpu0"]),
    # judges and API keys, before generating
    ("extract: no API key", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", *API], 1,
     ["JudgeError", "OPENAI_API_KEY"]),
    ("extract: key named by --api-key-env", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", *API,
                                             "--api-key-env", "MY_JUDGE_KEY"], 1, ["MY_JUDGE_KEY"]),
    ("monitor: no API key", ["monitor", "{prompts}", *V, "--out", "{out}", *API], 1, ["OPENAI_API_KEY"]),
    ("sweep: no API key", ["sweep", "--vector", "{vec}", "--persona", "{spec}", "--out", "{outdir}", *API], 1,
     ["OPENAI_API_KEY"]),
    ("demo: no API key", ["demo", "--out", "{outdir}", *API], 1, ["OPENAI_API_KEY"]),
    ("eval: no API key", ["eval", "creativity", "--out", "{outdir}", *API], 1, ["OPENAI_API_KEY"]),
    ("extract: unknown judge", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--judge", "gpt4"], 2,
     ["--judge", "unknown judge"]),
    ("extract: local judge of a missing folder", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--judge",
                                                  "local:./no/such/model"], 1, ["no such model folder"]),
    # usage
    ("unknown option", ["extract", "{spec}", "--out", "{outdir}/v.safetensors", "--frobnicate"], 2,
     ["--frobnicate", "persona-lens extract --help"]),
    ("project: neither --prompts nor --task", ["project", "--vectors", "{vec}", "--layer", "1", "--alpha", "1",
                                               "--out", "{outdir}"], 2, ["--prompts", "--task"]),
    ("project: a missing axis vector", ["project", "--vectors", "{vec},{missing}", "--layer", "1", "--alpha", "1",
                                        "--task", "aut", "--out", "{outdir}"], 2, ["missing.jsonl", "does not exist"]),
]


@pytest.mark.parametrize("args, code, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_before_any_model(args, code, needles, files, model_loads, tmp_path):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli([a.format(**files) for a in args])
    assert_one_line_error(result, code, *needles)
    assert model_loads == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_cpu_torch(model_loads):
    err = assert_one_line_error(run_cli(["info", "--device", "cuda"]), 2, "--device", "CUDA is not available")
    assert "--device cpu" in err and model_loads == []


def _deny(monkeypatch, target: str, mode: int) -> None:
    """Make ``target`` lack ``mode`` permission: chmod, and (as root, who ignores modes) os.access."""
    os.chmod(target, 0o555 if os.path.isdir(target) else 0o000)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if (os.fspath(p) == target and m & mode)
                            else real(p, m, *a, **k))


@pytest.mark.parametrize("kind", ["output folder not writable", "output file not writable", "input not readable"])
def test_permissions(kind, files, model_loads, monkeypatch):
    if kind == "output folder not writable":
        _deny(monkeypatch, files["dir"], os.W_OK)
        args, needle = ["monitor", files["prompts"], *V, "--out", files["dir"] + "/o.jsonl"], "is not writable"
    elif kind == "output file not writable":
        _deny(monkeypatch, files["file"], os.W_OK)
        args, needle = ["blend", files["vec"], "--out", files["file"]], "is not writable"
    else:
        _deny(monkeypatch, files["prompts"], os.R_OK)
        args, needle = ["monitor", files["prompts"], *V, "--out", files["out"]], "is not readable"
    try:
        result = run_cli([a.format(**files) for a in args])
    finally:
        os.chmod(files["dir"], 0o755)
        os.chmod(files["file"], 0o644)
        os.chmod(files["prompts"], 0o644)
    assert_one_line_error(result, 2, needle)
    assert model_loads == []


def test_missing_local_model_folder_is_not_a_hub_id(tmp_path):
    """Real load_model: a path that does not exist is a missing folder, not an invalid repo id."""
    for name in (str(tmp_path / "no" / "such"), "./models/nope", "~/nope/model"):
        err = assert_one_line_error(run_cli(["info", "--model", name]), 1, "UnknownModelError", "no such model folder")
        assert "repo" not in err.lower()


def test_negative_alpha_parses_and_reaches_the_model(files, model_loads):
    """`--alpha -1e6` is a value, not an option; the first failure is the (refused) model load."""
    result = run_cli(["steer", *[a.format(**files) for a in V], "--alpha", "-1e6", "hi"])
    assert_one_line_error(result, 1, "load_model('default') was called")
    assert model_loads == ["default"]


def test_persona_validate_checks_every_file(files, model_loads):
    result = run_cli(["persona", "validate", files["spec_latin1"], files["dir"], files["spec"]])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL") and "not UTF-8" in lines[0]
    assert lines[1].startswith("FAIL") and "is a directory" in lines[1]
    assert lines[2].startswith("OK") and "2 of 3 file(s) invalid" in result.stderr


def test_ctrl_c_is_one_line_and_130(files, model_loads, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("persona_lens.models.load_model", interrupted)
    result = run_cli(["info"])
    assert result.exit_code == 130
    assert result.stderr.strip() == "persona-lens: interrupted; rerun the same command to resume"


def test_sigterm_removes_the_temporary_file(files, model_loads, monkeypatch, tmp_path):
    """SIGTERM in the middle of an atomic write: exit 143, no output, no temporary left behind."""
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_then_sigterm(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        assert Path(filename).exists()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        raise AssertionError("SIGTERM was not delivered")

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "merged" / "m.safetensors"
    result = run_cli(["blend", files["vec"], files["vec2"], "--out", str(out)])
    assert result.exit_code == 143
    assert result.stderr.strip() == "persona-lens: terminated; rerun the same command to resume"
    assert list(out.parent.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is the command line's only


def test_debug_shows_the_traceback(files, model_loads):
    with pytest.raises(RuntimeError, match="load_model"):
        CliRunner().invoke(cli, ["--debug", "info"], catch_exceptions=False)


def test_main_returns_the_code(files, model_loads, capsys):
    assert main(["info", "--dtype", "float33"]) == 2
    assert "float33" in capsys.readouterr().err
    assert main([]) == 2
    assert "Commands:" in capsys.readouterr().out


def test_commands_in_workflow_order():
    out = run_cli(["--help"]).stdout
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.startswith("  ") and
              not line.startswith("    ")]
    assert listed == ["info", "persona", "extract", "sweep", "calibrate", "autotune", "steer", "generate", "monitor",
                      "screen", "blend", "project", "shift", "eval", "judge", "export", "import", "fold", "serve",
                      "demo"]


def _all_commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


@pytest.mark.parametrize("path, command", list(_all_commands(cli)), ids=lambda x: " ".join(x) if isinstance(x, tuple)
                         else None)
def test_every_option_has_help(path, command):
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
    assert command.help or command.short_help


def test_judge_options_on_every_judge_command():
    for path, command in _all_commands(cli):
        flags = {opt for p in command.params for opt in p.opts}
        if "--judge" in flags:
            assert {"--base-url", "--api-key-env"} <= flags, path


def test_readme_command_line_flags_exist():
    """Every command and --flag in the README's "Command line" block is one the CLI has."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    checked = 0
    for line in block.splitlines():
        for usage in line.split(" ; "):
            words = usage.split("#")[0].split()
            if not words or words[0] != "persona-lens":
                continue
            command = cli.commands[words[1]]
            if hasattr(command, "commands"):  # persona list | show ...; eval creativity
                subs = [w for w in words[2:] if w in command.commands]
                assert subs, line
                commands = [command.commands[s] for s in subs]
            else:
                commands = [command]
            flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage))
            known = {opt for c in commands for p in c.params for opt in p.opts}
            assert flags <= known, (line, flags - known)
            checked += 1
    assert checked >= 15
