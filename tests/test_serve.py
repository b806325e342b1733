"""The OpenAI-compatible steering server (persona_lens.serve).

Mechanics on the tiny random model (starlette's TestClient, plus real sockets on 127.0.0.1 for
the official ``openai`` client and concurrency); on the embedded model (slow): the same text as
``persona-lens steer``'s generation for the same settings, and 32 concurrent clients with mixed
personas each getting their solo answer. References are persona_lens.generation.generate with the
same Steering, run alone, and plain transformers hidden states for monitoring.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from persona_lens import testing
from persona_lens.blend import blend
from persona_lens.chat import make_messages
from persona_lens.cli.serve import serve_command
from persona_lens.dose import CARD_KEY, DoseCard, LayerCurve
from persona_lens.generation import generate
from persona_lens.serve import HFBackend, ServerThread, create_app, load_vectors
from persona_lens.steering import Steering

pytestmark = pytest.mark.filterwarnings("ignore:steering at layer:UserWarning")  # random test vectors are strong

TINY = "tiny"
MAX = 8  # tokens per answer in the fast tier
PROMPTS = ["hi", "tell me a story", "what is 2+2?", "name a colour"]


def solo(model, prompt, vector=None, layers=(1,), alpha=0.0, positions="response", max_tokens=MAX) -> str:
    """What one request gets alone: persona_lens' generation with the same Steering, batch of one."""
    steering = None if vector is None else Steering.from_vector(vector, list(layers), alpha, positions)
    messages = prompt if isinstance(prompt, list) else make_messages(prompt)
    return generate(model, [messages], max_new_tokens=max_tokens, temperature=0.0, steering=steering,
                    progress=False)[0]


@pytest.fixture(scope="module")
def tiny_vectors(tiny_model):
    return {name: testing.tiny_vector(tiny_model, seed, name) for seed, name in enumerate(["calm", "wild", "odd"])}


@pytest.fixture(scope="module")
def tiny_app(tiny_model, tiny_vectors):
    return create_app(HFBackend(tiny_model), tiny_vectors, model_name=TINY, batch_wait_ms=50)


@pytest.fixture(scope="module")
def client(tiny_app):
    with TestClient(tiny_app) as c:
        yield c


def chat(client, content="hi", **extra):
    body = {"model": TINY, "messages": [{"role": "user", "content": content}], "max_tokens": MAX, **extra}
    return client.post("/v1/chat/completions", json=body)


def sse_events(client, path, body) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


# --------------------------------------------------------------------------- tiny model: mechanics


