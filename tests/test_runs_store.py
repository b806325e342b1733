"""The fingerprinted resume store, lock and stage cache on plain dicts (no model)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from persona_lens.errors import StoreLockedError
from persona_lens.io import JsonlAppender, atomic_write_text, iter_jsonl
from persona_lens.runs.stages import StageRunner, file_hash
from persona_lens.runs.store import ResumeStore, decoding_fields, fingerprint


def _store(path, **shared):
    return ResumeStore(path, ("item",), shared={"model": "m@1", **shared})


def _row(store, item, text, **fp):
    return {"item": item, "fingerprint": store.fingerprint(**fp), "text": text}


def test_fingerprint_changes_with_every_field():
    base = dict(model="m@1", prompt="hi", **decoding_fields(max_new_tokens=8, temperature=0.7, seed=1))
    fp = fingerprint(**base)
    assert fp == fingerprint(**dict(reversed(list(base.items()))))  # order-free
    assert len(fp) == 16
    for field, other in (("model", "m@2"), ("prompt", "hi "), ("max_new_tokens", 9), ("temperature", 0.8),
                         ("seed", 2), ("top_p", 0.9), ("steering", "layer 3")):
        assert fingerprint(**{**base, field: other}) != fp, field


def test_greedy_fingerprint_ignores_seed_and_top_p():
    a = decoding_fields(max_new_tokens=8, temperature=0.0, top_p=0.5, seed=1)
    b = decoding_fields(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=2)
    assert fingerprint(**a) == fingerprint(**b)


def test_get_append_resume_and_stale_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = _store(path)
    with store.writing():
        store.append([_row(store, 0, "a", prompt="p0"), _row(store, 1, "b", prompt="p1")])
    again = _store(path)
    assert again.get((0,), again.fingerprint(prompt="p0"))["text"] == "a"
    assert again.get((0,), again.fingerprint(prompt="p0 changed")) is None  # same key, other fingerprint: stale
    assert _store(path, max_new_tokens=9).get((0,), fingerprint(model="m@1", max_new_tokens=9, prompt="p0")) is None
    with again.writing():  # the regenerated row is appended; the stale one stays but is ignored
        again.append([_row(again, 0, "a2", prompt="p0 changed")])
    third = _store(path)
    assert third.get((0,), third.fingerprint(prompt="p0 changed"))["text"] == "a2"
    assert third.get((0,), third.fingerprint(prompt="p0"))["text"] == "a"
    assert len(list(iter_jsonl(path))) == 3


def test_duplicate_rows_collapse_newest_wins(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = _store(path)
    with store.writing():
        store.append([_row(store, 0, "old"), _row(store, 1, "b")])
        store.append([_row(store, 0, "new")])
    again = _store(path)
    assert len(again) == 2
    assert again.get((0,), again.fingerprint())["text"] == "new"
    assert [r["text"] for r in again.rows()] == ["b", "new"]


def test_rows_without_fingerprint_are_never_reused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"item": 0, "text": "legacy"}) + "\n")
    store = _store(path)
    assert len(store) == 0 and store.get((0,), store.fingerprint()) is None


def test_torn_tail_is_dropped_and_rows_before_it_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = _store(path)
    with store.writing():
        store.append([_row(store, 0, "a")])
    with path.open("a") as fh:  # killed mid-append
        fh.write('{"item": 1, "fingerp')
    store = _store(path)
    assert len(store) == 1
    with store.writing():
        store.append([_row(store, 1, "b")])
    assert [r["text"] for r in iter_jsonl(path)] == ["a", "b"]  # every line parses


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = _store(path)
    path.write_text(json.dumps(_row(store, 0, "a")))  # hand-written, no final newline
    store = _store(path)
    with store.writing():
        store.append([_row(store, 1, "b")])
    assert [r["text"] for r in iter_jsonl(path)] == ["a", "b"]


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"item": 0}\nnot json\n{"item": 1}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: malformed JSON line"):
        _store(path)


def test_append_needs_the_lock_and_a_fingerprint(tmp_path):
    store = _store(tmp_path / "rows.jsonl")
    with pytest.raises(RuntimeError, match="outside"):
        store.append([_row(store, 0, "a")])
    with store.writing(), pytest.raises(ValueError, match="fingerprint"):
        store.append([{"item": 0}])


def test_second_writer_fails_fast(tmp_path):
    path = tmp_path / "rows.jsonl"
    first, second = _store(path), _store(path)
    with first.writing(), pytest.raises(StoreLockedError, match=f"another persona-lens process is writing {path}"), \
            second.writing():
        pass
    with second.writing():  # released: the next writer gets it
        second.append([_row(second, 0, "a")])


def test_second_process_is_refused_and_a_killed_holder_releases(tmp_path):
    """A real second process: refused while the first holds the lock; after kill -9 of the
    holder the OS releases it, and the rows it fsynced are all there."""
    path = tmp_path / "rows.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from persona_lens.runs.store import ResumeStore
        s = ResumeStore({str(path)!r}, ("item",))
        with s.writing():
            s.append([{{"item": 0, "fingerprint": s.fingerprint()}}])
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError), _store(path).writing():
            pass
    finally:
        holder.kill()
        holder.wait()
    store = ResumeStore(path, ("item",))
    with store.writing():
        assert store.get((0,), store.fingerprint()) is not None


def test_refresh_reads_rows_appended_by_another_writer(tmp_path):
    path = tmp_path / "rows.jsonl"
    reader, writer = _store(path), _store(path)
    with writer.writing():
        writer.append([_row(writer, 0, "a")])
    assert reader.get((0,), reader.fingerprint()) is None
    with reader.writing():  # taking the lock reads what others appended first
        assert reader.get((0,), reader.fingerprint())["text"] == "a"


def test_importing_io_leaves_the_umask_alone():
    """No process-wide umask flip (another thread creating a file meanwhile would get mode 0666)."""
    code = ("import os; calls = []; real = os.umask; os.umask = lambda m: calls.append(m) or real(m); "
            "import persona_lens.io; print(calls)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_files_get_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "b.txt", "y")
        with JsonlAppender(tmp_path / "c.jsonl") as sink:
            sink.write([{"a": 1}])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640  # 0666 & ~0027
    assert stat.S_IMODE((tmp_path / "c.jsonl").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- stage cache


def _runner(out):
    return StageRunner(out, total=2, log=lambda m: None)


def test_stage_cache_reruns_on_changed_input_content(tmp_path):
    (tmp_path / "in.txt").write_text("v1")
    calls = []

    def stage():
        calls.append(1)
        (tmp_path / "out.txt").write_text(f"derived {len(calls)}")
        return {"files": ["out.txt"]}

    def run(params=None):
        return _runner(tmp_path).run("s", params or {"n": 1}, stage, inputs=["in.txt"], outputs=lambda r: r["files"])

    run()
    run()
    assert len(calls) == 1  # unchanged: cached
    (tmp_path / "in.txt").write_text("v2")  # same name, other content (e.g. another model's vector)
    run()
    assert len(calls) == 2
    run({"n": 2})
    assert len(calls) == 3
    (tmp_path / "out.txt").write_text("hand edited")  # an output that no longer matches its record
    run({"n": 2})
    assert len(calls) == 4
    (tmp_path / "out.txt").unlink()
    run({"n": 2})
    assert len(calls) == 5
    rec = json.loads((tmp_path / "stages" / "s.json").read_text())
    assert rec["inputs"] == {"in.txt": file_hash(tmp_path / "in.txt")}
    assert rec["output_hashes"] == {"out.txt": file_hash(tmp_path / "out.txt")}


_WRITER = """
import sys, time
from persona_lens.runs.store import ResumeStore
s = ResumeStore(sys.argv[1], ("item",), shared={"model": "m@1"})
with s.writing():
    for start in range(0, 40, 4):  # batches of 4; each row's text is a function of its key
        todo = [i for i in range(start, start + 4) if s.get((i,), s.fingerprint(prompt=i)) is None]
        if todo:
            s.append([{"item": i, "fingerprint": s.fingerprint(prompt=i), "text": f"row {i}"} for i in todo])
            print(start, flush=True)
            time.sleep(float(sys.argv[2]))
