"""Files: atomic writes (temporary file, then rename) and resumable JSONL."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

# mkstemp creates 0600 files; artifacts get the usual permissions (0666 & ~umask) instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: never a half-written artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
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
    """Rows of a JSONL file, streamed. A truncated last line (an interrupted append) is skipped."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        pending = None
        for lineno, line in enumerate(fh, 1):
            if pending is not None:
                raise ValueError(f"{path}:{lineno - 1}: malformed JSON line ({pending})")
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                pending = exc  # tolerated only if it is the last line
        # pending at EOF: an interrupted write; the resume logic rewrites it.


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

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_truncated_tail(path: Path) -> None:
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(cut)