def test_models_lists_model_and_vectors(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == [TINY]
    assert [p["name"] for p in body["data"][0]["persona_vectors"]] == ["calm", "wild", "odd"]
    assert body["data"][0]["n_layers"] == 3 and body["data"][0]["d_model"] == 64


@pytest.mark.parametrize("positions", ["response", "prompt", "all"])
def test_chat_equals_solo_generation(client, tiny_model, tiny_vectors, positions):
    answers = set()
    for alpha in (0.02, 0.06):
        r = chat(client, "tell me a story", persona="wild", alpha=alpha, layer=1, positions=positions)
        assert r.status_code == 200, r.text
        got = r.json()
        text = got["choices"][0]["message"]["content"]
        assert text == solo(tiny_model, "tell me a story", tiny_vectors["wild"], [1], alpha, positions)
        assert got["steering"] == {"persona": "wild", "alpha": alpha, "layers": [1], "positions": positions}
        answers.add(text)
    answers.add(chat(client, "tell me a story").json()["choices"][0]["message"]["content"])
    assert len(answers) > 1  # steering changes the answer: the comparison can fail


def test_unsteered_and_blended_and_layers(client, tiny_model, tiny_vectors):
    plain = chat(client, "hi").json()
    assert plain["choices"][0]["message"]["content"] == solo(tiny_model, "hi")
    assert "steering" not in plain
    mixed = chat(client, "hi", persona=["calm", "odd"], weights=[0.7, 0.3], alpha=0.05, layers=[0, 2]).json()
    mixed_vector = blend([tiny_vectors["calm"], tiny_vectors["odd"]], "weighted", [0.7, 0.3])
    assert mixed["choices"][0]["message"]["content"] == solo(tiny_model, "hi", mixed_vector, [0, 2], 0.05)
    assert mixed["steering"]["blend"] == "weighted"
    mean = chat(client, "hi", persona=["calm", "odd"], alpha=0.05, layer=2).json()
    mean_vector = blend([tiny_vectors["calm"], tiny_vectors["odd"]], "mean")
    assert mean["choices"][0]["message"]["content"] == solo(tiny_model, "hi", mean_vector, [2], 0.05)


def test_completions_prompt_list_and_usage(client, tiny_model, tiny_vectors):
    r = client.post("/v1/completions", json={"model": TINY, "prompt": PROMPTS[:2], "max_tokens": MAX,
                                             "persona": "calm", "alpha": 0.04, "layer": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == [solo(tiny_model, p, tiny_vectors["calm"], [0], 0.04)
                                                    for p in PROMPTS[:2]]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] <= 2 * MAX
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_max_tokens_and_finish_reason_in_a_shared_batch(tiny_model):
    """Greedy rows with different max_tokens share one call; each is cut as if alone."""
    app = create_app(HFBackend(tiny_model), {}, model_name=TINY, batch_wait_ms=300)
    with TestClient(app) as c, ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(chat, c, "name a colour", max_tokens=k) for k in (2, 5, 12)}
        got = {k: f.result().json()["choices"][0] for k, f in futures.items()}
        calls = list(app.state.batcher.calls)
    for k, choice in got.items():
        assert choice["message"]["content"] == solo(tiny_model, "name a colour", max_tokens=k)
    assert got[2]["finish_reason"] == "length"
    assert max(calls) > 1  # batched together


def test_seeded_sampling_runs_alone_and_equals_solo(tiny_model):
    """A seeded sampled request gets what generate(seed=...) gives it alone, even when sent
    together with others (it never shares a call); greedy ones beside it still batch."""
    app = create_app(HFBackend(tiny_model), {}, model_name=TINY, batch_wait_ms=300)
    sampled = [dict(temperature=0.9, seed=s, max_tokens=12) for s in (3, 3, 4)]
    with TestClient(app) as c, ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(chat, c, "tell me a story", **kw) for kw in sampled]
        futures += [pool.submit(chat, c, p) for p in PROMPTS[:2]]
        got = [f.result().json()["choices"][0]["message"]["content"] for f in futures]
        calls = list(app.state.batcher.calls)
    messages = [make_messages("tell me a story")]
    expected = [generate(tiny_model, messages, max_new_tokens=12, temperature=0.9, seed=kw["seed"], progress=False)[0]
                for kw in sampled]
    assert got[:3] == expected and got[0] == got[1] and expected[0] != expected[2]
    assert got[3:] == [solo(tiny_model, p) for p in PROMPTS[:2]]
    assert sorted(calls) == [1, 1, 1, 2]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_concatenates_to_the_whole_answer(client, path):
    body = {"model": TINY, "max_tokens": 12, "persona": "odd", "alpha": 0.03, "layer": 1,
            "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": "tell me a story"}]} if "chat" in path
                else {"prompt": "tell me a story"})
    whole = client.post(path, json=body).json()
    events = sse_events(client, path, body)
    if "chat" in path:
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        expected = whole["choices"][0]["message"]["content"]
    else:
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        expected = whole["choices"][0]["text"]
    assert text == expected and len(text) > 0
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == [whole["choices"][0]["finish_reason"]]
    assert events[-1]["usage"] == whole["usage"]


