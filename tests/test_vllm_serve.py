"""vLLM's own OpenAI server with persona_lens' plugin (``persona-lens serve --backend vllm``), for
real: one server on 127.0.0.1 (a free port) on the embedded model in fp32, asked by the official
``openai`` client, each answer checked against the HF path (:func:`persona_lens.generation.generate`,
fp32 greedy) with the same :class:`~persona_lens.steering.Steering`.

Run in ``.venv-vllm`` (``scripts/setup_vllm.sh``): ``OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest
-q -m vllm tests/test_vllm_serve.py``. The server is always terminated, its whole process group.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (scripts/setup_vllm.sh)"),
]

pytest.importorskip("vllm", reason="vllm is not installed (scripts/setup_vllm.sh)")

import openai  # noqa: E402

from persona_lens.blend import blend  # noqa: E402
from persona_lens.generation import generate  # noqa: E402
from persona_lens.interop.vllm_worker import decode_vector  # noqa: E402
from persona_lens.models import d_model, load_model, n_layers, resolve_model_name  # noqa: E402
from persona_lens.serve.protocol import RequestError  # noqa: E402
from persona_lens.serve.vllm_launch import VECTORS_ENV, format_vectors, vllm_serve_command  # noqa: E402
from persona_lens.serve.vllm_plugin import resolve, salted, served_vectors  # noqa: E402
from persona_lens.steering import Steering  # noqa: E402
from persona_lens.vectors import PersonaVector  # noqa: E402

MODEL = "default"
NEW_TOKENS = 16
LAYER = 10
BOOT_S = 420  # a cold vLLM boot on a shared 2-core machine takes 1-3 minutes
LONG = ("Give me three tips for sleeping better, and explain briefly why each one works for most people who have "
        "trouble falling asleep at night after a long and stressful day at work, especially when they must wake up "
        "early the next morning.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def persona(seed: int, n_layers: int, d: int, name: str) -> PersonaVector:
    """Unit directions per layer scaled so alpha 1 moves the residual stream by 12 (visible)."""
    v = torch.randn(n_layers, d, generator=torch.Generator().manual_seed(seed))
    return PersonaVector(v / v.norm(dim=-1, keepdim=True) * 12.0, {"persona": name})


@pytest.fixture(scope="module")
def hf():
    return load_model(MODEL, dtype=torch.float32)


@pytest.fixture(scope="module")
def vectors(hf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    made = {name: persona(seed, n_layers(hf), d_model(hf), name) for seed, name in ((1, "humorous"), (2, "evil"))}
    files = {name: v.save(folder / f"{name}.safetensors") for name, v in made.items()}
    return made, files


@pytest.fixture(scope="module")
def client(vectors, tmp_path_factory):
    _, files = vectors
    port = free_port()
    argv, env = vllm_serve_command(
        resolve_model_name(MODEL)[1], MODEL, files, host="127.0.0.1", port=port, dtype="float32",
        default_max_tokens=NEW_TOKENS,
        # block_size 32 (the CPU minimum) and chunks of 64 tokens: the long prompt fills cached blocks
        extra_args=["--max-model-len", "512", "--max-num-batched-tokens", "64", "--block-size", "32",
                    "--enable-prefix-caching", "--max-num-seqs", "8"])
    env.update(OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + BOOT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in {BOOT_S} s:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=180, max_retries=0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def chat(client, prompt: str, xargs: dict | None = None) -> str:
    body = {"vllm_xargs": xargs} if xargs else None
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                         temperature=0, max_tokens=NEW_TOKENS, extra_body=body)
    return (out.choices[0].message.content or "").strip()


def reference(hf, prompt: str, steering: Steering | None = None) -> str:
    return generate(hf, [prompt], max_new_tokens=NEW_TOKENS, steering=steering, progress=False)[0]


def test_concurrent_personas_each_get_their_own_answer(client, hf, vectors):
    made, _ = vectors
    asks = [
        ("Tell me a joke about computers.", {"persona": "humorous", "alpha": 1.5, "layer": LAYER,
                                             "positions": "response"},
         Steering.from_vector(made["humorous"], LAYER, 1.5, "response")),
        ("What should I cook tonight?", {"persona": ["humorous", "evil"], "weights": [0.25, 0.75], "alpha": 2,
                                         "layers": [4, LAYER], "positions": "all"},
         Steering.from_vector(blend([made["humorous"], made["evil"]], "weighted", [0.25, 0.75]), [4, LAYER], 2.0,
                              "all")),
        ("Why is the sky blue?", None, None),
        ("Why is the sky blue?", {"persona": "evil", "alpha": -1, "layer": LAYER, "positions": "prompt"},
         Steering.from_vector(made["evil"], LAYER, -1.0, "prompt")),
    ]
    with ThreadPoolExecutor(len(asks)) as pool:  # sent together: one continuous batch in vLLM
        got = list(pool.map(lambda a: chat(client, a[0], a[1]), asks))
    want = [reference(hf, prompt, steering) for prompt, _, steering in asks]
    assert got == want
    assert got[3] != got[2]  # the steering is visible: this test can fail


def test_streamed_steered_chat(client, hf, vectors):
    made, _ = vectors
    xargs = {"persona": "humorous", "alpha": 2, "layer": LAYER, "positions": "all"}
    chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi!"}],
                                            temperature=0, max_tokens=NEW_TOKENS, stream=True,
                                            extra_body={"vllm_xargs": xargs})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert text == reference(hf, "Hi!", Steering.from_vector(made["humorous"], LAYER, 2.0, "all"))
    assert text != reference(hf, "Hi!")


def test_prefix_cache_is_not_shared_across_steering(client, hf, vectors):
    """The long prompt steered at its prompt tokens writes other KV; asked again unsteered, it
    must not reuse those blocks (the middleware salts the cache with the steering)."""
    made, _ = vectors
    steered = chat(client, LONG, {"persona": "evil", "alpha": 3, "layers": [2, 6, LAYER], "positions": "prompt"})
    plain = chat(client, LONG)
    assert steered == reference(hf, LONG, Steering.from_vector(made["evil"], [2, 6, LAYER], 3.0, "prompt"))
    assert plain == reference(hf, LONG)
    assert steered != plain


@pytest.mark.parametrize("xargs, names", [
    ({"persona": "grumpy", "alpha": 1, "layer": LAYER}, "unknown persona 'grumpy'"),
    ({"persona": "evil", "alpha": 1, "layer": 99}, "layer 99 is out of range"),
    ({"persona": "evil", "layer": LAYER}, "alpha"),
    ({"persona": "evil", "alpha": 1, "layer": LAYER, "monitor": "evil"}, "monitor needs the hf backend"),
])
def test_bad_steering_is_a_400_and_the_engine_lives_on(client, xargs, names):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "Hi!", xargs)
    assert caught.value.status_code == 400
    assert names in str(caught.value)
    assert chat(client, "Hi!")  # the server still answers


@pytest.mark.parametrize("fields, names", [
    ({"persona": "evil", "alpha": float("nan"), "layer": LAYER}, "alpha must be finite"),  # JSON cannot carry it
    ({"vector": [1.0, 2.0], "alpha": 1, "layer": LAYER}, "does not match the model's d_model"),
])
def test_resolve_refuses(vectors, monkeypatch, fields, names):
    """What the API server checks before admission, for the cases an HTTP client cannot send."""
    monkeypatch.setenv(VECTORS_ENV, format_vectors(vectors[1]))
    served_vectors.cache_clear()
    try:
        with pytest.raises(RequestError, match=names):
            resolve(fields)
    finally:
        served_vectors.cache_clear()


def test_vllm_plugin_reads_operator_fields(tmp_path, monkeypatch):
    """``vllm_xargs`` ``operator``/``cap`` become the payload's projection in the API server
    (``resolve``, run by vLLM's ``validate_params``); bad ones are named RequestErrors."""
    v = PersonaVector(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), {"persona": "evil"})
    monkeypatch.setenv(VECTORS_ENV, format_vectors({"evil": v.save(tmp_path / "evil.safetensors")}))
    served_vectors.cache_clear()
    try:
        capped = resolve({"persona": "evil", "layer": 2, "operator": "cap", "cap": [None, 1.5]})
        assert capped["steer"] == {} and capped["project"]["2"][1:] == [None, 1.5]
        torch.testing.assert_close(decode_vector(capped["project"]["2"][0]), v.layer(2) / v.layer(2).norm())
        assert resolve({"persona": "evil", "layer": 2, "operator": "ablate"})["project"]["2"][1:] == [0.0, 0.0]
        assert "project" not in resolve({"persona": "evil", "layer": 2, "alpha": 2.0, "operator": "add"})
        for fields, match in [({"persona": "evil", "layer": 2, "operator": "ablate", "alpha": 1}, "takes no alpha"),
                              ({"persona": "evil", "layer": 2, "operator": "cap"}, "needs bounds"),
                              ({"persona": "evil", "layer": 2, "operator": "cap", "cap": [2, 1]}, "above"),
                              ({"persona": "evil", "layer": 2, "operator": "scale"}, "operator must be one of"),
                              ({"operator": "ablate"}, "without persona")]:
            with pytest.raises(RequestError, match=match):
                resolve(fields)
        bodies = [{"messages": [], "vllm_xargs": {"persona": "evil", "layer": 2, "operator": op}} for op in
                  ("ablate", "add")]
        salts = {json.loads(salted(json.dumps(b).encode()))["cache_salt"] for b in bodies}
        assert len(salts) == 2  # the operator is part of the prefix-cache salt
    finally:
        served_vectors.cache_clear()
