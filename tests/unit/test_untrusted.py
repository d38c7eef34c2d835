"""What log lines and model replies may not carry into what people read or hear."""

from __future__ import annotations

import pytest
from injection_corpus import INJECTIONS

from aifixer import untrusted


def test_the_corpus_is_broad():
    assert len(INJECTIONS) >= 20


@pytest.mark.parametrize(
    "line", [line for _, line, _ in INJECTIONS], ids=[n for n, _, _ in INJECTIONS]
)
def test_every_injection_is_found(line):
    assert untrusted.findings(f"The pods crash. The log says: {line}.")


@pytest.mark.parametrize(
    "text",
    [
        "Deployment shop/report-api is OOMKilled: the memory limit of 64Mi is below its working set.",
        "The image web/storefront:3.1.O does not exist; web/storefront:3.0.9 ran healthy.",
        "The container exits with code 127: sh: billing-wrker: not found.",
        "The readiness probe asks /healthz on port 8080, the app serves /health.",
        "The config file /etc/app/config.yaml moved to /etc/app/conf.d/app.yaml.",
        "The root cause is a typo in the command; restarts climbed to 12 since 2026-12-02 03:14:00.",
        "entrypoint.sh fails: LEDGER_URL is not set.",
        "Exit code 137 (killed: out of memory), up to 7 restarts.",
    ],
)
def test_an_honest_diagnosis_passes(text):
    known = ["web/storefront:3.1.O", "web/storefront:3.0.9", "shop/report-api"]
    assert untrusted.findings(text, known) == []


def test_an_image_the_workload_ran_is_not_a_finding():
    text = "Roll back to registry.example.io/shop/api:1.2.3."
    assert untrusted.findings(text) == ["a link", "an image the workload never ran"]
    assert untrusted.findings(text, ["registry.example.io/shop/api:1.2.3"]) == []
