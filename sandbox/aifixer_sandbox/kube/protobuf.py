"""Request bodies in Kubernetes' protobuf encoding, decoded for the kinds kubectl sends so.

kubectl v1.32's `create configmap|secret|namespace|serviceaccount` go through client-go's
typed clients, which prefer protobuf and never fall back to JSON on a 415. The real API
server decodes these built-in kinds natively; this decodes them too, into the same JSON
object the client would have sent, and the write goes on through the ordinary pipeline.

Wire format (`k8s.io/apimachinery/pkg/runtime/serializer/protobuf`): the 4-byte magic
`k8s\\0`, then a `runtime.Unknown` message whose `typeMeta` names apiVersion and kind and
whose `raw` holds the object's own message. Field numbers are those of the generated
`.proto` files of k8s.io/api and k8s.io/apimachinery.

Only the messages below are known. A body of another kind, or with a field these tables
do not have, is `Undecodable`: the server answers 415 without listing protobuf among the
media types it accepts for that kind, as it does for kinds it has no protobuf codec for,
rather than store an object with fields silently dropped.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class Undecodable(Exception):
    """The body is protobuf this module has no message description for."""


class Malformed(Exception):
    """The body is not a well-formed protobuf object (the real decoder's 400)."""


# A field: (JSON name, type). Types: "string", "bytes" (base64 in JSON), "int", "bool",
# "time" (meta/v1 Time -> RFC 3339), "map" (string -> string), "bytesmap" (string ->
# bytes, base64 values), or the name of another message. A leading "*" marks a repeated
# field. Go's protobuf encoder writes every non-pointer field, zero values included; the
# JSON encoder leaves those out (omitempty), and so does the decoding below.
Field = tuple[str, str]
MESSAGES: dict[str, dict[int, Field]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "bytes"), 3: ("contentEncoding", "string"), 4: ("contentType", "string")},
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "ObjectMeta": {
        1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
        4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
        7: ("generation", "int"), 8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
        10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map"), 12: ("annotations", "map"),
        13: ("ownerReferences", "*OwnerReference"), 14: ("finalizers", "*string"),
        17: ("managedFields", "*ManagedFieldsEntry"),
    },
    "OwnerReference": {
        5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
        6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool"),
    },
    "ManagedFieldsEntry": {
        1: ("manager", "string"), 2: ("operation", "string"), 3: ("apiVersion", "string"),
        4: ("time", "time"), 6: ("fieldsType", "string"), 7: ("fieldsV1", "FieldsV1"),
        8: ("subresource", "string"),
    },
    "FieldsV1": {1: ("Raw", "bytes")},  # JSON: the raw JSON document itself (below)
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "bytesmap"), 4: ("immutable", "bool")},
    "Secret": {
        1: ("metadata", "ObjectMeta"), 2: ("data", "bytesmap"), 3: ("type", "string"),
        4: ("stringData", "map"), 5: ("immutable", "bool"),
    },
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "*string")},
    "NamespaceStatus": {1: ("phase", "string"), 2: ("conditions", "*NamespaceCondition")},
    "NamespaceCondition": {
        1: ("type", "string"), 2: ("status", "string"), 4: ("lastTransitionTime", "time"),
        5: ("reason", "string"), 6: ("message", "string"),
    },
    "ServiceAccount": {
        1: ("metadata", "ObjectMeta"), 2: ("secrets", "*ObjectReference"),
        3: ("imagePullSecrets", "*LocalObjectReference"), 4: ("automountServiceAccountToken", "bool"),
    },
    "ObjectReference": {
        1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"), 4: ("uid", "string"),
        5: ("apiVersion", "string"), 6: ("resourceVersion", "string"), 7: ("fieldPath", "string"),
    },
    "LocalObjectReference": {1: ("name", "string")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
}  # fmt: skip

# (apiVersion, kind) -> the message of its objects.
KINDS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "Namespace"): "Namespace",
    ("v1", "ServiceAccount"): "ServiceAccount",
}


def decodable(api_version: str, kind: str) -> bool:
    """Whether bodies of this kind may come as protobuf (the 415 lists it only then)."""
    return (api_version, kind) in KINDS


def decode(data: bytes) -> dict[str, Any]:
    """The object a protobuf request body encodes, as JSON would have carried it."""
    if not data.startswith(MAGIC):
        raise Malformed(
            f"provided data does not appear to be a protobuf message, expected prefix {list(MAGIC)}"
        )
    envelope = _message(data[len(MAGIC) :], "Unknown")
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if envelope.get("contentEncoding") or envelope.get("contentType", "") not in ("", MEDIA_TYPE):
        raise Undecodable(f"{api_version}, Kind={kind}: unsupported content in the envelope")
    name = KINDS.get((api_version, kind))
    if name is None:
        raise Undecodable(f"no protobuf description of {api_version}, Kind={kind}")
    raw = base64.b64decode(envelope.get("raw", ""))
    return {"apiVersion": api_version, "kind": kind, **_message(raw, name)}


# -- the wire format --------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Malformed("unexpected EOF")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) for each field: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise Malformed("unexpected EOF")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise Malformed(f"proto: illegal wireType {wire}")
        yield number, wire, value


def _message(data: bytes, name: str) -> dict[str, Any]:
    fields = MESSAGES[name]
    out: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number not in fields:
            raise Undecodable(f"{name} has no field {number} here")
        json_name, typ = fields[number]
        repeated = typ.startswith("*")
        typ = typ.lstrip("*")
        if typ in ("map", "bytesmap"):
            key, item = _map_entry(_bytes(value, wire), typ == "bytesmap")
            out.setdefault(json_name, {})[key] = item
            continue
        decoded = _value(value, wire, typ)
        if repeated:
            out.setdefault(json_name, []).append(decoded)
        elif decoded not in ("", 0, None, {}) or typ == "bool":
            out[json_name] = decoded
    return out


def _bytes(value: int | bytes, wire: int) -> bytes:
    if wire != 2 or not isinstance(value, bytes):
        raise Malformed("proto: wrong wireType for a length-delimited field")
    return value


def _value(value: int | bytes, wire: int, typ: str) -> Any:
    if typ == "int":
        if wire != 0 or not isinstance(value, int):
            raise Malformed("proto: wrong wireType for an integer field")
        return value - (1 << 64) if value >= 1 << 63 else value
    if typ == "bool":
        if wire != 0:
            raise Malformed("proto: wrong wireType for a bool field")
        return bool(value)
    data = _bytes(value, wire)
    if typ == "string":
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise Malformed("proto: invalid UTF-8 in a string field") from None
    if typ == "bytes":
        return base64.b64encode(data).decode()
    if typ == "time":
        t = _message(data, "Time")
        if not t:
            return None  # the zero Time: JSON null, omitted
        when = datetime.fromtimestamp(t.get("seconds", 0), UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if typ == "FieldsV1":
        raw = _message(data, "FieldsV1").get("Raw", "")
        return json.loads(base64.b64decode(raw) or b"{}")
    return _message(data, typ)


def _map_entry(data: bytes, binary: bool) -> tuple[str, Any]:
    key, item = "", ""
    for number, wire, value in _fields(data):
        if number == 1:
            key = _value(value, wire, "string")
        elif number == 2:
            item = _value(value, wire, "bytes" if binary else "string")
        else:
            raise Undecodable(f"map entry has no field {number}")
    return key, item
