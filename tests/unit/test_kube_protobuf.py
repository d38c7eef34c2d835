"""Kubernetes' protobuf request bodies, decoded as the API stand-in decodes them."""

from __future__ import annotations

import pytest

from aifixer_sandbox.kube import protobuf

# `kubectl create configmap x --from-literal=a=b` (v1.32), byte for byte as it was sent.
CONFIGMAP = bytes.fromhex(
    "6b387300 0a0f0a02 76311209 436f6e66 69674d61 70121b0a 110a0178 12001a00"
    "22002a00 32003800 42001206 0a016112 01621a00 2200"
)


def test_a_configmap_as_kubectl_sends_it():
    assert protobuf.decode(CONFIGMAP) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},  # the zero values Go writes are left out, as JSON does
        "data": {"a": "b"},
    }


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def _envelope(api_version: bytes, kind: bytes, raw: bytes) -> bytes:
    type_meta = _field(1, api_version) + _field(2, kind)
    return protobuf.MAGIC + _field(1, type_meta) + _field(2, raw)


def test_secret_bytes_become_base64_and_labels_a_map():
    labels = _field(11, _field(1, b"app") + _field(2, b"web"))
    created = _field(8, bytes([1 << 3, 0x80, 0x94, 0xEB, 0xDC, 0x03]))  # seconds=1000000000
    meta = _field(1, _field(1, b"s") + labels + created)
    data = _field(2, _field(1, b"k") + _field(2, b"\x00\xff"))
    kind_type = _field(3, b"Opaque")
    assert protobuf.decode(_envelope(b"v1", b"Secret", meta + data + kind_type)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "labels": {"app": "web"},
            "creationTimestamp": "2001-09-09T01:46:40Z",
        },
        "data": {"k": "AP8="},
        "type": "Opaque",
    }


def test_unknown_kinds_and_fields_are_undecodable_not_dropped():
    with pytest.raises(protobuf.Undecodable):
        protobuf.decode(_envelope(b"apps/v1", b"Deployment", b""))
    with pytest.raises(protobuf.Undecodable):
        protobuf.decode(_envelope(b"v1", b"ConfigMap", _field(9, b"x")))
    assert not protobuf.decodable("apps/v1", "Deployment")
    assert protobuf.decodable("v1", "Namespace")


def test_malformed_bodies():
    with pytest.raises(protobuf.Malformed, match="expected prefix"):
        protobuf.decode(b'{"kind": "ConfigMap"}')
    with pytest.raises(protobuf.Malformed):
        protobuf.decode(CONFIGMAP[:-3])
