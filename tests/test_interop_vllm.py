"""vLLM backend on CPU, without vLLM: our steering/capture requests become the right
TransformerLens specs (validated by TL's own validators, right hook names), and — run through
TL's own vLLM worker code (``plugin._make_capture_hook`` + ``worker_extension._apply_intervention``)
on the HF model — they reproduce persona_lens' own steering and capture."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from persona_lens.interop.vllm import INSTALL_HINT, VLLMBackend, resid_post_hook
from persona_lens.steering import Steering
from persona_lens.vectors import PersonaVector
from transformer_lens.model_bridge.generalized_components.block import BlockBridge
from transformer_lens.model_bridge.sources.vllm import plugin, worker_extension
from transformer_lens.model_bridge.sources.vllm.driver import VLLMDriver
from transformer_lens.model_bridge.sources.vllm.intervention_specs import validate_spec
from transformer_lens.model_bridge.sources.vllm.overlays import DecoderOnlyOverlay

N_LAYERS, D = 4, 8


def tl_driver(n_layers: int, width: int, *, batching=False, positions=False) -> VLLMDriver:
    """A VLLMDriver shell with the state its own ``_validate_interventions`` reads (no engine)."""
    drv = object.__new__(VLLMDriver)
    specs = DecoderOnlyOverlay().capture_specs(types.SimpleNamespace(hidden_size=width, num_hidden_layers=n_layers))
    drv._hook_widths = {name: w for name, (_p, w) in specs.items()}
    drv.supported_hook_points = frozenset(specs)
    drv._enable_batching = batching
    drv._enable_position_interventions = positions
    return drv


class Cfg(types.SimpleNamespace):
    pass


class StubBridge:
    """Just enough RemoteBridge surface for spec construction."""

    def __init__(self, n_layers=N_LAYERS, width=D):
        self.cfg = Cfg(n_layers=n_layers, d_model=width)
        self.tokenizer = None

    def close(self):
        pass


@pytest.fixture
def vec() -> PersonaVector:
    return PersonaVector(torch.randn(N_LAYERS, D, generator=torch.Generator().manual_seed(1)), {"persona": "evil"})


# --------------------------------------------------------------------------- no vLLM here


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_names_the_extra():
    backend = VLLMBackend("Qwen/Qwen2.5-0.5B-Instruct")  # construction never boots or imports vllm
    assert "vllm" not in sys.modules
    with pytest.raises(ImportError, match=r"pip install persona-lens\[vllm\]"):
        backend.bridge
    assert INSTALL_HINT == "pip install persona-lens[vllm]"


def test_bad_parallel_args():
    with pytest.raises(ValueError):
        VLLMBackend("m", tensor_parallel_size=0)
    with pytest.raises(ValueError, match="parallelism"):
        VLLMBackend("m", tensor_parallel_size=2, enable_batching=True)
    with pytest.raises(ValueError, match="compiled"):
        VLLMBackend("m", enable_batching=True, enable_position_interventions=True)
    b = VLLMBackend("m", 2, 2, distributed_executor_backend="ray", max_model_len=2048)
    assert b.engine_kwargs == {"distributed_executor_backend": "ray", "max_model_len": 2048}


# --------------------------------------------------------------------------- specs


def test_hook_names_are_tl_vllm_resid_post():
    overlay = DecoderOnlyOverlay().capture_specs(types.SimpleNamespace(hidden_size=D, num_hidden_layers=N_LAYERS))
    backend = VLLMBackend("m", bridge=StubBridge())
    names = backend.capture_specs([3, 1, 1])
    assert names == ("blocks.1.hook_out", "blocks.3.hook_out")
    for l, name in zip((1, 3), names):
        assert name == resid_post_hook(l)
        assert overlay[name] == (f"model.layers.{l}", D)  # the decoder layer's output
    # ...which is TL's canonical name behind blocks.{l}.hook_resid_post.
    assert BlockBridge.hook_aliases["hook_resid_post"] == "hook_out"
    with pytest.raises(Exception, match="out of range"):
        backend.capture_specs([N_LAYERS])


def test_steer_specs_all_positions(vec):
    backend = VLLMBackend("m", bridge=StubBridge())
    steering = Steering.from_vector(vec, [2, 0], alpha=3.0, positions="all")
    specs = backend.steer_specs(steering)
    assert list(specs) == ["blocks.0.hook_out", "blocks.2.hook_out"]
    for l in (0, 2):
        spec = specs[f"blocks.{l}.hook_out"]
        assert spec["op"] == "add" and "pos" not in spec
        torch.testing.assert_close(torch.tensor(spec["value"]), 3.0 * vec.layer(l))
        assert validate_spec(f"blocks.{l}.hook_out", spec, width=D) == spec
    # TL's driver-level validation: hook membership, pos gating.
    assert tl_driver(N_LAYERS, D)._validate_interventions(specs) == specs
    combined = steering.combine(Steering.from_vector(vec, 2, alpha=1.0, positions="all"))
    torch.testing.assert_close(torch.tensor(backend.steer_specs(combined)["blocks.2.hook_out"]["value"]),
                               4.0 * vec.layer(2))
    assert backend.steer_specs(Steering.from_vector(vec, 2, alpha=0.0, positions="all")) == {}
    assert backend.steer_specs(None) == {}


@pytest.mark.parametrize("positions", ["response", "prompt"])
def test_generation_positions_not_expressible(vec, positions):
    backend = VLLMBackend("m", bridge=StubBridge())
    with pytest.raises(NotImplementedError, match=f"positions='{positions}'"):
        backend.steer_specs(Steering.from_vector(vec, 1, 2.0, positions=positions))


def test_capture_positions_become_pos_lists(vec):
    backend = VLLMBackend("m", bridge=StubBridge(), enable_position_interventions=True)
    P, S = 5, 9
    resp = backend.steer_specs(Steering.from_vector(vec, 1, 2.0, positions="response"), prompt_len=P, seq_len=S)
    assert resp["blocks.1.hook_out"]["pos"] == [4, 5, 6, 7, 8]  # last prompt token + response
    prompt = backend.steer_specs(Steering.from_vector(vec, 1, 2.0, positions="prompt"), prompt_len=P, seq_len=S)
    assert prompt["blocks.1.hook_out"]["pos"] == [0, 1, 2, 3, 4]
    drv = tl_driver(N_LAYERS, D, positions=True)
    for specs in (resp, prompt):
        drv._validate_interventions(specs)
        VLLMDriver._reject_pos_beyond_seq(specs, S)
    # Without per-position buffers, or on the batched path, TL cannot scope by position.
    for kwargs in ({}, {"enable_batching": True}):
        b = VLLMBackend("m", bridge=StubBridge(), **kwargs)
        with pytest.raises(NotImplementedError, match="enable_position_interventions"):
            b.steer_specs(Steering.from_vector(vec, 1, 2.0, positions="response"), prompt_len=P, seq_len=S)
    with pytest.raises(NotImplementedError, match="pos"):
        tl_driver(N_LAYERS, D)._validate_interventions(resp)  # TL agrees: pos needs the flag


def test_per_row_steering(vec):
    backend = VLLMBackend("m", bridge=StubBridge())
    steering = Steering.per_row([vec, None, vec], layer=1, alphas=[2.0, 0.0, 2.0], positions="all")
    with pytest.raises(NotImplementedError, match="per-row"):
        backend.steer_specs(steering)
    groups = backend._groups(steering, 3)
    assert [rows for rows, _ in groups] == [[0, 2], [1]]
    torch.testing.assert_close(torch.tensor(groups[0][1]["blocks.1.hook_out"]["value"]), 2.0 * vec.layer(1))
    assert groups[1][1] == {}


def test_width_mismatch(vec):
    backend = VLLMBackend("m", bridge=StubBridge(width=D + 1))
    with pytest.raises(Exception, match="width"):
        backend.steer_specs(Steering.from_vector(vec, 1, 1.0, positions="all"))


# --------------------------------------------------------------------------- TL's worker code on CPU


class TLWorkerEmulator:
    """Runs the HF model with TL's own vLLM hook and spec application, on CPU.

    Per steered hook: affine buffers filled by ``worker_extension._apply_intervention`` from the
    spec, and ``plugin._make_capture_hook`` on the decoder layer, fed the flattened
    ``[tokens, d_model]`` layout vLLM uses.
    """

    def __init__(self, model, *, per_position=False, max_n=4096):
        from persona_lens.models import d_model, n_layers

        self.model, self.per_position, self.max_n = model, per_position, max_n
        self.width, self.n_layers = d_model(model), n_layers(model)
        self.specs: dict = {}

    def hooks(self, capture_names=()):
        from persona_lens.models import decoder_layers

        layers = decoder_layers(self.model)
        handles, buffers = [], {}
        names = set(self.specs) | set(capture_names)
        for name in names:
            l = int(name.split(".")[1])
            shape = (self.max_n, self.width) if self.per_position else (self.width,)
            scale, bias = torch.ones(shape), torch.zeros(shape)
            if name in self.specs:
                worker_extension._apply_intervention(scale, bias, self.specs[name])
            buf = torch.zeros(self.max_n, self.width)
            flag = torch.zeros(1, dtype=torch.int64)
            tl_hook = plugin._make_capture_hook(buf, scale, bias, torch.zeros(1, dtype=torch.int64), flag,
                                                per_position=self.per_position)

            def hook(mod, args, output, tl_hook=tl_hook):
                h = output[0] if isinstance(output, tuple) else output
                flat = tl_hook(mod, args, h.reshape(-1, h.shape[-1]))
                new = flat.reshape(h.shape)
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

            handles.append(layers[l].register_forward_hook(hook))
            buffers[name] = buf
        return handles, buffers


class EmulatedBridge:
    """RemoteBridge stand-in whose run_with_cache goes through TL's driver validation and worker code."""

    def __init__(self, model, *, batching=False, positions=False):
        from persona_lens.models import d_model, n_layers

        self.model, self.tokenizer = model, model.tokenizer
        self.cfg = Cfg(n_layers=n_layers(model), d_model=d_model(model))
        self.emulator = TLWorkerEmulator(model, per_position=positions)
        self._driver = tl_driver(self.cfg.n_layers, self.cfg.d_model, batching=batching, positions=positions)
        self._driver._llm = EmulatedEngine(self)
        self.calls = []

    def run_with_cache(self, input, names_filter, return_type, intervene, return_logits):
        from persona_lens.models import native

        assert return_type is None and return_logits is False
        specs = self._driver._validate_interventions(intervene)
        seqs = input if self._driver._enable_batching else [input]
        assert all(isinstance(t, int) for s in seqs for t in s)
        if not self._driver._enable_batching:
            VLLMDriver._reject_pos_beyond_seq(specs, len(input))
        self.calls.append((len(seqs), dict(specs)))
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        self.emulator.specs = specs
        handles, buffers = self.emulator.hooks(names_filter)
        try:
            with native(self.model) as hf, torch.inference_mode():
                hf.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        n = ids.numel()
        return None, {name: buffers[name][:n].reshape(len(seqs), width, -1).clone() for name in names_filter}

    def close(self):
        pass


