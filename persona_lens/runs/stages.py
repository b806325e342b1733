"""A content-hash stage cache: a stage reruns exactly when what it depends on changed.

A stage's hash covers its parameters, the **content** (sha256) of its input files, and the
package format (persona_lens' version and :data:`~persona_lens.runs.store.STORE_FORMAT`).
Each run writes ``<out>/stages/<name>.json`` with that hash, the result, and the content hash
of each output file. A rerun skips the stage when the record's hash matches and every output
file still has the recorded content; otherwise the stage runs again. Since inputs are hashed
by content, a stage whose upstream stage reran but wrote identical files stays cached, and one
whose upstream files changed (another model, a hand edit) reruns: no hand-bumped version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io import atomic_write_json
from .fingerprint import content_hash
from .store import STORE_FORMAT


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StageRunner:
    """Runs named stages under ``out``, skipping those whose record is current (module docstring).

    ``run(name, params, fn, inputs=[...], outputs=lambda result: [...])``: ``params`` is
    JSON-able, ``inputs`` and the outputs are paths relative to ``out``; ``fn()`` returns the
    stage's (JSON-able) result, which a skipped stage returns from its record.
    """

    def __init__(self, out: str | os.PathLike, *, total: int, log: Callable[[str], None], force: bool = False):
        self.out = Path(out)
        self.total = total
        self.log = log
        self.force = force
        self.records: dict[str, dict] = {}
        self._outputs: dict[str, list[str]] = {}
        self.index = 0

    def stage_hash(self, name: str, params: Any, inputs: Sequence[str]) -> tuple[str, dict[str, str]]:
        """(the stage's hash, ``{input: content sha256}``)."""
        hashes = {rel: file_hash(self.out / rel) for rel in sorted(set(inputs))}
        key = content_hash({"stage": name, "params": params, "inputs": hashes,
                            "format": [__version__, STORE_FORMAT]})
        return key, hashes

    def _current(self, path: Path, key: str) -> dict | None:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(rec, dict) or rec.get("config_hash") != key:
            return None
        for rel, digest in (rec.get("output_hashes") or {}).items():
            if not (self.out / rel).is_file() or file_hash(self.out / rel) != digest:
                return None
        return rec

    def run(self, name: str, params: Any, fn: Callable[[], Any], *, inputs: Sequence[str] = (),
            outputs: Callable[[Any], list[str]] | None = None) -> Any:
        self.index += 1
        path = self.out / "stages" / f"{name}.json"
        key, input_hashes = self.stage_hash(name, params, inputs)
        rec = None if self.force or not path.exists() else self._current(path, key)
        if rec is not None:
            self.log(f"[{self.index}/{self.total}] {name}: cached (stage hash {key})")
            self.records[name] = {"status": "cached", "seconds": 0.0, "config_hash": key,
                                  "first_run_seconds": rec.get("seconds")}
            self._outputs[name] = list(rec.get("output_hashes") or {})
            return rec["result"]
        self.log(f"[{self.index}/{self.total}] {name}: running ...")
        t = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t
        files = list(outputs(result)) if outputs else []
        output_hashes = {rel: file_hash(self.out / rel) for rel in files}
        atomic_write_json(path, {"name": name, "config_hash": key, "params": params, "inputs": input_hashes,
                                 "result": result, "output_hashes": output_hashes, "seconds": secs,
                                 "format": [__version__, STORE_FORMAT]})
        self.records[name] = {"status": "ran", "seconds": secs, "config_hash": key}
        self._outputs[name] = files
        self.log(f"[{self.index}/{self.total}] {name}: done in {secs:.1f}s")
        return result

    def outputs_of(self, *names: str) -> list[str]:
        """The output files (relative to ``out``) of stages run or skipped so far."""
        return [f for n in names for f in self._outputs.get(n, [])]

    def hash_of(self, name: str) -> str | None:
        return self.records.get(name, {}).get("config_hash")
