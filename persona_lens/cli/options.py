"""Option groups and parameter types shared by the commands.

Everything here is checked while click parses argv (exit code 2 on a bad value, in
milliseconds); the option-group wrappers then check what needs the environment (the
judge and its API key) before a command's body runs, so no command loads a model with an
option that is going to fail.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from .. import judges, models
from ..backends import BACKENDS, GenerationBackend, make_backend
from ..errors import JudgeError, UnknownModelError
from ..interop.vllm import INSTALL_HINT

POSITIONS = ("response", "prompt", "all")
JUDGE_HELP = "none | openai:MODEL | local:MODEL | embedding (offline proxy) | lexicon:NAME|FILE.json (offline, deterministic) | calibrated:PATH (fitted by judge calibrate)"


# --------------------------------------------------------------------------- parameter types


class FiniteFloat(click.ParamType):
    """A float that is neither NaN nor infinite (``--alpha -1e6`` works: click takes the next
    token as the value even when it starts with a minus)."""

    name = "float"

    def convert(self, value: Any, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NumberList(click.ParamType):
    """A comma-separated list of numbers, e.g. ``4,8,12`` or ``-0.25,0,0.1``."""

    def __init__(self, kind: type = float, minimum: float | None = None):
        self.kind = kind
        self.minimum = minimum
        self.name = "INTS" if kind is int else "FLOATS"

    def convert(self, value: Any, param, ctx) -> list:
        if isinstance(value, list):
            return value
        items = [x for x in str(value).replace(" ", ",").split(",") if x.strip()]
        try:
            out = [self.kind(x) for x in items]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s", param, ctx)
        if not out:
            self.fail("the list is empty", param, ctx)
        if any(not math.isfinite(x) for x in out):
            self.fail(f"{value!r} holds a value that is not finite", param, ctx)
        if self.minimum is not None and any(x < self.minimum for x in out):
            self.fail(f"{value!r}: every value must be >= {self.minimum}", param, ctx)
        return out


class NameList(click.ParamType):
    """A comma-separated list of names or paths; a repeated option adds to the list."""

    name = "A,B,..."

    def convert(self, value: Any, param, ctx) -> list[str]:
        if isinstance(value, list):
            return value
        out = [v.strip() for v in str(value).split(",") if v.strip()]
        if not out:
            self.fail("the list is empty", param, ctx)
        return out


def input_files(ctx, param, value) -> list[Path] | None:
    """Callback of a ``multiple=True`` :class:`NameList` option of input files: one flat list of
    existing readable files (None if unset)."""
    if not value:
        return None
    return [INPUT_FILE.convert(item, param, ctx) for chunk in value for item in chunk]


class TorchDtype(click.ParamType):
    """A floating-point torch dtype name (``float32``, ``bfloat16``, ``float16``, ...)."""

    name = "dtype"

    def convert(self, value: Any, param, ctx) -> str:
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            self.fail(f"{value!r} is not a floating-point torch dtype (float32, bfloat16, float16, float64)",
                      param, ctx)
        return str(value)


class TorchDevice(click.ParamType):
    """A torch device this process can use: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

    name = "device"

    def convert(self, value: Any, param, ctx) -> str:
        try:
            device = torch.device(str(value))
        except (RuntimeError, ValueError):
            self.fail(f"{value!r} is not a torch device (cpu, cuda, cuda:N, mps)", param, ctx)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                self.fail(f"{value!r}: CUDA is not available to this torch ({torch.__version__}); use --device cpu",
                          param, ctx)
            if device.index is not None and device.index >= torch.cuda.device_count():
                self.fail(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s)", param, ctx)
        elif device.type == "mps":
            if not torch.backends.mps.is_available():
                self.fail(f"{value!r}: MPS is not available on this machine; use --device cpu", param, ctx)
        elif device.type != "cpu":
            self.fail(f"{value!r}: persona_lens runs on cpu, cuda or mps", param, ctx)
        return str(value)


def output_problem(path: Path, *, directory: bool) -> str | None:
    """Why ``path`` cannot be written (as a file, or as a folder to fill), or None."""
    if path.exists():
        if directory and not path.is_dir():
            return f"{path} exists and is not a directory"
        if not directory and path.is_dir():
            return f"{path} is a directory"
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            return f"{path} is not writable"
        if directory:
            return None
    ancestor = path.parent  # files are written to a temporary beside them, then renamed
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {path}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot write {path}: {ancestor} is not writable"
    return None


