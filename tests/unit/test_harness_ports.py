"""Ports for servers the harness starts in other processes."""

from __future__ import annotations

import socket

from aifixer_sandbox import harness


def test_free_ports_are_bindable_distinct_and_outside_the_ephemeral_range():
    low = harness._ephemeral_low()
    ports = [harness.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low > 12_000:
        assert all(10_000 <= p < low for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(harness.random, "randrange", lambda a, b: taken)
        monkeypatch.setattr(harness, "_ephemeral_low", lambda: 60_000)
        assert harness.free_port() != taken
