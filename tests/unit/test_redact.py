"""The farm's one redaction policy, held to one corpus of secret shapes."""

from __future__ import annotations

import logging

import pytest
from secret_corpus import SECRETS

from aifixer import redact


def test_the_corpus_is_broad():
    assert len(SECRETS) >= 50
    assert len({name for name, _, _ in SECRETS}) == len(SECRETS)


@pytest.mark.parametrize(
    "text,secret", [(t, s) for _, t, s in SECRETS], ids=[n for n, _, _ in SECRETS]
)
def test_no_secret_shape_survives(text, secret):
    out = redact.redact(f"before {text} after")
    assert secret not in out
    assert redact.REDACTED in out
    assert out.startswith("before ") and out.endswith(" after")


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer abc123def456", "Authorization: Bearer "),
        ("https://x-access-token:s3cr3tvalue@github.com/a/b.git", "github.com/a/b.git"),
        ("DB_PASSWORD=hunter2hunter2 port=5432", "port=5432"),
        ('{"api_key": "abcd1234efgh"}', '"api_key": "'),
        ("postgres://app:pw-123456@db:5432/orders", "postgres://app:"),
    ],
)
def test_the_label_is_kept(text, kept):
    out = redact.redact(text)
    assert kept in out and redact.REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "limits: {memory: 64Mi}",
        "configMapKeyRef: {name: checkout-config, key: payment.provider}",
        "secretKeyRef: {name: mailer-smtp, key: password}",
        "token validation failed for request",
        "image: shop/report-api:2.4.1",
        "image web/storefront@sha256:" + "ab" * 32,
        "path /var/lib/containerd/io.containerd.runtime.v2.task/k8s.io",
        "spec.template.spec.containers[0].resources.limits.memory",
        "pod report-api-7f9c8d6b5-x2x4k restarted 3 times",
        "call CA" + "0123456789abcdef" * 2 + " completed",
        "incident 3f2a9c1d0b7e4a65-1764700000123 opened",
        "the author: Jane, passengers: 4, keyboard: us",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact.redact(text) == text


def test_nested_values_are_redacted():
    value = {"env": [{"name": "DB", "value": "postgres://u:pw-secret1@db/x"}], "n": 3}
    out = redact.redacted(value)
    assert "pw-secret1" not in str(out) and out["n"] == 3


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(caplog):
    logger = logging.getLogger("aifixer.test.redact")
    caplog.handler.addFilter(redact.RedactingFilter())
    token = "ghp_R7tQx2LmZ9wVb4NcK8sYj3HdF6gPa1Ue0Wi5"
    logger.warning("push with %s failed", token)
    try:
        raise RuntimeError(f"auth: password=Sup3rS3cret! {token}")
    except RuntimeError:
        logger.exception("boom")
    text = caplog.text
    assert token not in text and "Sup3rS3cret!" not in text
    assert "push with [redacted] failed" in text and "RuntimeError" in text


def test_an_adapter_error_carries_no_secret():
    """Its message goes to the record, the logs, Flower's retry events and the speech."""
    from aifixer.adapters.errors import PermanentError, TransientError

    for exc in (
        PermanentError("kubernetes", 'Deployment is invalid: env[0].value "DB_PASS=hunter2x"'),
        TransientError("forge", "push to https://x-access-token:s3cr3tvalue@github.com failed"),
    ):
        assert "hunter2x" not in str(exc) and "s3cr3tvalue" not in str(exc)
        assert "hunter2x" not in exc.message and redact.REDACTED in exc.message
