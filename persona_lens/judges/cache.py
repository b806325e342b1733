"""An on-disk, append-only cache of judge results (one JSON line per result).

Keys (:func:`cache_key`) are sha256 digests of the endpoint (base URL), the judge model, the
exact prompt and the scoring/sampling settings: the same model name served by another endpoint
is another judge. Prompts themselves are not stored, and neither is anything from the request
headers (no API keys). The file is a :class:`persona_lens.runs.store.ResumeStore`: each result
is appended and fsynced as soon as it arrives (holding ``.<file>.lock`` for that one line, so
processes sharing the cache interleave whole lines), an interrupted run loses nothing, a rerun
makes no request for what is already there, and a torn last line (a kill mid-write) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..runs.store import ResumeStore

#: ``v2``: keys include the endpoint; the keys of the older ``judge_cache.jsonl`` did not.
CACHE_FILE = "judge_cache.v2.jsonl"
#: Seconds a ``put`` waits for another process's one-line append.
LOCK_WAIT_S = 30.0


def default_cache_dir() -> Path:
    """``$PERSONA_LENS_CACHE/judge``, else ``$XDG_CACHE_HOME/persona_lens/judge`` (~/.cache)."""
    root = os.environ.get("PERSONA_LENS_CACHE")
    if root:
        return Path(root) / "judge"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "persona_lens" / "judge"


def cache_key(*, endpoint: str, model: str, prompt: str, settings: Any) -> str:
    """sha256 of what decides a judge's answer: where it is asked (``endpoint``, e.g. the base
    URL), which ``model``, the exact ``prompt`` and the request ``settings`` (scoring mode,
    sampling). Keyword-only, so no caller can leave the endpoint out."""
    blob = json.dumps([endpoint, model, prompt, settings], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """``get(key)`` / ``put(key, value)`` backed by ``<folder>/judge_cache.v2.jsonl``; thread-safe."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE
        self._lock = threading.Lock()
        self._store = ResumeStore(self.path, ("key",))
        self._fp = self._store.fingerprint()  # the key already holds everything that decides a value

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return self._store.get((key,), self._fp) is not None

    def get(self, key: str, default: Any = None) -> Any:
        row = self._store.get((key,), self._fp)
        return default if row is None else row["value"]

    def put(self, key: str, value: Any, **meta: Any) -> None:
        with self._lock, self._store.writing(timeout=LOCK_WAIT_S):
            self._store.append([{"key": key, "value": value, **meta, "fingerprint": self._fp}])

    def close(self) -> None:
        """Nothing to release: the file is open only during a ``put``."""
