"""Kubernetes v1.32 object schemas: lookup, patch metadata, validation and OpenAPI v3 documents.

The real API server knows every built-in type from Go structs; the stand-in gets the same
knowledge from the JSON Schemas shipped by the `kubernetes-validate` package (converted from
the v1.32 OpenAPI document, Kubernetes extensions included). From them this module derives:

- patch metadata (`x-kubernetes-patch-strategy`, merge keys, list types) for strategic merge
  patch and server-side apply;
- decoding and validation errors worded like the real server's, because the product (and
  kubectl) show these messages to people and to the LLM that repairs manifests;
- the OpenAPI v3 documents kubectl v1.32 downloads for `apply` and `explain`.

Everything is loaded once, lazily, and the functions are pure.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aifixer_sandbox.kube.quantity import QuantityError, parse_quantity

SCHEMA_PACKAGE = "kubernetes_validate"
SCHEMA_VERSION = "v1.32"
_REF_PREFIX = "#/$defs/"
_OPENAPI_REF_PREFIX = "#/components/schemas/"

# ---------------------------------------------------------------------------------------------
# Loading


@functools.cache
def definitions() -> dict[str, dict]:
    """All 638 definitions (`io.k8s.api.apps.v1.Deployment` -> JSON Schema), loaded once."""
    root = importlib.resources.files(SCHEMA_PACKAGE) / "kubernetes-json-schema"
    candidates = sorted(
        (entry.name for entry in root.iterdir() if entry.name.startswith(SCHEMA_VERSION + ".")),
        key=lambda name: (not name.endswith("-local"), name),
    )
    if not candidates:
        raise RuntimeError(f"{SCHEMA_PACKAGE} ships no {SCHEMA_VERSION} schemas")
    text = (root / candidates[0] / "_definitions.json").read_text(encoding="utf-8")
    return json.loads(text)["$defs"]


def split_api_version(api_version: str) -> tuple[str, str]:
    """`apps/v1` -> ("apps", "v1"); `v1` -> ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


@functools.cache
def _gvk_index() -> dict[tuple[str, str, str], str]:
    index: dict[tuple[str, str, str], str] = {}
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            index.setdefault((gvk["group"], gvk["version"], gvk["kind"]), name)
    return index


def definition_name(api_version: str, kind: str) -> str | None:
    group, version = split_api_version(api_version)
    return _gvk_index().get((group, version, kind))


def definition_for(api_version: str, kind: str) -> dict | None:
    """The schema of a kind (`definition_for("apps/v1", "Deployment")`), or None if unknown."""
    name = definition_name(api_version, kind)
    return definitions()[name] if name else None


def group_of_kind(kind: str) -> str | None:
    """API group of a kind when it is unambiguous among resources (`Deployment` -> `apps`)."""
    groups = {g for (g, _v, k) in _gvk_index() if k == kind}
    return groups.pop() if len(groups) == 1 else None


# ---------------------------------------------------------------------------------------------
# Walking schemas


def resolve(schema: dict | None) -> dict:
    """Follow `$ref` chains; an absent schema resolves to `{}` (anything goes)."""
    return _resolve_named(schema)[0]


def _resolve_named(schema: dict | None) -> tuple[dict, str]:
    name = ""
    while schema and isinstance(schema.get("$ref"), str):
        name = schema["$ref"].removeprefix(_REF_PREFIX)
        schema = definitions()[name]
    return schema or {}, name


