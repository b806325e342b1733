"""The command line's one error boundary.

Every failure reaches the user as one line on stderr: ``persona-lens: error: <what>: <where>``.
Exit codes: 0 success, 1 a failure while working (bad file content, a model or vector problem,
a missing API key, a locked file, an I/O error), 2 a bad command line (unknown option, missing
argument, a value out of range, an input path that does not exist, an output path that cannot
be written), 130 interrupted by Ctrl-C, 143 terminated by SIGTERM. ``--debug`` (or
``PERSONA_LENS_DEBUG=1``) re-raises instead, with the traceback. Interrupts unwind normally, so
atomic writes remove their temporary files and resumable JSONL keeps every finished row.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from ..errors import PersonaLensError

PROG = "persona-lens"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPT, EXIT_TERMINATED = 1, 2, 130, 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the command unwinds as it does on Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(exc: BaseException) -> str:
    """One line naming the problem and, where the exception knows it, the file."""
    if isinstance(exc, PersonaLensError):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        where += f" -> {exc.filename2}" if exc.filename2 is not None else ""
        text = f"{type(exc).__name__}: {exc.strerror}{where}"
    elif isinstance(exc, UnicodeDecodeError):
        text = f"not UTF-8 text: {exc}"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"malformed JSON: {exc}"
    elif isinstance(exc, (ValueError, OSError)):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc} (unexpected; rerun with --debug for the traceback)"
    return " ".join(text.split())


def _error(text: str) -> None:
    click.echo(f"{PROG}: error: {text}", err=True)


class PersonaLensGroup(click.Group):
    """The top-level group: commands listed in the order they were added (the workflow order),
    and ``main`` as the error boundary, so ``persona-lens``, ``main([...])`` and click's
    ``CliRunner`` all get the same one-line errors and exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        state: dict[str, Any] = {"debug": False}
        with sigterm_as_interrupt():
            code = _exit_code(lambda: super(PersonaLensGroup, self).main(
                args, prog_name or PROG, complete_var, standalone_mode=False, obj=state, **extra), state)
        if standalone_mode:
            sys.exit(code)
        return code


def _exit_code(invoke, state: dict[str, Any]) -> int:
    try:
        rv = invoke()
        return rv if isinstance(rv, int) else 0
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        return EXIT_USAGE
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else PROG
        _error(f"{' '.join(exc.format_message().split())} (see '{path} --help')")
        return EXIT_USAGE
    except click.ClickException as exc:
        _error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt) as exc:
        cause = exc.__cause__ if isinstance(exc, click.Abort) else exc
        terminated = isinstance(cause, Terminated)
        click.echo(f"{PROG}: {'terminated' if terminated else 'interrupted'}; rerun the same command to resume",
                   err=True)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPT
    except Exception as exc:
        if state["debug"]:
            raise
        _error(describe(exc))
        return EXIT_ERROR