def test_monitor_matches_plain_transformers(client, tiny_model, tiny_vectors):
    """Per-token projections of the generated tokens, against plain HF hidden states: unsteered,
    and steered at the monitored layer (where the add is exactly alpha * v at every response token)."""
    hf = testing.tiny_hf_model("llama")
    tok = tiny_model.tokenizer
    layer, alpha = 1, 0.03
    for steer in ({}, {"persona": "calm", "alpha": alpha, "layer": layer}):
        r = chat(client, "what is 2+2?", monitor=["calm", "wild"], monitor_layer=layer, **steer)
        assert r.status_code == 200, r.text
        monitor = r.json()["choices"][0]["monitor"]
        prompt = tok.apply_chat_template([{"role": "user", "content": "what is 2+2?"}], tokenize=False,
                                         add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = monitor["token_ids"]
        assert len(r_ids) == len(monitor["tokens"]) > 0
        with torch.no_grad():
            hidden = hf(torch.tensor([p_ids + r_ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        h = hidden[len(p_ids):].double()
        for name in ("calm", "wild"):
            v = tiny_vectors[name].vectors[layer].double()
            expected = h @ (v / v.norm())
            if steer:  # the steered stream is h + alpha * v_calm at every response token
                vc = tiny_vectors["calm"].vectors[layer].double()
                expected = expected + alpha * (vc @ (v / v.norm()))
            assert torch.allclose(torch.tensor(monitor["projections"][name], dtype=torch.float64), expected,
                                  atol=1e-4, rtol=1e-4)
    assert monitor["layer"] == layer


BAD = [
    ({"persona": "nobody", "alpha": 1.0, "layer": 1}, "persona", "unknown persona 'nobody'"),
    ({"persona": "calm", "alpha": 1.0, "layer": 3}, "layer", "layer 3 is out of range"),
    ({"persona": "calm", "alpha": 1.0, "layers": [0, -1]}, "layers", "out of range"),
    ({"persona": "calm", "alpha": 1.0, "layer": 1.5}, "layer", "must be an integer"),
    ({"vector": [0.1] * 63, "alpha": 1.0, "layer": 1}, "vector", "width 63"),
    ({"persona": "calm", "alpha": "big", "layer": 1}, "alpha", "alpha must be a number"),
    ({"persona": "calm", "layer": 1}, "alpha", "steering needs alpha"),
    ({"persona": "calm", "alpha": 1.0}, "layer", "needs a layer"),
    ({"persona": "calm", "alpha": 1.0, "layer": 1, "positions": "middle"}, "positions", "positions must be one of"),
    ({"alpha": 1.0, "layer": 1}, "alpha", "without persona"),
    ({"persona": ["calm", "wild"], "weights": [1.0], "alpha": 1.0, "layer": 1}, "weights", "2 numbers"),
    ({"persona": "calm", "alpha": 1.0, "layer": 1, "monitor": ["nobody"]}, "monitor", "unknown monitor vector"),
    ({"monitor": ["calm"]}, "monitor_layer", "needs monitor_layer"),
    ({"messages": []}, "messages", "messages is required"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "role must be one of"),
    ({"temperature": -1}, "temperature", "temperature must be >= 0"),
    ({"n": 2}, "n", "n must be 1"),
    ({"stop": ["\n"]}, "stop", "stop sequences are not supported"),
]


@pytest.mark.parametrize("extra, param, message", BAD)
def test_bad_requests_get_openai_400(client, extra, param, message):
    r = chat(client, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]


def test_non_finite_alpha_unknown_model_and_bad_json(client):
    raw = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "persona": "calm", "alpha": NaN, "layer": 1}'
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "alpha" and "finite" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/completions", content="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": TINY})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert client.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"


def test_vector_files_are_checked_against_the_model(tmp_path, tiny_model, tiny_vectors):
    backend = HFBackend(tiny_model)
    tiny_vectors["calm"].save(tmp_path / "calm.safetensors")
    assert torch.equal(load_vectors({"c": tmp_path / "calm.safetensors"}, backend)["c"].vectors,
                       tiny_vectors["calm"].vectors)
    testing.tiny_vector(testing.tiny_model("llama", d_model=32)).save(tmp_path / "narrow.safetensors")
    with pytest.raises(ValueError, match="width 32"):
        load_vectors({"n": tmp_path / "narrow.safetensors"}, backend)


def test_cli_refuses_bad_vector_arguments(tmp_path):
    runner = CliRunner()
    r = runner.invoke(serve_command, ["--vector", "no-equals-sign"])
    assert r.exit_code == 2 and "NAME=FILE" in r.output
    r = runner.invoke(serve_command, ["--vector", f"a={tmp_path / 'missing.safetensors'}"])
    assert r.exit_code == 2 and "does not exist" in r.output


# --------------------------------------------------------------------------- real sockets


def _mixed_requests(n: int) -> list[dict]:
    """n requests cycling through personas, alphas, layers, positions and unsteered ones."""
    personas, positions = [None, "calm", "wild", "odd", ["calm", "wild"]], ["response", "prompt", "all"]
    out = []
    for i in range(n):
        persona = personas[i % len(personas)]
        steer = {} if persona is None else {"persona": persona, "alpha": 0.02 * (1 + i % 3), "layer": i % 3,
                                            "positions": positions[i % 3]}
        out.append({"prompt": PROMPTS[i % len(PROMPTS)], **steer})
    return out


def _expected(model, vectors, req, max_tokens) -> str:
    if "persona" not in req:
        return solo(model, req["prompt"], max_tokens=max_tokens)
    names = [req["persona"]] if isinstance(req["persona"], str) else req["persona"]
    vector = vectors[names[0]] if len(names) == 1 else blend([vectors[n] for n in names], "mean")
    return solo(model, req["prompt"], vector, [req["layer"]], req["alpha"], req["positions"], max_tokens)


def _ask(base_url: str, req: dict, max_tokens: int, model: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    extra = {k: v for k, v in req.items() if k != "prompt"}
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": req["prompt"]}],
                                       max_tokens=max_tokens, temperature=0, extra_body=extra)
    return r.choices[0].message.content


def test_openai_client_over_a_real_socket(tiny_app, tiny_model, tiny_vectors):
    steer = {"persona": "wild", "alpha": 0.05, "layer": 1}
    expected = solo(tiny_model, "hi", tiny_vectors["wild"], [1], 0.05)
    with ServerThread(tiny_app) as server:
        assert server.address[0] == "127.0.0.1"
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [TINY]
        r = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=MAX,
                                           temperature=0, extra_body=steer)
        assert r.choices[0].message.content == expected
        c = client.completions.create(model=TINY, prompt="hi", max_tokens=MAX, temperature=0, extra_body=steer)
        assert c.choices[0].text == expected
        chunks = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=MAX, temperature=0, stream=True, extra_body=steer)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
        chunks = client.completions.create(model=TINY, prompt="hi", max_tokens=MAX, stream=True, temperature=0,
                                           extra_body=steer)
        assert "".join(ch.choices[0].text for ch in chunks) == expected
        m = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=MAX,
                                           temperature=0, extra_body={**steer, "monitor": ["calm"]})
        assert m.choices[0].model_extra["monitor"]["layer"] == 1
        assert len(m.choices[0].model_extra["monitor"]["projections"]["calm"]) == m.usage.completion_tokens
        with pytest.raises(openai.BadRequestError, match="unknown persona"):
            client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}],
                                           extra_body={"persona": "nobody", "alpha": 1, "layer": 0})


