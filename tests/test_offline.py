"""Loading the embedded model and generating never opens a network connection.

A socket guard replaces ``socket.socket.connect``/``connect_ex``, ``socket.create_connection``
and ``socket.getaddrinfo`` with versions that raise (and record) anything not on the loopback
interface; ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are unset, so nothing but persona_lens'
own loading path keeps the hub away. The session fixture may already have loaded the model;
these tests load it again inside the guard.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch):
    attempts: list = []

    def blocked(what):
        attempts.append(what)
        raise OSError(f"network access blocked by the test guard: {what!r}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_loopback(address[0]):
            blocked(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_loopback(address[0]):
            blocked(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _is_loopback(address[0]):
            blocked(address)
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            blocked(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: make sure it is off there too.
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    yield attempts


def test_guard_blocks_non_loopback(no_network):
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="blocked"):
            s.connect(("8.8.8.8", 53))
    finally:
        s.close()
    # loopback stays usable (local judge servers in other tests)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        socket.create_connection(server.getsockname(), timeout=1).close()
    finally:
        server.close()
    assert len(no_network) == 3


@pytest.mark.slow
def test_load_and_generate_offline(no_network):
    from persona_lens.generation import generate
    from persona_lens.models import load_model

    model = load_model("default", device="cpu")
    out = generate(model, ["Say hello."], max_new_tokens=4, progress=False)
    assert isinstance(out[0], str)
    assert no_network == []


@pytest.mark.slow
def test_cold_cache_dequantization_offline(no_network, tmp_path, monkeypatch):
    """First use on a fresh machine: GGUF -> dequantized cache, tokenizer included, offline."""
    from persona_lens.generation import generate
    from persona_lens.models import load_model

    monkeypatch.setenv("PERSONA_LENS_CACHE", str(tmp_path))
    model = load_model("default", device="cpu")
    assert any((tmp_path / "models").glob("default-*/config.json"))
    assert not list((tmp_path / "models").glob(".*"))  # no temp folder left behind
    out = generate(model, ["Say hello."], max_new_tokens=4, progress=False)
    assert isinstance(out[0], str)
    assert no_network == []


@pytest.mark.slow
def test_cli_info_offline(no_network, capsys):
    from persona_lens.cli import main

    assert main(["info"]) == 0
    assert '"n_layers": 30' in capsys.readouterr().out
    assert no_network == []