@dataclass(frozen=True)
class FieldInfo:
    """A field as its parent declares it: the value's schema plus the patch extensions.

    Extensions sit next to the `$ref` on the property (e.g. `DeploymentSpec.strategy` carries
    `retainKeys`), so they are read before the reference is resolved.
    """

    schema: dict
    patch_strategies: tuple[str, ...] = ()
    merge_key: str | None = None
    list_type: str | None = None
    list_map_keys: tuple[str, ...] = ()
    map_type: str | None = None
    definition: str = ""  # e.g. io.k8s.api.apps.v1.DeploymentSpec, for Go-style messages

    @classmethod
    def of(cls, prop: dict | None) -> FieldInfo:
        prop = prop or {}
        resolved, definition = _resolve_named(prop)
        strategy = prop.get("x-kubernetes-patch-strategy") or resolved.get(
            "x-kubernetes-patch-strategy"
        )
        return cls(
            schema=resolved,
            patch_strategies=tuple(s for s in (strategy or "").split(",") if s),
            merge_key=prop.get("x-kubernetes-patch-merge-key"),
            list_type=prop.get("x-kubernetes-list-type") or resolved.get("x-kubernetes-list-type"),
            list_map_keys=tuple(
                prop.get("x-kubernetes-list-map-keys")
                or resolved.get("x-kubernetes-list-map-keys")
                or ()
            ),
            map_type=prop.get("x-kubernetes-map-type") or resolved.get("x-kubernetes-map-type"),
            definition=definition,
        )

    @property
    def kind(self) -> str:
        return value_kind(self.schema)

    @property
    def merges_list(self) -> bool:
        """Strategic merge patch merges this list (instead of replacing it)."""
        return "merge" in self.patch_strategies

    @property
    def associative_keys(self) -> tuple[str, ...]:
        """Keys identifying list items for server-side apply; () if not an associative list."""
        if self.list_type == "map":
            return self.list_map_keys or ((self.merge_key,) if self.merge_key else ())
        if self.list_type is None and self.merges_list and self.merge_key:
            return (self.merge_key,)
        return ()

    @property
    def is_set(self) -> bool:
        return self.list_type == "set" or (
            self.list_type is None and self.merges_list and not self.merge_key
        )

    @property
    def atomic(self) -> bool:
        """Owned and replaced as a whole by server-side apply."""
        if self.kind == "array":
            return not self.associative_keys and not self.is_set
        if self.kind in ("object", "map"):
            return self.map_type == "atomic"
        return True


def value_kind(schema: dict) -> str:
    """Shape of values a (resolved) schema accepts.

    One of object (struct with properties), map (string keys, uniform values), free (any
    JSON object), array, string, integer, number, boolean, int-or-string, quantity, any.
    """
    if "oneOf" in schema:
        types = {_primary_type(option) for option in schema["oneOf"]}
        return "int-or-string" if "integer" in types else "quantity"
    kind = _primary_type(schema)
    if kind == "object":
        if "properties" in schema:
            return "object"
        return "map" if isinstance(schema.get("additionalProperties"), dict) else "free"
    return kind or "any"


