"""vLLM backend on CPU, without vLLM: the worker extension's per-request steering and capture,
driven by a stand-in for vLLM's V1 model runner (flat token rows, ``input_batch.req_ids``,
``query_start_loc``, per-token ``positions``) and a model with vLLM's fused-residual decoder
layers, checked against a per-sequence reference that applies the position rules as written
(response: index >= n - 1; prompt: index < n; all: every token). The real engine is checked
against HF in tests/test_vllm_engine.py (marker ``vllm``)."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from persona_lens.errors import LayerOutOfRangeError, VectorShapeError
from persona_lens.interop.vllm import VLLMBackend
from persona_lens.interop.vllm_worker import (
    KEY,
    SteeringWorkerExtension,
    apply_layer,
    decode_rows,
    decode_vector,
    fingerprint,
    request_payload,
)
from persona_lens.interop.vllm_worker import _plan as plan_step  # the per-step plan the hooks read
from persona_lens.steering import Steering
from persona_lens.vectors import PersonaVector

N_LAYERS, D, VOCAB = 4, 8, 50


class FusedLayer(nn.Module):
    """vLLM's decoder-layer protocol: ``(positions, hidden, residual) -> (out, residual)``, the
    residual stream being ``out + residual`` (summed by the next layer's fused add)."""

    def __init__(self, seed: int):
        super().__init__()
        self.lin = nn.Linear(D, D)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)) / D)

    def forward(self, positions, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return torch.tanh(self.lin(residual)), residual


class FlatModel(nn.Module):
    """A vLLM-style model over flat token rows ``[num_tokens]`` (all requests concatenated)."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(VOCAB, D)
        self.model.layers = nn.ModuleList(FusedLayer(i) for i in range(N_LAYERS))

    def forward(self, input_ids, positions):
        hidden, residual = self.model.embed(input_ids), None
        for layer in self.model.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden + residual


def reference_stream(model: FlatModel, ids: list[int], prompt_len: int, steering: Steering | None) -> torch.Tensor:
    """One sequence on its own: ``[len(ids), D]`` final residual stream, steered token by token."""
    out = []
    for index, t in enumerate(ids):
        x = model.model.embed(torch.tensor([t]))[0]
        for l, layer in enumerate(model.model.layers):
            x = x + torch.tanh(layer.lin(x))
            if steering is not None and l in steering.deltas:
                hit = {"response": index >= prompt_len - 1, "prompt": index < prompt_len, "all": True}
                if hit[steering.positions]:
                    x = x + steering.deltas[l]
        out.append(x)
    return torch.stack(out)


class Runner:
    """Stand-in for vLLM's V1 model runner: what the extension reads at each forward."""

    def __init__(self, model):
        self.model = model
        self.requests: dict[str, types.SimpleNamespace] = {}
        self.input_batch = types.SimpleNamespace(req_ids=[])
        self.query_start_loc = types.SimpleNamespace(np=np.zeros(16, dtype=np.int32))
        self.positions = torch.zeros(64, dtype=torch.long)  # reused every step, as vLLM's buffer is
        self.model_config = types.SimpleNamespace(enforce_eager=True)  # the hooks refuse a compiled engine

    def get_model(self):
        return self.model

    def add(self, rid, prompt, payload):
        params = types.SimpleNamespace(extra_args={KEY: payload} if payload else None)
        self.requests[rid] = types.SimpleNamespace(sampling_params=params, prompt_token_ids=prompt)

    def step(self, schedule: list[tuple[str, list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Run one forward over ``(request id, token ids, positions)`` chunks; output rows per request."""
        self.input_batch.req_ids = [rid for rid, _, _ in schedule]
        lens = [len(ids) for _, ids, _ in schedule]
        self.query_start_loc.np[: len(lens) + 1] = np.concatenate([[0], np.cumsum(lens)])
        ids = torch.tensor([t for _, chunk, _ in schedule for t in chunk])
        pos = torch.tensor([p for _, _, chunk in schedule for p in chunk])
        self.positions[: len(pos)] = pos
        with torch.no_grad():
            out = self.model(input_ids=ids, positions=self.positions[: len(pos)])
        rows, start = {}, 0
        for (rid, _ids, _), n in zip(schedule, lens):
            rows[rid] = out[start:start + n]
            start += n
        return rows


class Worker(SteeringWorkerExtension):
    def __init__(self, runner):
        self.model_runner = runner


def vec(seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(D, generator=torch.Generator().manual_seed(seed))


def test_chunked_continuous_batch_steers_each_token_by_its_request():
    """Three requests with their own layers/positions (and one unsteered) interleaved across
    chunked-prefill and decode steps: every output row equals its sequence run alone."""
    torch.manual_seed(0)
    model = FlatModel()
    runner = Runner(model)
    worker = Worker(runner)
    assert worker.persona_lens_install() == list(range(N_LAYERS))
    assert worker.persona_lens_install() == list(range(N_LAYERS))  # idempotent: hooks once
    seqs = {"a": [3, 4, 5, 6, 7, 8, 9, 10], "b": [11, 12, 13, 14], "c": [20, 21, 22, 23, 24], "d": [30, 31, 32]}
    prompt_len = {"a": 6, "b": 3, "c": 4, "d": 2}
    steerings = {"a": Steering({1: vec(1), 3: vec(2)}, "response"), "b": Steering({0: vec(3)}, "prompt"),
                 "c": Steering({2: vec(4)}, "all"), "d": None}
    for rid, s in steerings.items():
        runner.add(rid, seqs[rid][:prompt_len[rid]], request_payload(s.deltas, s.positions) if s else None)

    def chunk(rid, lo, hi):
        return (rid, seqs[rid][lo:hi], list(range(lo, hi)))

    got: dict[str, list[torch.Tensor]] = {rid: [] for rid in seqs}
    for schedule in ([chunk("a", 0, 4), chunk("b", 0, 3)],  # a's prompt split over two steps
                     [chunk("b", 3, 4), chunk("a", 4, 6), chunk("c", 0, 2), chunk("d", 0, 2)],
                     [chunk("c", 2, 4), chunk("a", 6, 7), chunk("d", 2, 3)],
                     [chunk("a", 7, 8), chunk("c", 4, 5)]):
        for rid, rows in runner.step(schedule).items():
            got[rid].append(rows)
    for rid, ids in seqs.items():
        want = reference_stream(model, ids, prompt_len[rid], steerings[rid])
        torch.testing.assert_close(torch.cat(got[rid]), want, rtol=0, atol=1e-6)
    unsteered = reference_stream(model, seqs["a"], prompt_len["a"], None)
    assert not torch.allclose(torch.cat(got["a"]), unsteered)  # the steering is visible


def test_capture_records_each_request_by_position_across_chunks():
    model = FlatModel()
    runner = Runner(model)
    worker = Worker(runner)
    worker.persona_lens_install()
    ids = [1, 2, 3, 4, 5, 6]
    runner.add("x", ids, request_payload({}, "all", prompt_len=4, capture=[0, 2], capture_key="kx"))
    runner.add("y", ids, None)
    runner.step([("y", ids[:2], [0, 1]), ("x", ids[:4], [0, 1, 2, 3])])
    runner.step([("x", ids[4:], [4, 5]), ("y", ids[2:], [2, 3, 4, 5])])
    taken = worker.persona_lens_take(["kx"])
    assert set(taken["kx"]) == {0, 2}
    with torch.no_grad():
        x = model.model.embed(torch.tensor(ids))
        streams = []
        for layer in model.model.layers:
            x = x + torch.tanh(layer.lin(x))
            streams.append(x)
    for layer in (0, 2):
        torch.testing.assert_close(decode_rows(*taken["kx"][layer]), streams[layer], rtol=0, atol=1e-6)
    assert worker.persona_lens_take(["kx"]) == {"kx": {}}  # taken once


def test_steered_layer_materialises_the_stream_in_hf_order():
    """``(out + residual) + delta`` then ``+ 0`` in the next fused add: bit-identical to HF's
    ``hidden = residual + mlp_out; hidden += delta``."""
    g = torch.Generator().manual_seed(5)
    out, residual, delta = (torch.randn(3, D, generator=g) for _ in range(3))
    runner = Runner(FlatModel())
    runner.add("r", [1, 2, 3], request_payload({0: delta[0]}, "all"))
    worker = Worker(runner)
    worker.persona_lens_install()
    runner.input_batch.req_ids = ["r"]
    runner.query_start_loc.np[:2] = [0, 3]
    plan = plan_step(worker._persona_lens, runner, torch.arange(3))
    h, r = apply_layer((out, residual), plan, 0, {})
    assert torch.equal(h + r, (residual + out) + delta[0])
    assert torch.equal(r, torch.zeros_like(residual))
    fused = (out, residual)
    assert apply_layer(fused, plan, 1, {}) is fused  # an unsteered layer: untouched


def test_payload_roundtrip_and_fingerprint():
    v = vec(7)
    p = request_payload({2: v, 5: torch.zeros(D)}, "prompt")
    assert set(p["steer"]) == {"2"}  # zero deltas dropped: alpha 0 is exactly unsteered
    assert torch.equal(decode_vector(p["steer"]["2"]), v)
    assert fingerprint(p) == fingerprint(request_payload({2: v.clone()}, "prompt"))
    assert fingerprint(p) != fingerprint(request_payload({2: v}, "response"))
    assert fingerprint(p) != fingerprint(request_payload({2: v * 1.0001}, "prompt"))
    with pytest.raises(ValueError, match="positions"):
        request_payload({2: v}, "middle")


# --------------------------------------------------------------------------- the backend, unbooted


class FakeLLM:
    def __init__(self):
        cfg = types.SimpleNamespace(num_hidden_layers=N_LAYERS, hidden_size=D)
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(hf_config=cfg))


@pytest.fixture
def backend() -> VLLMBackend:
    b = VLLMBackend("m")
    b._llm = FakeLLM()
    return b


def test_row_steerings(backend):
    pv = PersonaVector(torch.randn(N_LAYERS, D, generator=torch.Generator().manual_seed(1)), {"persona": "evil"})
    per_row = Steering.per_row([pv, None, pv], layer=2, alphas=[1.0, 1.0, 0.0], positions="prompt")
    rows = backend.row_steerings(per_row, 3)
    assert rows[1] is None and rows[2] is None  # no vector / alpha 0: a plain request
    assert torch.equal(rows[0].deltas[2], pv.layer(2).float()) and rows[0].positions == "prompt"
    shared = backend.row_steerings(Steering.from_vector(pv, [1, 3], 2.0, "all"), 2)
    assert all(torch.equal(s.deltas[3], 2.0 * pv.layer(3)) for s in shared)
    assert backend.row_steerings(None, 2) == [None, None]
    with pytest.raises(ValueError, match="rows"):
        backend.row_steerings(per_row, 2)
    with pytest.raises(ValueError, match="row steerings"):
        backend.row_steerings([None], 2)
    with pytest.raises(LayerOutOfRangeError):
        backend.row_steerings([Steering({N_LAYERS: torch.ones(D)})], 1)
    with pytest.raises(VectorShapeError):
        backend.row_steerings([Steering({0: torch.ones(D + 1)})], 1)


def test_bad_engine_args():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMBackend("m", tensor_parallel_size=0)
    with pytest.raises(ValueError, match="enforce_eager"):
        VLLMBackend("m", enforce_eager=False)
    b = VLLMBackend("m", 2, 2, distributed_executor_backend="ray", max_model_len=2048)
    assert b.engine_kwargs == {"distributed_executor_backend": "ray", "max_model_len": 2048}
    assert not b.booted


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_names_the_setup_script():
    backend = VLLMBackend("default")  # construction never boots or imports vllm
    assert "vllm" not in sys.modules
    with pytest.raises(ImportError, match="setup_vllm.sh"):
        _ = backend.llm
