"""An on-disk, append-only cache of judge results (one JSON line per result).

Keys are sha256 digests of (model, prompt, scoring mode); prompts themselves are not stored,
and neither is anything from the request headers (no API keys). Each result is appended and
flushed as soon as it arrives, so an interrupted run loses nothing and a rerun makes no
request for what is already there. A torn last line (a kill mid-write) is skipped on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

CACHE_FILE = "judge_cache.jsonl"


def default_cache_dir() -> Path:
    """``$PERSONA_LENS_CACHE/judge``, else ``$XDG_CACHE_HOME/persona_lens/judge`` (~/.cache)."""
    root = os.environ.get("PERSONA_LENS_CACHE")
    if root:
        return Path(root) / "judge"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "persona_lens" / "judge"


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON encoding of ``parts``."""
    blob = json.dumps(list(parts), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """``get(key)`` / ``put(key, value)`` backed by ``<folder>/judge_cache.jsonl``; thread-safe."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self._fh = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                    self._data[record["key"]] = record["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line from an interrupted write

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: str, value: Any, **meta: Any) -> None:
        line = json.dumps({"key": key, "value": value, **meta}, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._data[key] = value
            fh = self._handle()
            fh.write(line + "\n")
            fh.flush()

    def _handle(self):
        if self._fh is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            needs_newline = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)
            if needs_newline:  # finish a torn line so the next record starts clean
                self._fh.write("\n")
        return self._fh

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._fh is not None:
                self._fh.close()
        except Exception:
            pass