class OutputPath(click.ParamType):
    """A file (or, with ``directory=True``, a folder) the command may create or overwrite."""

    def __init__(self, *, directory: bool = False):
        self.directory = directory
        self.name = "DIR" if directory else "FILE"

    def convert(self, value: Any, param, ctx) -> Path:
        path = Path(value).expanduser()
        problem = output_problem(path, directory=self.directory)
        if problem:
            self.fail(problem, param, ctx)
        return path


INPUT_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
INPUT_DIR = click.Path(exists=True, file_okay=False, readable=True, path_type=Path)


# --------------------------------------------------------------------------- option groups


def _apply(f: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        f = option(f)
    return f


@dataclass(frozen=True)
class Backend:
    """Where and how models run: ``--model``, ``--device``, ``--dtype``, ``--batch-size`` and,
    for commands that generate, ``--backend`` (``engine``: who generates)."""

    model: str
    device: str | None
    dtype: str | None
    batch_size: int | None = None
    engine: str = "hf"

    def check(self, name: str | None = None) -> None:
        """The model name resolves (embedded, an existing local folder, or an org/name hub id);
        for a command that loads several models, so the second name fails before the first loads."""
        models.resolve_model_name(name or self.model)

    def load(self, name: str | None = None):
        return models.load_model(name or self.model, device=self.device, dtype=self.dtype)

    def generator(self, model) -> GenerationBackend:
        """The ``--backend`` generation backend for ``model`` (loaded by :meth:`load`): vLLM boots
        on the same checkpoint in ``model``'s dtype (float32 on CPU) on first use."""
        return make_backend(self.engine, model, model_name=self.model)


def _engine_available(ctx, param, value: str) -> str:
    if value == "vllm" and importlib.util.find_spec("vllm") is None:
        raise click.BadParameter(f"vLLM is not installed in this environment; install it with {INSTALL_HINT}")
    return value


def engine_option() -> Callable:
    """``--backend hf|vllm``: who generates (the one definition, for every generating command)."""
    return click.option("--backend", "engine", type=click.Choice(sorted(BACKENDS)), default="hf",
                        callback=_engine_available,
                        help="who generates: hf = this process (transformers); vllm = a vLLM engine with "
                             "per-request steering (capture stays on HF hooks)")


def backend_options(*, model: bool = True, batch_size: int | None = 8,
                    batch_help: str = "prompts per forward pass / generate call", engine: bool = False) -> Callable:
    """``--model --device --dtype [--batch-size] [--backend]`` -> a checked :class:`Backend`
    passed as ``backend``; ``engine=True`` for commands that generate."""
    options = [
        click.option("--device", type=TorchDevice(), default=None, show_default="cuda if available, else mps, else cpu",
                     help="torch device"),
        click.option("--dtype", type=TorchDtype(), default=None, show_default="float32 on cpu, else bfloat16",
                     help="weights dtype"),
    ]
    if model:
        options.insert(0, click.option("--model", default=models.DEFAULT_MODEL,
                                       help="embedded name (default, gemma-3-270m), HF org/name id or local folder"))
    if batch_size is not None:
        options.append(click.option("--batch-size", type=click.IntRange(min=1), default=batch_size, help=batch_help))
    if engine:
        options.append(engine_option())

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, device=None, dtype=None, **kwargs):
            backend = Backend(kwargs.pop("model", models.DEFAULT_MODEL), device, dtype, kwargs.pop("batch_size", None),
                              kwargs.pop("engine", "hf"))
            return f(*args, backend=backend, **kwargs)

        return _apply(wrapper, options)

    return decorate