"""


def test_resume_after_kill_minus_9_finishes_with_exactly_the_uninterrupted_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "10"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "0"
        assert proc.stdout.readline().strip() == "4"  # two batches fsynced, then killed while sleeping
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    with path.open("a") as fh:  # and as if the kill had cut the next append short
        fh.write('{"item": 8, "fingerprint": "')
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "0"], check=True, env=env, capture_output=True)
    rows = list(iter_jsonl(path))
    assert [r["item"] for r in rows] == list(range(40))  # nothing lost, nothing duplicated
    assert all(r["text"] == f"row {r['item']}" for r in rows)


def test_steering_fingerprint_tells_operators_apart():
    """An ablate or cap steering holds no additive delta; its fingerprint must still differ from
    no steering, from each other and across cap bounds, or a resumed row would be reused."""
    import torch

    from persona_lens.runs.fingerprint import steering_fingerprint
    from persona_lens.steering import Steering

    v = torch.arange(1.0, 9.0)
    prints = [
        steering_fingerprint(Steering({}, "response")),
        steering_fingerprint(Steering.from_vector(v, 1, 2.0)),
        steering_fingerprint(Steering.from_vector(v, 1, operator="ablate")),
        steering_fingerprint(Steering.from_vector(v, 1, operator="cap", cap=(-1.0, 1.0))),
        steering_fingerprint(Steering.from_vector(v, 1, operator="cap", cap=(-1.0, 2.0))),
        steering_fingerprint(Steering.from_vector(v, 2, operator="ablate")),
    ]
    assert len(set(prints)) == len(prints)
    assert steering_fingerprint(None) is None
