"""Files: atomic writes (temporary file, then rename) and resumable JSONL."""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _create_temp(folder: Path, name: str) -> str:
    """A new empty file beside ``name``. Created with mode 0666 so the OS applies the umask, as
    for any file a program writes (mkstemp's 0600 would make artifacts private; reading the umask
    needs ``os.umask``, which changes it process-wide)."""
    while True:
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: never a half-written artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def json_safe(x: Any, *, str_keys: bool = False) -> Any:
    """``x`` with NaN/inf floats as ``None`` and numpy scalars as Python numbers, through nested
    dicts, lists and tuples (tuples become lists); ``str_keys``: dict keys as ``str(key)``."""
    if isinstance(x, dict):
        return {(str(k) if str_keys else k): json_safe(v, str_keys=str_keys) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, str_keys=str_keys) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a JSONL file, streamed. A truncated last line (an interrupted append) is skipped;
    a malformed line anywhere else raises ``ValueError`` naming ``file:line``."""
    for _, _, row in iter_jsonl_at(path):
        yield row


def iter_jsonl_at(path: str | os.PathLike, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, dict]]:
    """``(resume offset, resume line number, row)`` for each row from byte ``offset`` (a line
    start, numbered ``line``) on: a reader passes the last pair back to pick up only the rows
    appended since. A last line without its newline is an append in progress or torn by a kill:
    skipped if it does not parse; if it parses it is yielded but its resume point stays at its
    start (the line is read again once an appender has completed it)."""
    path = Path(path)
    with path.open("rb") as fh:
        fh.seek(offset)
        for raw in fh:
            start, offset = offset, offset + len(raw)
            lineno, line = line, line + 1
            if not raw.strip():
                continue
            complete = raw.endswith(b"\n")
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if not complete:  # a torn tail: JsonlAppender drops it before appending
                    return
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc})") from None
            yield (offset, line, row) if complete else (start, lineno, row)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))


class JsonlAppender:
    """Append rows, flushed and fsynced per batch, after dropping a truncated tail line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _drop_truncated_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_truncated_tail(path: Path) -> None:
    """A last line without its newline is a row if it parses (the newline is added), else the
    torn remains of an interrupted append (cut off)."""
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = 1 << 16
        start = size
        while start > 0:  # find the start of the last line, reading backwards
            start = max(0, start - block)
            fh.seek(start)
            cut = fh.read(size - start).rfind(b"\n")
            if cut >= 0:
                start += cut + 1
                break
        fh.seek(start)
        try:
            json.loads(fh.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            fh.truncate(start)
        else:
            fh.write(b"\n")


def write_table(data: Sequence[Mapping] | Mapping, path_without_suffix: str | os.PathLike) -> list[Path]:
    """``<path>.json`` (and ``<path>.csv`` when ``data`` is a list of flat dicts), atomically."""
    base = Path(path_without_suffix)
    paths = [atomic_write_json(Path(f"{base}.json"), data)]
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        fields: list[str] = []
        for r in data:
            fields.extend(k for k in r if k not in fields)
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in data:
            w.writerow({k: _csv_cell(r.get(k)) for k in fields})
        paths.append(atomic_write_text(Path(f"{base}.csv"), buf.getvalue()))
    return paths


def _csv_cell(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v