@dataclass(frozen=True)
class JudgeOptions:
    """``--judge``, ``--base-url``, ``--api-key-env``."""

    spec: str
    base_url: str | None
    api_key_env: str

    @property
    def kind(self) -> str:
        return judges.parse_backend(self.spec)[0]

    def check(self) -> None:
        """Before any model loads: an API judge has its key and can be built, a local judge's
        model name resolves (building it would load the model)."""
        kind, name = judges.parse_backend(self.spec)
        if kind == "openai":
            endpoint = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            if not os.environ.get(self.api_key_env, "").strip() and \
                    urllib.parse.urlparse(endpoint).hostname == "api.openai.com":
                raise JudgeError(f"--judge {self.spec}: no API key; set the {self.api_key_env} environment variable "
                                 "(--api-key-env names another one), or pass --base-url for a server that needs none")
        if kind == "local":
            try:
                models.resolve_model_name(name or models.DEFAULT_MODEL)
            except UnknownModelError as exc:
                raise JudgeError(f"--judge {self.spec}: {exc}") from None
        elif kind == "calibrated":  # the file and its feature model's name, without loading the model
            judges.calibrated.check_calibrated_file(name or "")
        elif kind == "lexicon":  # the file exists and is a valid lexicon: a usage error (exit 2)
            try:
                self.build()
            except JudgeError as exc:
                raise click.BadParameter(str(exc), param_hint="'--judge'") from None
        else:
            self.build()

    def build(self, model=None, model_name: str | None = None):
        """The one place the command line constructs a judge (None for ``none``). A local judge
        of the model already loaded as ``model_name`` reuses ``model``."""
        kind, name = judges.parse_backend(self.spec)
        options: dict[str, Any] = {}
        if kind == "openai":
            options = {"base_url": self.base_url, "api_key_env": self.api_key_env}
        elif kind == "local" and model is not None and name == model_name:
            options = {"model": model}
        elif kind == "calibrated":  # reuses ``model`` if it is the one the judge's features read
            options = {"shared_model": model}
        return judges.make_judge(self.spec, **options)


def judge_options(default: str = "none", help: str = JUDGE_HELP) -> Callable:
    """``--judge --base-url --api-key-env`` -> a checked :class:`JudgeOptions` passed as ``judge``."""
    options = [
        click.option("--judge", "judge_spec", default=default, help=help),
        click.option("--base-url", default=None, show_default="$OPENAI_BASE_URL, else OpenAI",
                     help="OpenAI-compatible endpoint for --judge openai:MODEL"),
        click.option("--api-key-env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key for --judge openai:MODEL"),
    ]

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, judge_spec, base_url, api_key_env, **kwargs):
            judge = JudgeOptions(judge_spec, base_url, api_key_env)
            try:
                judges.parse_backend(judge_spec)
            except JudgeError as exc:
                raise click.BadParameter(str(exc), param_hint="'--judge'") from None
            judge.check()
            return f(*args, judge=judge, **kwargs)

        return _apply(wrapper, options)

    return decorate


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def kwargs(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


def max_new_tokens_option(default: int, help: str = "tokens generated per response") -> Callable:
    return click.option("--max-new-tokens", type=click.IntRange(min=1), default=default, help=help)


def decoding_options(*, max_new_tokens: int, top_p: bool = True) -> Callable:
    """``--max-new-tokens --temperature [--top-p] --seed`` -> :class:`Decoding` passed as ``decoding``."""
    options = [
        max_new_tokens_option(max_new_tokens),
        click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0,
                     help="sampling temperature; 0 = greedy"),
        click.option("--seed", type=int, default=0, help="sampling seed (the global RNG is left untouched)"),
    ]
    if top_p:
        options.insert(2, click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0,
                                       help="nucleus sampling mass, in (0, 1]"))

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, max_new_tokens, temperature, seed, top_p=1.0, **kwargs):
            return f(*args, decoding=Decoding(max_new_tokens, temperature, top_p, seed), **kwargs)

        return _apply(wrapper, options)

    return decorate


def positions_option(help: str = "tokens steered: response = last prompt token + generated tokens") -> Callable:
    return click.option("--positions", type=click.Choice(POSITIONS), default="response", help=help)


THREADS_HELP = "torch CPU threads: a number, 'default' (torch's) or 'auto' (1 when the machine is oversubscribed)"


def _threads_value(ctx, param, value: str) -> str:
    if value not in ("auto", "default") and not (value.isdigit() and int(value) >= 1):
        raise click.BadParameter(f"{value!r}: expected a number >= 1, 'default' or 'auto'")
    return value


def threads_option() -> Callable:
    """``--threads N|default|auto`` (checked here; applied by :func:`persona_lens.demo.set_threads`)."""
    return click.option("--threads", default="auto", callback=_threads_value, help=THREADS_HELP)


def strength_option() -> Callable:
    """``--strength S``: the calibrated dose (needs a vector with a dose card, see ``calibrate``)."""
    return click.option(
        "--strength", type=FiniteFloat(), default=None,
        help="calibrated dose instead of --alpha: the fraction of the measured unsteered-to-positive-prompt "
             "trait gap (0 = unsteered, 1 = as strong as the positive system prompt, < 0 suppresses); "
             "mapped to alpha through the vector's dose card (persona-lens calibrate)")
