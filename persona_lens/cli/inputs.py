"""Content checks of input files, run before any model loads.

click has already checked that each input exists and is a readable file; these read it once
and name the file and line of the first problem (not UTF-8, malformed JSON, a row the command
cannot use) or refuse a file without rows, as :class:`InputFileError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputFileError


def _not_utf8(where: str, raw: bytes, exc: UnicodeDecodeError, column: int | None = None) -> InputFileError:
    column = exc.start + 1 if column is None else column
    return InputFileError(f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {column})")


def check_text(path: Path) -> str:
    """The file's text; refuses non-UTF-8 bytes (naming the line) and files without any text."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        raise _not_utf8(f"{path}:{lineno}", raw, exc, column=exc.start - line_start + 1) from None
    if not text.strip():
        raise InputFileError(f"{path}: the file is empty")
    return text


def check_jsonl(path: Path, row_check: Callable[[dict], Any] | None = None) -> int:
    """Number of rows of a JSONL input; every line must be UTF-8, a JSON object and pass
    ``row_check`` (the library's own row parser). Refuses a file without rows."""
    n = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(where, raw, exc) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InputFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if row_check is not None:
                try:
                    row_check(row)
                except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                    raise InputFileError(f"{where}: {exc}") from None
            n += 1
    if n == 0:
        raise InputFileError(f"{path}: no rows (the file is empty)")
    return n


def check_prompt_file(path: Path, row_check: Callable[[dict], Any]) -> None:
    """A prompts file for ``task_prompts``: JSONL rows checked with ``row_check``; a .json or
    .txt file must be UTF-8 (and .json valid JSON) and not empty."""
    if path.suffix == ".jsonl":
        check_jsonl(path, row_check)
        return
    text = check_text(path)
    if path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