def test_32_concurrent_clients_tiny(tiny_model, tiny_vectors):
    app = create_app(HFBackend(tiny_model), tiny_vectors, model_name=TINY, batch_wait_ms=100, max_batch_size=32)
    requests = _mixed_requests(32)
    with ServerThread(app) as server, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda req: _ask(server.base_url, req, MAX, TINY), requests))
    expected = [_expected(tiny_model, tiny_vectors, req, MAX) for req in requests]
    assert answers == expected
    assert len(set(expected)) > 3
    assert sum(app.state.batcher.calls) == 32 and max(app.state.batcher.calls) > 1  # nothing dropped, batched


# --------------------------------------------------------------------------- embedded model (slow)


@pytest.fixture(scope="module")
def default_server(default_model):
    vectors = {name: testing.tiny_vector(default_model, seed, name).normalized()  # unit norm at every layer
               for seed, name in enumerate(["calm", "wild", "odd"])}
    app = create_app(HFBackend(default_model), vectors, model_name="default", batch_wait_ms=100)
    with ServerThread(app) as server:
        yield server, app, vectors


def test_openai_client_same_text_as_steer_default_model(default_server, default_model):
    server, _, vectors = default_server
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
    prompt, steer = "What is your favourite season?", {"persona": "wild", "alpha": 20.0, "layer": 4}
    expected = solo(default_model, prompt, vectors["wild"], [4], 20.0, max_tokens=24)
    assert expected != solo(default_model, prompt, max_tokens=24)
    r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                       max_tokens=24, temperature=0, extra_body=steer)
    assert r.choices[0].message.content == expected
    c = client.completions.create(model="default", prompt=prompt, max_tokens=24, temperature=0, extra_body=steer)
    assert c.choices[0].text == expected
    chunks = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=24, temperature=0, stream=True, extra_body=steer)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected


def test_32_concurrent_clients_default_model(default_server, default_model):
    server, app, vectors = default_server
    requests = _mixed_requests(32)
    for req in requests:
        if "persona" in req:
            req.update(alpha=req["alpha"] * 1000, layer=4 + 4 * req["layer"])
    before = len(app.state.batcher.calls)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda req: _ask(server.base_url, req, 12, "default"), requests))
    expected = [_expected(default_model, vectors, req, 12) for req in requests]
    assert answers == expected
    assert len(set(expected)) > 4
    calls = app.state.batcher.calls[before:]
    assert sum(calls) == 32 and max(calls) > 1


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.slow
def test_serve_command_end_to_end(tmp_path, default_model):
    """``serve_command`` in a subprocess: --vector NAME=FILE loaded, bound to 127.0.0.1 only, answers
    the openai client as persona_lens' generation does."""
    vector = testing.tiny_vector(default_model, 7, "warm").normalized()
    vector.save(tmp_path / "warm.safetensors")
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys; from persona_lens.cli.serve import serve_command; "
            "serve_command(sys.argv[1:], standalone_mode=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, "--model", "default", "--device", "cpu", "--port", str(port),
                             "--vector", f"warm={tmp_path / 'warm.safetensors'}", "--max-new-tokens", "12"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        for _ in range(600):  # up to 60 s for the model to load
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        assert [p["name"] for p in models.data[0].model_extra["persona_vectors"]] == ["warm"]
        r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hello!"}],
                                           temperature=0, extra_body={"persona": "warm", "alpha": 20.0, "layer": 4})
        assert r.choices[0].message.content == solo(default_model, "Hello!", vector, [4], 20.0, max_tokens=12)
        other = _non_loopback_address()
        if other is not None:  # nothing listens on the machine's other addresses
            with pytest.raises(ConnectionRefusedError), socket.create_connection((other, port), timeout=5):
                pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- calibrated strength (dose cards)