class EmulatedEngine:
    """vllm.LLM stand-in: collective_rpc for TL's intervention RPCs, generate via HF greedy."""

    def __init__(self, bridge):
        self.bridge, self.rpc = bridge, []

    def collective_rpc(self, method, args=()):
        self.rpc.append((method, *args))
        if method in ("tl_set_interventions", "tl_set_batched_interventions"):
            for name, spec in args[0].items():
                validate_spec(name, spec, width=self.bridge.cfg.d_model)
            self.bridge.emulator.specs = dict(args[0])
        return [None]

    def generate(self, prompts, params, use_tqdm=False):
        from persona_lens.models import native

        assert params.detokenize is False and params.temperature == 0.0
        seqs = [p.prompt_token_ids for p in prompts]
        width = max(len(s) for s in seqs)
        pad = self.bridge.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):  # left padded, as persona_lens.generate does
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        handles, _ = self.bridge.emulator.hooks()
        try:
            with native(self.bridge.model) as hf, torch.inference_mode():
                gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=pad, eos_token_id=params.stop_token_ids)
        finally:
            for h in handles:
                h.remove()
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=row[width:].tolist())]) for row in gen]


@pytest.fixture
def fake_vllm_types(monkeypatch):
    import persona_lens.interop.vllm as mod

    monkeypatch.setattr(mod, "_vllm_types", lambda: (
        lambda **kw: types.SimpleNamespace(**kw),
        lambda prompt_token_ids: types.SimpleNamespace(prompt_token_ids=prompt_token_ids)))