def _primary_type(schema: dict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((t for t in kind if t != "null"), None)
    return kind


def child(parent: FieldInfo, name: str) -> FieldInfo | None:
    """The field `name` of an object (property) or map (value schema); None if unknown."""
    return _child(id(parent.schema), parent.schema, name)


_child_cache: dict[tuple[int, str], FieldInfo | None] = {}


def _child(schema_id: int, schema: dict, name: str) -> FieldInfo | None:
    # Definitions live for the whole process, so their ids are stable cache keys.
    key = (schema_id, name)
    if key not in _child_cache:
        props = schema.get("properties")
        if props is not None:
            found = FieldInfo.of(props[name]) if name in props else None
        elif isinstance(schema.get("additionalProperties"), dict):
            found = FieldInfo.of(schema["additionalProperties"])
        elif value_kind(schema) in ("free", "any"):
            found = FieldInfo(schema={})
        else:
            found = None
        _child_cache[key] = found
    return _child_cache[key]


def item(parent: FieldInfo) -> FieldInfo:
    """The element of a list field."""
    return FieldInfo.of(parent.schema.get("items"))


def root_info(api_version: str, kind: str) -> FieldInfo | None:
    name = definition_name(api_version, kind)
    return FieldInfo(schema=definitions()[name], definition=name) if name else None


def field_info(api_version: str, kind: str, path: Iterable[str | int]) -> FieldInfo | None:
    """Walk from a kind to a field: `field_info("apps/v1", "Deployment", ["spec", "strategy"])`.

    Integers step into list elements. Returns None when the path leaves the schema.
    """
    info = root_info(api_version, kind)
    for step in path:
        if info is None:
            return None
        info = item(info) if isinstance(step, int) else child(info, step)
    return info


# ---------------------------------------------------------------------------------------------
# Validation


REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
# Not field.ErrorType values: the request body could not be decoded at all (HTTP 400).
UNKNOWN_FIELD = "FieldValueUnknown"
TYPE_MISMATCH = "FieldValueTypeInvalid"
_DECODE_TYPES = (UNKNOWN_FIELD, TYPE_MISMATCH)


@dataclass(frozen=True)
class FieldError:
    """One problem with an object, as `k8s.io/apimachinery/pkg/util/validation/field.Error`.

    `message` is the error body the server puts in `status.details.causes[].message`
    (`Required value`, `Invalid value: "x": ...`); `str()` is `field: message`. Decode
    errors (unknown fields under strict validation, wrong JSON types, bad quantities) fail
    the request with 400 before validation, see `error_status`.
    """

    type: str
    field: str
    message: str

    @property
    def decode(self) -> bool:
        return self.type in _DECODE_TYPES

    def __str__(self) -> str:
        if self.decode:
            return self.message
        return f"{self.field}: {self.message}" if self.field else self.message


def _go_value(value: Any) -> str:
    """Render a bad value as Go's `%#v`/`%q` would in field errors."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
        return f"map[string]string{{{inner}}}"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(REQUIRED, path, f"Required value: {detail}" if detail else "Required value")


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(INVALID, path, f"Invalid value: {_go_value(value)}: {detail}")


def not_supported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    allowed = ", ".join(json.dumps(s) for s in supported)
    return FieldError(
        NOT_SUPPORTED, path, f"Unsupported value: {_go_value(value)}: supported values: {allowed}"
    )


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(DUPLICATE, path, f"Duplicate value: {_go_value(value)}")


def validate(obj: dict, strict: bool = True) -> list[FieldError]:
    """All errors the v1.32 API server would report for creating/updating `obj`.

    If the body would not even decode (wrong JSON types, malformed quantities, or unknown
    fields when `strict`), only those decode errors are returned, as the server stops there.
    Objects of unknown kinds are not checked.
    """
    info = root_info(obj.get("apiVersion", ""), obj.get("kind", ""))
    if info is None:
        return []
    decode_errors = list(_decode_errors(obj, info, "", strict))
    if decode_errors:
        return decode_errors
    errors = list(_required_errors(obj, info, ""))
    errors += _semantic_errors(obj)
    return _dedupe(errors)


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen: set[FieldError] = set()
    return [e for e in errors if not (e in seen or seen.add(e))]


def unknown_fields(obj: dict) -> list[str]:
    """Paths of fields the schema does not know (`spec.foo`): the `fieldValidation=Warn` list."""
    info = root_info(obj.get("apiVersion", ""), obj.get("kind", ""))
    if info is None:
        return []
    return [e.field for e in _decode_errors(obj, info, "", strict=True) if e.type == UNKNOWN_FIELD]


def prune_unknown(obj: dict) -> dict:
    """A copy of `obj` without unknown fields: what the server stores under Ignore/Warn."""
    info = root_info(obj.get("apiVersion", ""), obj.get("kind", ""))
    return _prune(obj, info) if info is not None else obj


def _prune(value: Any, info: FieldInfo) -> Any:
    kind = info.kind
    if isinstance(value, dict) and kind in ("object", "map"):
        pruned = {}
        for key, sub in value.items():
            sub_info = child(info, key)
            if sub_info is not None:
                pruned[key] = _prune(sub, sub_info)
        return pruned
    if isinstance(value, list) and kind == "array":
        element = item(info)
        return [_prune(v, element) for v in value]
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# Which JSON values Go's decoder accepts for each schema shape (null is always accepted).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "map": (dict,),
    "free": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "int-or-string": (int, str),
    "quantity": (int, float, str),
}


def _decode_errors(
    value: Any, info: FieldInfo, path: str, strict: bool, struct: str = ""
) -> Iterator[FieldError]:
    if value is None:
        return
    kind = info.kind
    accepted = _ACCEPTS.get(kind)
    if accepted is not None and not _accepts(value, kind, accepted):
        yield _type_mismatch(value, info, path, struct)
        return
    if kind == "quantity" and isinstance(value, str):
        try:
            parse_quantity(value)
        except QuantityError as exc:
            yield FieldError(TYPE_MISMATCH, path, str(exc))
    elif kind in ("object", "map"):
        for key, sub in value.items():
            sub_path = _join(path, key) if kind == "object" else f"{path}[{key}]"
            sub_info = child(info, key)
            if sub_info is None:
                if strict:
                    yield FieldError(UNKNOWN_FIELD, sub_path, f'unknown field "{sub_path}"')
                continue
            yield from _decode_errors(sub, sub_info, sub_path, strict, _struct_name(info) or struct)
    elif kind == "array":
        element = item(info)
        for index, sub in enumerate(value):
            yield from _decode_errors(sub, element, f"{path}[{index}]", strict, struct)


def _accepts(value: Any, kind: str, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind in ("integer", "int-or-string") and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, accepted)


def _struct_name(info: FieldInfo) -> str:
    return info.definition.rpartition(".")[2]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _go_type(info: FieldInfo) -> str:
    kind = info.kind
    fmt = info.schema.get("format")
    if kind == "integer":
        return fmt or "int64"
    if kind == "number":
        return "float64"
    if kind == "boolean":
        return "bool"
    if kind == "array":
        return "[]" + _go_type(item(info))
    if kind == "map":
        return "map[string]" + _go_type(FieldInfo.of(info.schema["additionalProperties"]))
    if kind == "object":
        package, _, struct = info.definition.rpartition(".")
        return f"{package.rpartition('.')[2]}.{struct}"
    if kind == "int-or-string":
        return "intstr.IntOrString"
    if kind == "quantity":
        return "resource.Quantity"
    return kind


def _type_mismatch(value: Any, info: FieldInfo, path: str, struct: str) -> FieldError:
    dotted = re.sub(r"\[[^\]]*\]", "", path)
    where = f"Go struct field {struct}.{dotted}" if struct else "Go value"
    message = f"json: cannot unmarshal {_json_type(value)} into {where} of type {_go_type(info)}"
    return FieldError(TYPE_MISMATCH, path, message)


def _required_errors(value: Any, info: FieldInfo, path: str) -> Iterator[FieldError]:
    kind = info.kind
    if kind == "object" and isinstance(value, dict):
        for name in info.schema.get("required", ()):
            if value.get(name) in (None, "", []):
                yield required(_join(path, name))
        for key, sub in value.items():
            sub_info = child(info, key)
            if sub_info is not None and sub is not None:
                yield from _required_errors(sub, sub_info, _join(path, key))
    elif kind == "map" and isinstance(value, dict):
        element = child(info, "")
        for key, sub in value.items():
            if element is not None and sub is not None:
                yield from _required_errors(sub, element, f"{path}[{key}]")
    elif kind == "array" and isinstance(value, list):
        element = item(info)
        for index, sub in enumerate(value):
            if sub is not None:
                yield from _required_errors(sub, element, f"{path}[{index}]")


# --- semantic checks: the parts of pkg/apis/*/validation that matter for workloads ------------

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{DNS1123_SUBDOMAIN}')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    f"regex used for validation is '{DNS1123_LABEL}')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    f"'12345', regex used for validation is '{_LABEL_VALUE}')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
    f"regex used for validation is '{_QUALIFIED_NAME}')"
)
ENV_NAME_MSG = (
    "a valid environment variable name must consist only of printable ASCII characters "
    "other than '='"
)
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"
_IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_PROTOCOLS = ("SCTP", "TCP", "UDP")
_DEPLOYMENT_STRATEGIES = ("Recreate", "RollingUpdate")
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
_TEMPLATED_KINDS = {
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "ReplicationController",
}


def _semantic_errors(obj: dict) -> list[FieldError]:
    kind = obj.get("kind")
    errors = _metadata_errors(obj.get("metadata") or {}, "metadata", namespaced_name=True)
    spec = obj.get("spec") or {}
    if kind == "Pod":
        errors += _pod_spec_errors(spec, "spec", restart_policies=_RESTART_POLICIES)
    elif kind in _TEMPLATED_KINDS:
        errors += _workload_errors(kind, spec)
    return errors


def _metadata_errors(meta: dict, path: str, namespaced_name: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    name = meta.get("name")
    if namespaced_name:
        if not name and not meta.get("generateName"):
            errors.append(required(f"{path}.name", "name or generateName is required"))
        elif name:
            errors += [invalid(f"{path}.name", name, msg) for msg in _subdomain_problems(name)]
    errors += _label_errors(meta.get("labels") or {}, f"{path}.labels")
    return errors


def _subdomain_problems(name: str) -> list[str]:
    problems = []
    if len(name) > 253:
        problems.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN, name):
        problems.append(SUBDOMAIN_MSG)
    return problems


def _label_errors(labels: dict, path: str) -> list[FieldError]:
    errors = []
    for key, value in labels.items():
        name = key.rpartition("/")[2]
        if not re.fullmatch(_QUALIFIED_NAME, name) or len(name) > 63:
            errors.append(invalid(path, key, QUALIFIED_NAME_MSG))
        if not isinstance(value, str) or not re.fullmatch(_LABEL_VALUE, value) or len(value) > 63:
            errors.append(invalid(f"{path}", value, LABEL_VALUE_MSG))
    return errors


def _workload_errors(kind: str, spec: dict) -> list[FieldError]:
    errors: list[FieldError] = []
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errors.append(invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = spec.get("selector")
    if kind != "Job" and kind != "ReplicationController":
        errors += _selector_errors(selector, labels)
    strategy_type = (spec.get("strategy") or {}).get("type")
    if kind == "Deployment" and strategy_type and strategy_type not in _DEPLOYMENT_STRATEGIES:
        errors.append(not_supported("spec.strategy.type", strategy_type, _DEPLOYMENT_STRATEGIES))
    errors += _metadata_errors(
        template.get("metadata") or {}, "spec.template.metadata", namespaced_name=False
    )
    restart = ("OnFailure", "Never") if kind == "Job" else ("Always",)
    errors += _pod_spec_errors(
        template.get("spec") or {}, "spec.template.spec", restart_policies=restart
    )
    return errors


def _selector_errors(selector: dict | None, labels: dict) -> list[FieldError]:
    if selector is None:
        return []  # already reported as a missing required field
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return [invalid("spec.selector", selector, "empty selector is invalid for deployment")]
    if not _selector_matches(match_labels, expressions, labels):
        return [
            invalid(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            )
        ]
    return []


def _selector_matches(match_labels: dict, expressions: list[dict], labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in expressions:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def _pod_spec_errors(spec: dict, path: str, restart_policies: tuple[str, ...]) -> list[FieldError]:
    errors: list[FieldError] = []
    containers = spec.get("containers") or []
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            if isinstance(container, dict):
                errors += _container_errors(container, f"{path}.{group}[{index}]", seen, volumes)
    if not containers:
        errors.insert(0, required(f"{path}.containers"))
    restart = spec.get("restartPolicy")
    if restart and restart not in restart_policies:
        errors.append(not_supported(f"{path}.restartPolicy", restart, restart_policies))
    return errors


def _container_errors(container: dict, path: str, seen: set[str], volumes: set) -> list[FieldError]:
    errors: list[FieldError] = []
    name = container.get("name")
    if name:
        if not re.fullmatch(DNS1123_LABEL, name) or len(name) > 63:
            errors.append(invalid(f"{path}.name", name, LABEL_MSG))
        elif name in seen:
            errors.append(duplicate(f"{path}.name", name))
        seen.add(name)
    image = container.get("image")
    if not image:
        errors.append(required(f"{path}.image"))
    elif image != image.strip():
        errors.append(
            invalid(f"{path}.image", image, "must not have leading or trailing whitespace")
        )
    policy = container.get("imagePullPolicy")
    if policy and policy not in _IMAGE_PULL_POLICIES:
        errors.append(not_supported(f"{path}.imagePullPolicy", policy, _IMAGE_PULL_POLICIES))
    errors += _port_errors(container.get("ports") or [], f"{path}.ports")
    errors += _env_errors(container.get("env") or [], f"{path}.env")
    errors += _resource_errors(container.get("resources") or {}, f"{path}.resources")
    for index, mount in enumerate(container.get("volumeMounts") or []):
        if mount.get("name") and mount["name"] not in volumes:
            errors.append(not_found(f"{path}.volumeMounts[{index}].name", mount["name"]))
    for probe in _PROBES:
        if container.get(probe) is not None:
            errors += _probe_errors(container[probe], f"{path}.{probe}")
    return errors


def not_found(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueNotFound", path, f"Not found: {_go_value(value)}")


def _port_errors(ports: list[dict], path: str) -> list[FieldError]:
    errors = []
    for index, port in enumerate(ports):
        number = port.get("containerPort")
        if isinstance(number, int) and not 1 <= number <= 65535:
            errors.append(invalid(f"{path}[{index}].containerPort", number, PORT_RANGE_MSG))
        protocol = port.get("protocol")
        if protocol and protocol not in _PROTOCOLS:
            errors.append(not_supported(f"{path}[{index}].protocol", protocol, _PROTOCOLS))
    return errors


def _env_errors(env: list[dict], path: str) -> list[FieldError]:
    errors = []
    for index, var in enumerate(env):
        name = var.get("name")
        if name and (not name.isascii() or not name.isprintable() or "=" in name):
            errors.append(invalid(f"{path}[{index}].name", name, ENV_NAME_MSG))
    return errors


def _resource_errors(resources: dict, path: str) -> list[FieldError]:
    errors = []
    limits = resources.get("limits") or {}
    for section in ("limits", "requests"):
        for name, value in (resources.get(section) or {}).items():
            if parse_quantity(value) < 0:
                errors.append(
                    invalid(
                        f"{path}.{section}[{name}]", value, "must be greater than or equal to 0"
                    )
                )
    for name, value in (resources.get("requests") or {}).items():
        if name in limits and parse_quantity(value) > parse_quantity(limits[name]):
            errors.append(
                invalid(
                    f"{path}.requests",
                    value,
                    f"must be less than or equal to {name} limit of {limits[name]}",
                )
            )
    return errors


def _probe_errors(probe: dict, path: str) -> list[FieldError]:
    handlers = [h for h in _PROBE_HANDLERS if probe.get(h) is not None]
    if not handlers:
        return [required(path, "must specify a handler type")]
    if len(handlers) > 1:
        return [
            FieldError(
                FORBIDDEN,
                f"{path}.{handlers[1]}",
                "Forbidden: may not specify more than 1 handler type",
            )
        ]
    handler = handlers[0]
    port = probe[handler].get("port") if handler != "exec" else None
    if port is None:
        return [] if handler == "exec" else [required(f"{path}.{handler}.port")]
    return _probe_port_errors(port, f"{path}.{handler}.port")


def _probe_port_errors(port: int | str, path: str) -> list[FieldError]:
    if isinstance(port, int):
        return [] if 1 <= port <= 65535 else [invalid(path, port, PORT_RANGE_MSG)]
    if len(port) > 15:
        return [invalid(path, port, "must be no more than 15 characters")]
    if not re.fullmatch(r"[-a-z0-9]+", port):
        return [
            invalid(
                path, port, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
            )
        ]
    if not re.search(r"[a-z]", port):
        return [invalid(path, port, "must contain at least one letter (a-z)")]
    return []


# --- the Status the server answers with ------------------------------------------------------


def qualified_kind(kind: str, api_version: str | None = None) -> str:
    """`Deployment.apps`, or just `Pod` for the core group."""
    if "." in kind:
        return kind
    group = split_api_version(api_version)[0] if api_version is not None else group_of_kind(kind)
    return f"{kind}.{group}" if group else kind


def status_reason_message(
    kind: str, name: str, errors: list[FieldError], api_version: str | None = None
) -> str:
    """The 422 message: `Deployment.apps "x" is invalid: spec.replicas: Invalid value: ...`.

    Several errors are joined as Go's `utilerrors.Aggregate` does: `[a, b]`.
    """
    prefix = f"{qualified_kind(kind, api_version)} {json.dumps(name)} is invalid"
    texts = list(dict.fromkeys(str(e) for e in errors))
    if not texts:
        return prefix
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return f"{prefix}: {joined}"


def decode_error_message(api_version: str, kind: str, errors: list[FieldError]) -> str:
    """The 400 message for a body that does not decode (type errors win over unknown fields)."""
    version = split_api_version(api_version)[1]
    head = f"{kind} in version {json.dumps(version)} cannot be handled as a {kind}: "
    type_errors = [e for e in errors if e.type == TYPE_MISMATCH]
    if type_errors:
        return head + type_errors[0].message
    return (
        head
        + "strict decoding error: "
        + ", ".join(e.message for e in errors if e.type == UNKNOWN_FIELD)
    )


def error_status(api_version: str, kind: str, name: str, errors: list[FieldError]) -> dict:
    """The full `Status` body for a failed create/update (400 for decode errors, else 422)."""
    if any(e.decode for e in errors):
        message = decode_error_message(api_version, kind, errors)
        return _status(400, "BadRequest", message)
    causes = [{"reason": e.type, "message": e.message, "field": e.field} for e in errors]
    details = {
        "name": name,
        "group": split_api_version(api_version)[0],
        "kind": kind,
        "causes": causes,
    }
    return _status(422, "Invalid", status_reason_message(kind, name, errors, api_version), details)


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    status["reason"] = reason
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


# ---------------------------------------------------------------------------------------------
# OpenAPI v3 documents for kubectl


# Kinds whose objects are not namespaced; everything else served here lives in a namespace.
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ComponentStatus",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "PriorityClass",
        "RuntimeClass",
        "CustomResourceDefinition",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "CertificateSigningRequest",
        "IngressClass",
        "FlowSchema",
        "PriorityLevelConfiguration",
        "SelfSubjectReview",
        "TokenReview",
        "SubjectAccessReview",
        "SelfSubjectAccessReview",
        "SelfSubjectRulesReview",
        "IPAddress",
        "ServiceCIDR",
        "DeviceClass",
        "ResourceSlice",
        "StorageVersionMigration",
        "VolumeAttributesClass",
    }
)
_IRREGULAR_PLURALS = {"Endpoints": "endpoints"}
_META_KINDS = frozenset(
    {"DeleteOptions", "WatchEvent", "Status", "APIResourceList", "APIGroup", "APIVersions"}
)
_PATCH_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def plural(kind: str) -> str:
    """Resource name of a kind: Deployment -> deployments, Ingress -> ingresses."""
    if kind in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[kind]
    lower = kind.lower()
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def _normalize_gv(group_version: str) -> str:
    """Accept `apps/v1`, `v1`, `apis/apps/v1` or `api/v1`; return the group version."""
    if group_version.startswith("apis/"):
        return group_version.removeprefix("apis/")
    if group_version.startswith("api/"):
        return group_version.removeprefix("api/")
    return group_version


def openapi_base_path(group_version: str) -> str:
    """`apps/v1` -> `apis/apps/v1`, `v1` -> `api/v1` (the keys of `GET /openapi/v3`)."""
    gv = _normalize_gv(group_version)
    return f"apis/{gv}" if "/" in gv else f"api/{gv}"


def openapi_v3_root(base_paths: Iterable[str]) -> dict:
    """`GET /openapi/v3`: one entry per group version, each URL carrying its document's hash."""
    paths = {}
    for entry in base_paths:
        base = openapi_base_path(entry)
        paths[base] = {"serverRelativeURL": f"/openapi/v3/{base}?hash={openapi_v3_hash(entry)}"}
    return {"paths": paths}


def openapi_v3_group_version(group_version: str) -> dict:
    """The OpenAPI v3 document of one group version (`apps/v1`), as kubectl v1.32 reads it."""
    return json.loads(openapi_v3_group_version_bytes(group_version))


def openapi_v3_hash(group_version: str) -> str:
    return _rendered(_normalize_gv(group_version))[1]


def openapi_v3_group_version_bytes(group_version: str) -> bytes:
    """The rendered JSON bytes of `openapi_v3_group_version` (cached: serve them directly)."""
    return _rendered(_normalize_gv(group_version))[0]


@functools.cache
def _rendered(group_version: str) -> tuple[bytes, str]:
    body = json.dumps(_build_group_version_doc(group_version), separators=(",", ":")).encode()
    return body, hashlib.sha512(body).hexdigest().upper()


def _resource_kinds(group_version: str) -> list[tuple[str, str]]:
    """(kind, definition name) of the top-level resources served in a group version."""
    group, version = split_api_version(group_version)
    kinds = []
    for (g, v, kind), name in sorted(_gvk_index().items()):
        if (g, v) != (group, version) or kind in _META_KINDS or kind.endswith("List"):
            continue
        props = definitions()[name].get("properties", {})
        if "metadata" in props:
            kinds.append((kind, name))
    return kinds


def _build_group_version_doc(group_version: str) -> dict:
    kinds = _resource_kinds(group_version)
    if not kinds:
        raise KeyError(f"no resources in group version {group_version!r}")
    roots = [name for _kind, name in kinds]
    roots += [_list_definition(group_version, kind) for kind, _name in kinds]
    roots += [
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    ]
    schemas = {
        name: _to_openapi(definitions()[name], top=True)
        for name in sorted(_closure(r for r in roots if r))
    }
    paths = {}
    for kind, name in kinds:
        paths.update(_paths_for(group_version, kind, name, _list_definition(group_version, kind)))
    group, version = split_api_version(group_version)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _list_definition(group_version: str, kind: str) -> str | None:
    group, version = split_api_version(group_version)
    return _gvk_index().get((group, version, kind + "List"))


def _closure(roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_refs_in(definitions()[name]))
    return seen


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.removeprefix(_REF_PREFIX)
            else:
                yield from _refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs_in(value)


# The real server publishes these two as plain strings; kubectl explain expects that.
_SCALAR_DEFS = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "type": "string",
        "format": "int-or-string",
    },
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"},
}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def _to_openapi(schema: dict, top: bool = False) -> dict:
    """Convert one JSON Schema 2020-12 node to OpenAPI 3.0, structurally.

    Only schema positions are rewritten, so a *property* called `$ref` or `type` (as in
    JSONSchemaProps) is kept as a property name.
    """
    if top:
        for name, replacement in _SCALAR_DEFS.items():
            if schema is definitions().get(name):
                return (
                    {"description": schema.get("description", ""), **replacement}
                    if schema.get("description")
                    else dict(replacement)
                )
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$schema", "$id"):
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = _OPENAPI_REF_PREFIX + value.removeprefix(_REF_PREFIX)
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out[key] = types[0] if len(types) == 1 else types
            if "null" in value:
                out["nullable"] = True
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _to_openapi(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_to_openapi(sub) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _to_openapi(value)
        else:
            out[key] = value
    if top and "x-kubernetes-group-version-kind" in out:
        # kubernetes-validate pins apiVersion/kind with enums; the real document does not.
        for prop in ("apiVersion", "kind"):
            if prop in out.get("properties", {}):
                out["properties"][prop] = {
                    k: v for k, v in out["properties"][prop].items() if k != "enum"
                }
    return out


def resource_paths(
    group_version: str,
    kind: str,
    definition: str,
    list_definition: str,
    plural_name: str,
    namespaced: bool,
) -> dict:
    """The OpenAPI v3 paths of a resource the built-in tables do not know (a custom one)."""
    return _paths_for(group_version, kind, definition, list_definition, plural_name, namespaced)


def _paths_for(
    group_version: str,
    kind: str,
    definition: str,
    list_definition: str | None,
    plural_name: str | None = None,
    namespaced: bool | None = None,
) -> dict:
    group, version = split_api_version(group_version)
    gvk = {"group": group, "version": version, "kind": kind}
    base = "/" + openapi_base_path(group_version)
    if namespaced is None:
        namespaced = kind not in CLUSTER_SCOPED
    scope = "/namespaces/{namespace}" if namespaced else ""
    collection = f"{base}{scope}/{plural_name or plural(kind)}"
    ref = {"$ref": _OPENAPI_REF_PREFIX + definition}
    list_ref = {"$ref": _OPENAPI_REF_PREFIX + list_definition} if list_definition else ref
    common = [_param("pretty", "query")]
    if scope:
        common.insert(0, _param("namespace", "path"))
    write_params = [
        _param("dryRun", "query"),
        _param("fieldManager", "query"),
        _param("fieldValidation", "query"),
    ]

    def op(
        action: str, verb: str, response: dict, params: list[dict], body: dict | None = None
    ) -> dict:
        operation = {
            "operationId": f"{verb}{'Namespaced' if scope else ''}{kind}",
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": response}}}
            },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }
        if body is not None:
            operation["requestBody"] = body
        return operation

    whole = {"content": {"*/*": {"schema": ref}}, "required": True}
    patch_body = {
        "content": {
            t: {
                "schema": {
                    "$ref": _OPENAPI_REF_PREFIX + "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
                }
            }
            for t in _PATCH_TYPES
        },
        "required": True,
    }
    status_ref = {"$ref": _OPENAPI_REF_PREFIX + "io.k8s.apimachinery.pkg.apis.meta.v1.Status"}
    return {
        collection: {
            "get": op(
                "list",
                "list",
                list_ref,
                [_param("labelSelector", "query"), _param("limit", "query")],
            ),
            "post": op("post", "create", ref, write_params, whole),
            "parameters": common,
        },
        f"{collection}/{{name}}": {
            "get": op("get", "read", ref, []),
            "put": op("put", "replace", ref, write_params, whole),
            "patch": op(
                "patch",
                "patch",
                ref,
                write_params + [_param("force", "query", "boolean")],
                patch_body,
            ),
            "delete": op(
                "delete", "delete", status_ref, [_param("gracePeriodSeconds", "query", "integer")]
            ),
            "parameters": [_param("name", "path")] + common,
        },
    }


def _param(name: str, where: str, kind: str = "string") -> dict:
    param = {"name": name, "in": where, "schema": {"type": kind, "uniqueItems": True}}
    if where == "path":
        param["required"] = True
    return param