def test_strength_maps_through_the_dose_card(tiny_model):
    """strength 0.5 on a card with baseline 10, positive 50 and layer-1 means 10, 20, 40 at alphas
    0, 1, 2 is alpha 1.5 (target 30, half-way between 20 and 40): the same text as alpha 1.5."""
    card = DoseCard(persona="dosed", model_id=None, judge="fake", positions="response", baseline={"mean": 10.0},
                    positive={"mean": 50.0}, best_layer=1,
                    curves=[LayerCurve(1, [0.0, 1.0, 2.0], [10.0, 20.0, 40.0], [None] * 3, [None] * 3, [0.8] * 3)])
    dosed = testing.tiny_vector(tiny_model, 5, "dosed")
    dosed.metadata[CARD_KEY] = card.to_dict()
    plain = testing.tiny_vector(tiny_model, 6, "plain")
    app = create_app(HFBackend(tiny_model), {"dosed": dosed, "plain": plain}, model_name=TINY, batch_wait_ms=10)
    with TestClient(app) as c:
        listed = c.get("/v1/models").json()["data"][0]["persona_vectors"]
        assert {p["name"]: p["dose_card"] for p in listed} == {"dosed": True, "plain": False}
        r = chat(c, "tell me a story", persona="dosed", strength=0.5)
        assert r.status_code == 200, r.text
        steering = r.json()["steering"]
        assert steering["alpha"] == pytest.approx(1.5) and steering["layers"] == [1] and steering["strength"] == 0.5
        expected = solo(tiny_model, "tell me a story", dosed, [1], 1.5)
        assert r.json()["choices"][0]["message"]["content"] == expected
        assert expected != solo(tiny_model, "tell me a story", dosed, [1], 0.0)  # the check can fail
        by_alpha = chat(c, "tell me a story", persona="dosed", alpha=1.5, layer=1)
        assert by_alpha.json()["choices"][0]["message"]["content"] == expected
        refused = {
            "no card": (chat(c, persona="plain", strength=0.5), "strength", "no_dose_card"),
            "out of range": (chat(c, persona="dosed", strength=2.0), "strength", "strength_out_of_range"),
            "both": (chat(c, persona="dosed", strength=0.5, alpha=1.0), "strength", None),
            "blend": (chat(c, persona=["dosed", "plain"], strength=0.5), "strength", None),
            "two layers": (chat(c, persona="dosed", strength=0.5, layers=[0, 1]), "layers", None),
            "no persona": (chat(c, strength=0.5), "strength", None),
        }
        for what, (resp, param, code) in refused.items():
            assert resp.status_code == 400, what
            err = resp.json()["error"]
            assert err["param"] == param, what
            if code is not None:
                assert err["code"] == code, what


def test_operators_in_one_shared_batch_equal_solo(tiny_model, tiny_vectors):
    """add / ablate / cap requests sent together share one generate call and each gets what its
    own Steering gives alone; malformed operator requests get OpenAI 400s."""
    app = create_app(HFBackend(tiny_model), tiny_vectors, model_name=TINY, batch_wait_ms=300)
    requests = {
        "add": ({"persona": "wild", "alpha": 0.06, "layer": 1}, Steering.from_vector(tiny_vectors["wild"], [1], 0.06)),
        "ablate": ({"persona": "calm", "operator": "ablate", "layer": 1},
                   Steering.from_vector(tiny_vectors["calm"], [1], operator="ablate")),
        "cap": ({"persona": "odd", "operator": "cap", "cap": [None, 0.0], "layer": 2},
                Steering.from_vector(tiny_vectors["odd"], [2], operator="cap", cap=(None, 0.0))),
    }
    with TestClient(app) as c, ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(chat, c, "tell me a story", **body) for k, (body, _) in requests.items()}
        got = {k: f.result() for k, f in futures.items()}
        calls = list(app.state.batcher.calls)
        bad = [chat(c, persona="calm", operator="ablate", alpha=1.0, layer=1),
               chat(c, persona="calm", operator="cap", layer=1),
               chat(c, persona="calm", operator="shrink", layer=1),
               chat(c, persona="calm", alpha=1.0, cap=[0, 1], layer=1)]
    for name, (_, steering) in requests.items():
        assert got[name].status_code == 200, got[name].text
        want = generate(tiny_model, [make_messages("tell me a story")], max_new_tokens=MAX, temperature=0.0,
                        steering=steering, progress=False)[0]
        assert got[name].json()["choices"][0]["message"]["content"] == want
    assert got["ablate"].json()["steering"]["operator"] == "ablate"
    assert max(calls) > 1  # batched together
    assert [r.status_code for r in bad] == [400] * 4
    assert [r.json()["error"]["param"] for r in bad] == ["alpha", "cap", "operator", "cap"]