PROMPTS = ["Describe your ideal weekend.", "What do you think of cats?", "Give me one tip for studying."]
RESPONSES = ["I would walk in the hills and read.", "Cats are independent and curious.", "Sleep well."]


def _vector(model, seed=0):
    from persona_lens.models import d_model, model_id, n_layers

    g = torch.Generator().manual_seed(seed)
    return PersonaVector(torch.randn(n_layers(model), d_model(model), generator=g), {"model_id": model_id(model)})


@pytest.mark.slow
def test_generate_through_tl_worker_matches_persona_lens(default_model, fake_vllm_types):
    from persona_lens.generate import generate

    v = _vector(default_model)
    steering = Steering.from_vector(v, [6, 12], alpha=4.0, positions="all")
    bridge = EmulatedBridge(default_model)
    backend = VLLMBackend("default", bridge=bridge)
    ours = generate(default_model, PROMPTS, max_new_tokens=8, steering=steering, progress=False)
    plain = generate(default_model, PROMPTS, max_new_tokens=8, progress=False)
    got = backend.generate(PROMPTS, steering, max_new_tokens=8)
    assert got == ours and got != plain
    rpc = bridge._driver._llm.rpc
    assert [r[0] for r in rpc] == ["tl_set_interventions", "tl_set_interventions"]
    assert sorted(rpc[0][1]) == ["blocks.12.hook_out", "blocks.6.hook_out"] and rpc[1][1] == {}
    # Per-row: one engine call per distinct vector (rows 0 and 2 together, row 1 unsteered).
    per_row = Steering.per_row([v, None, v], layer=6, alphas=[4.0, 0.0, 4.0], positions="all")
    texts = backend.generate(PROMPTS, per_row, max_new_tokens=8)
    assert texts[1] == plain[1]
    assert texts == generate(default_model, PROMPTS, max_new_tokens=8, steering=per_row, progress=False)
    assert [r[0] for r in rpc[2:]] == ["tl_set_interventions"] * 4


