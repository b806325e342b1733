"""An append-only JSONL resume store whose rows carry a fingerprint.

A resumable run (contrastive generation, the creativity harness, screening's base responses,
the judge cache) appends one JSON row per finished unit of work. A row holds

* its **key**: which unit of work it is (e.g. pair, question, sample, polarity), and
* ``fingerprint``: a short content hash (:func:`fingerprint`) of everything that decides its
  content: the model (id and weights, :func:`persona_lens.runs.fingerprint.model_fingerprint`),
  the decoding parameters (max_new_tokens, temperature, top_p, seed, steering), the exact
  prompt text (system + user) and :data:`STORE_FORMAT`.

A rerun looks each unit up by (key, fingerprint). **A row whose key matches but whose
fingerprint differs is stale and never reused**: the unit is generated again and the new row
appended. Stale rows are not deleted (the file is append-only: what was written is never
rewritten, so a kill can lose at most the batch being written); they are ignored on read.
Among rows with the same (key, fingerprint) the newest wins, so rows written twice (say by a
run that regenerated a partly written batch) collapse into one.

Writing happens inside :meth:`ResumeStore.writing`, which holds ``.<file>.lock`` (the
``filelock`` package) for the whole run: a second process that tries to write the same file
fails at once with :class:`~persona_lens.errors.StoreLockedError` rather than duplicating every
row. The lock is an OS lock, released even when its holder is killed. Rows are appended a batch
at a time, flushed and fsynced; a torn last line (a kill mid-write) is dropped when a writer
opens the file. Read errors name ``file:line``.

A store built with ``window=N`` reads lazily instead, in lockstep with its lookups (for runs
that look rows up in the order an earlier run wrote them, such as screening): :meth:`get`
reads forward only until it finds the row, and at most ``N`` recently read or written rows are
held. Memory is then flat in the file's size; a row evicted from the window is simply not
found again (the caller regenerates it), so correctness never depends on the lookup order.
Of rows written twice with one (key, fingerprint), a windowed store returns the first it reads:
use it for deterministic work (greedy base responses), whose duplicates are identical.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import StoreLockedError
from ..io import JsonlAppender, iter_jsonl_at
from .fingerprint import content_hash

#: Bump when the meaning of stored rows changes: every older row becomes stale.
STORE_FORMAT = 1
FINGERPRINT = "fingerprint"


def fingerprint(**fields: Any) -> str:
    """Short content hash of ``fields`` (JSON-able) and :data:`STORE_FORMAT`."""
    return content_hash({"store_format": STORE_FORMAT, **fields})


def decoding_fields(*, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int | None = None,
                    steering: str | None = None) -> dict:
    """The decoding part of a fingerprint. Greedy decoding ignores ``top_p`` and ``seed``, so
    they are left out for ``temperature == 0`` (changing them then regenerates nothing)."""
    sampled = temperature > 0
    return {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
            "top_p": float(top_p) if sampled else None, "seed": seed if sampled else None, "steering": steering}


def lock_path_of(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def write_lock(path: str | os.PathLike, timeout: float = 0.0) -> Iterator[None]:
    """Hold the hidden ``.<name>.lock`` beside ``path``; waits up to ``timeout`` seconds (0: one
    try), then :class:`StoreLockedError`. The lock file stays (deleting it on release would race
    with a waiting process); being hidden, it does not clutter output folders."""
    lock_path = lock_path_of(path)
    lock = FileLock(lock_path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise StoreLockedError(
            f"another persona-lens process is writing {path} (it holds {lock_path}); wait for it to "
            "finish or write to another file") from None
    try:
        yield
    finally:
        lock.release()


class ResumeStore:
    """Rows of one JSONL file, indexed by (key, fingerprint).

    ``key_fields``: the row fields that name a unit of work. ``shared``: fingerprint fields
    common to every row of a run (model, decoding); :meth:`fingerprint` adds per-row fields
    (the prompt). Typical use::

        store = ResumeStore(path, ("question", "sample"), shared={"model": ..., **decoding_fields(...)})
        with store.writing():
            fp = store.fingerprint(prompt=text)
            if store.get((q, s), fp) is None:
                store.append([{"question": q, "sample": s, "fingerprint": fp, "response": ...}])
    """

    def __init__(self, path: str | os.PathLike, key_fields: Sequence[str], *, shared: Mapping[str, Any] | None = None,
                 window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 rows, got {window}")
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.shared = dict(shared or {})
        self.window = window
        self._rows: dict[tuple[tuple, str], dict] = {}
        self._offset, self._line = 0, 1  # where the next read starts (byte offset, line number)
        self._reader: Iterator[tuple[int, int, dict]] | None = None  # windowed: the open lazy read
        self._exhausted = False  # windowed: the lazy read reached the end of the file
        self._sink: JsonlAppender | None = None
        self.refresh()

    # ------------------------------------------------------------------ reading
    def _remember(self, row: dict) -> None:
        fp = row.get(FINGERPRINT)
        if fp is None:  # rows without one predate fingerprints: never reused
            return
        self._rows.pop((self.key(row), fp), None)
        self._rows[(self.key(row), fp)] = row  # re-inserted: the newest is also last
        if self.window is not None:
            while len(self._rows) > self.window:
                del self._rows[next(iter(self._rows))]  # the least recently read, written or found

    def _restart_if_replaced(self) -> None:
        if self.path.stat().st_size < self._offset:  # replaced or truncated behind our back
            self._rows.clear()
            self._offset, self._line = 0, 1

    def refresh(self) -> None:
        """Read rows appended to the file since the last read (by this or another process); a
        windowed store only notes that there may be more to read (:meth:`get` reads them)."""
        if self.window is not None:
            self._reader, self._exhausted = None, False
            return
        if not self.path.exists():
            return
        self._restart_if_replaced()
        for offset, line, row in iter_jsonl_at(self.path, self._offset, self._line):
            self._offset, self._line = offset, line
            self._remember(row)

    def _read_until(self, wanted: tuple[tuple, str]) -> dict | None:
        """Windowed: read forward until the row ``wanted`` (key, fingerprint) or the end of the file."""
        while not self._exhausted:
            if self._reader is None:
                if not self.path.exists():
                    break
                self._restart_if_replaced()
                self._reader = iter_jsonl_at(self.path, self._offset, self._line)
            item = next(self._reader, None)
            if item is None:
                break
            self._offset, self._line, row = item
            self._remember(row)
            if (self.key(row), row.get(FINGERPRINT)) == wanted:
                return row
        self._reader, self._exhausted = None, True
        return None

    def key(self, row: Mapping[str, Any]) -> tuple:
        return tuple(row[f] for f in self.key_fields)

    def fingerprint(self, **fields: Any) -> str:
        """The fingerprint of a row: :attr:`shared` plus ``fields``."""
        return fingerprint(**{**self.shared, **fields})

    def get(self, key: tuple, fp: str) -> dict | None:
        """The newest row with this key and fingerprint; None if there is none (stale rows,
        same key but another fingerprint, are never returned)."""
        wanted = (tuple(key), fp)
        row = self._rows.get(wanted)
        if self.window is None:
            return row
        if row is not None:
            self._remember(row)  # recently found: kept in the window
            return row
        return self._read_until(wanted)

    def rows(self) -> list[dict]:
        """Every current row: the newest per (key, fingerprint), in order of last write."""
        if self.window is not None:
            raise RuntimeError(f"{self.path}: a windowed store holds only its {self.window} most recent rows")
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def writing(self, timeout: float = 0.0) -> Iterator[ResumeStore]:
        """Hold the file's write lock (see :func:`write_lock`) and open it for :meth:`append`.
        Rows another process appended before the lock was taken are read first."""
        if self._sink is not None:
            raise RuntimeError(f"{self.path} is already open for writing by this store")
        with write_lock(self.path, timeout):
            self._sink = JsonlAppender(self.path)  # drops a torn tail, under the lock
            try:
                self.refresh()
                yield self
            finally:
                self._sink.close()
                self._sink = None

    def append(self, rows: Iterable[dict]) -> None:
        """Append a batch (flushed and fsynced together); every row needs its ``fingerprint``."""
        if self._sink is None:
            raise RuntimeError(f"append to {self.path} outside 'with store.writing():'")
        rows = list(rows)
        for row in rows:
            if FINGERPRINT not in row:
                raise ValueError(f"a row for {self.path} has no {FINGERPRINT!r}: {row!r:.200}")
        if not rows:
            return
        self._sink.write(rows)
        if self.window is None:
            self.refresh()
        else:
            for row in rows:
                self._remember(row)