@pytest.mark.slow
@pytest.mark.parametrize("batching,positions,steer_pos", [
    (True, False, "all"), (False, False, None), (False, True, "response"), (False, True, "prompt")])
def test_capture_through_tl_worker_matches_persona_lens(default_model, batching, positions, steer_pos):
    from persona_lens.capture import capture

    layers = [0, 7, 15, 29]
    steering = None if steer_pos is None else Steering.from_vector(_vector(default_model, 1), [3, 7], 3.0, steer_pos)
    bridge = EmulatedBridge(default_model, batching=batching, positions=positions)
    backend = VLLMBackend("default", bridge=bridge, enable_batching=batching, enable_position_interventions=positions)
    got = backend.capture(PROMPTS, RESPONSES, layers=layers, batch_size=2, steering=steering)
    ref = capture(default_model, PROMPTS, RESPONSES, layers=layers, batch_size=2, steering=steering, progress=False)
    assert got.layers == ref.layers
    for r in ref.data:
        torch.testing.assert_close(got.data[r], ref.data[r], rtol=1e-4, atol=1e-4)
    assert [n for n, _ in bridge.calls] == ([2, 1] if batching else [1, 1, 1])
    if steering is not None:
        assert sorted(bridge.calls[0][1]) == ["blocks.3.hook_out", "blocks.7.hook_out"]
