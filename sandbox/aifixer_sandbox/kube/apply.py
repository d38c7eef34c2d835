"""Server-side apply and `metadata.managedFields`, after sigs.k8s.io/structured-merge-diff.

Every write records which manager set which fields, in the `FieldsV1` trie format the real
server uses (`f:<field>`, `k:{"name":"app"}` for items of associative lists, `v:<json>` for
items of sets, `.` for "the item itself"). Server-side apply uses that ownership to detect
conflicts (`kubectl apply --server-side` without `--force-conflicts`) and to delete fields a
manager stopped applying. Simplifications, deliberately: field sets are computed from the
objects as sent (no defaulting pass), list items merge in live order with new items
appended, and Update entries never carry `.` markers for maps or optional structs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from aifixer_sandbox.kube import schema
from aifixer_sandbox.kube.schema import FieldInfo

Path = tuple[str, ...]

# Metadata the field manager never tracks (structured-merge-diff's "stripMeta").
_UNTRACKED: frozenset[Path] = frozenset(
    {("f:apiVersion",), ("f:kind",)}
    | {
        ("f:metadata", f"f:{name}")
        for name in (
            "name", "namespace", "creationTimestamp", "selfLink", "uid", "generation",
            "managedFields", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
        )
    }
)  # fmt: skip
_MISSING = object()

# A schema for kinds the server has no schema for: objects stay granular, lists atomic.
_GRANULAR: dict = {"type": "object"}
_GRANULAR["additionalProperties"] = _GRANULAR


class Conflict(NamedTuple):
    manager: str  # e.g. kubectl-client-side-apply
    field_path: str  # e.g. .spec.replicas
    manager_label: str  # e.g. "kubectl-client-side-apply" using apps/v1


class ApplyConflict(Exception):
    """Applying would change fields another manager owns (HTTP 409 Conflict)."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        self.message = _conflict_message(conflicts)
        super().__init__(self.message)

    def status(self) -> dict:
        causes = [
            {
                "reason": "FieldManagerConflict",
                "message": f"conflict with {c.manager_label}",
                "field": c.field_path,
            }
            for c in self.conflicts
        ]
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": "Conflict", "details": {"causes": causes}, "code": 409,
        }  # fmt: skip


def _conflict_message(conflicts: list[Conflict]) -> str:
    if len(conflicts) == 1:
        only = conflicts[0]
        return (
            f"Apply failed with 1 conflict: conflict with {only.manager_label}: {only.field_path}"
        )
    by_manager: dict[str, list[str]] = {}
    for conflict in conflicts:
        by_manager.setdefault(conflict.manager_label, []).append(conflict.field_path)
    lines = []
    for label in sorted(by_manager):
        lines.append(f"conflicts with {label}:")
        lines += [f"- {path}" for path in by_manager[label]]
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Field sets


def _root(api_version: str, kind: str) -> FieldInfo:
    return schema.root_info(api_version, kind) or FieldInfo(schema=_GRANULAR)


def _key_element(item: dict, keys: Iterable[str]) -> str:
    present = {k: item[k] for k in sorted(keys) if k in item}
    return "k:" + json.dumps(present, separators=(",", ":"))


def _value_element(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"))


def _collect(value: Any, info: FieldInfo, prefix: Path, out: set[Path]) -> None:
    kind = info.kind
    if isinstance(value, dict) and kind in ("object", "map") and not info.atomic and value:
        for key, sub in value.items():
            if sub is not None:
                _collect(
                    sub, schema.child(info, key) or FieldInfo(schema={}), (*prefix, f"f:{key}"), out
                )
    elif isinstance(value, list) and kind == "array" and not info.atomic and value:
        element = schema.item(info)
        for entry in value:
            if info.is_set:
                out.add((*prefix, _value_element(entry)))
            elif isinstance(entry, dict):
                item_path = (*prefix, _key_element(entry, info.associative_keys))
                out.add(item_path)
                _collect(entry, element, item_path, out)
    elif prefix:
        out.add(prefix)


def field_paths(obj: dict, api_version: str, kind: str) -> set[Path]:
    """Every tracked field path of `obj` (leaves and associative-list items)."""
    out: set[Path] = set()
    _collect(obj, _root(api_version, kind), (), out)
    return {p for p in out if not any(p[: len(u)] == u for u in _UNTRACKED)}


def fieldset_of(obj: dict, api_version: str, kind: str) -> dict:
    """The FieldsV1 trie of all fields set in `obj`."""
    return to_fields_v1(field_paths(obj, api_version, kind))


def to_fields_v1(paths: Iterable[Path]) -> dict:
    paths = set(paths)
    trie: dict = {}
    for path in paths:
        node = trie
        for element in path:
            node = node.setdefault(element, {})
    return _render(trie, (), paths)


def _render(node: dict, prefix: Path, members: set[Path]) -> dict:
    out: dict = {}
    if node and prefix in members:
        out["."] = {}
    for element in sorted(node):
        out[element] = _render(node[element], (*prefix, element), members)
    return out


def from_fields_v1(trie: dict, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for element, sub in (trie or {}).items():
        if element == ".":
            paths.add(prefix)
        elif not sub:
            paths.add((*prefix, element))
        else:
            paths |= from_fields_v1(sub, (*prefix, element))
    return paths


def path_string(path: Path) -> str:
    """structured-merge-diff's rendering: `.spec.template.spec.containers[name="app"].image`."""
    parts = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            parts.append("." + rest)
        elif kind == "k":
            keys = json.loads(rest)
            parts.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]")
        elif kind == "v":
            parts.append(f"[={rest}]")
        else:
            parts.append(f"[{rest}]")
    return "".join(parts)


def _value_at(obj: Any, path: Path) -> Any:
    node = obj
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            node = node.get(rest, _MISSING) if isinstance(node, dict) else _MISSING
        elif kind == "k":
            node = _find_item(node, json.loads(rest))
        elif kind == "v":
            value = json.loads(rest)
            node = value if isinstance(node, list) and value in node else _MISSING
        else:
            node = node[int(rest)] if isinstance(node, list) and int(rest) < len(node) else _MISSING
        if node is _MISSING:
            break
    return node


def _find_item(node: Any, keys: dict) -> Any:
    if not isinstance(node, list):
        return _MISSING
    for entry in node:
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in keys.items()):
            return entry
    return _MISSING


def _remove_path(obj: dict, path: Path) -> None:
    """Delete the field or list item at `path`, then drop containers it leaves empty."""
    parent = _value_at(obj, path[:-1])
    kind, _, rest = path[-1].partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind in ("k", "v") and isinstance(parent, list):
        target = _value_at(obj, path)
        parent[:] = [entry for entry in parent if entry is not target and entry != target]
    else:
        return
    if parent in ({}, []) and len(path) > 1:
        _remove_path(obj, path[:-1])


# ---------------------------------------------------------------------------------------------
# managedFields entries


class _Entry(NamedTuple):
    manager: str
    operation: str
    api_version: str
    subresource: str
    time: str
    paths: frozenset[Path]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        # Appliers are one manager whatever apiVersion they used.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    @property
    def label(self) -> str:
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def render(self) -> dict:
        entry = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def _entries(obj: dict | None) -> list[_Entry]:
    raw = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [
        _Entry(
            manager=e.get("manager", ""),
            operation=e.get("operation", "Update"),
            api_version=e.get("apiVersion", ""),
            subresource=e.get("subresource", ""),
            time=e.get("time", ""),
            paths=frozenset(from_fields_v1(e.get("fieldsV1") or {})),
        )
        for e in raw
    ]


def _with_entries(obj: dict, entries: list[_Entry]) -> dict:
    kept = [e for e in entries if e.paths]
    kept.sort(key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    metadata = obj.setdefault("metadata", {})
    if kept:
        metadata["managedFields"] = [e.render() for e in kept]
    else:
        metadata.pop("managedFields", None)
    return obj


def _owns(paths: frozenset[Path], path: Path) -> bool:
    """Whether `paths` has `path` or anything below it."""
    return any(p[: len(path)] == path for p in paths)


def _changed(before: Any, after: Any, paths: set[Path]) -> set[Path]:
    """Paths of `after` whose value differs from `before` (items: only when added)."""
    inner = {p[:i] for p in paths for i in range(1, len(p))}
    changed = set()
    for path in paths:
        old = _value_at(before, path)
        if old is _MISSING or (path not in inner and old != _value_at(after, path)):
            changed.add(path)
    return changed


# ---------------------------------------------------------------------------------------------
# Writes


def record_update(
    old: dict | None, new: dict, manager: str, now: str, subresource: str = ""
) -> dict:
    """`new` with managedFields updated for an ordinary write (create/update/patch) by `manager`.

    The writer takes ownership of every field it changed; other managers lose those fields
    and everyone loses fields that disappeared. The managedFields of `old` are authoritative.
    """
    api_version, kind = new.get("apiVersion", ""), new.get("kind", "")
    result = copy.deepcopy(new)
    before = field_paths(old, api_version, kind) if old else set()
    after = field_paths(result, api_version, kind)
    changed = frozenset(_changed(old or {}, result, after))
    removed = frozenset(before - after)
    mine = _Entry(manager, "Update", api_version, subresource, now, frozenset())
    entries = []
    for entry in _entries(old):
        if entry.identity == mine.identity:
            mine = entry._replace(api_version=api_version)
        else:
            entries.append(entry._replace(paths=entry.paths - changed - removed))
    if changed:
        mine = mine._replace(paths=(mine.paths | changed) - removed, time=now)
    else:
        mine = mine._replace(paths=mine.paths - removed)
    return _with_entries(result, [*entries, mine])


def server_side_apply(
    live: dict | None, applied: dict, manager: str, force: bool, now: str
) -> dict:
    """The object after `manager` applies `applied` (a PATCH with application/apply-patch+yaml).

    Raises ApplyConflict when a field owned by another manager would change and `force` is
    false; with `force` the applier takes those fields over.
    """
    api_version, kind = applied.get("apiVersion", ""), applied.get("kind", "")
    root = _root(api_version, kind)
    intent = copy.deepcopy(applied)
    intent.pop("status", None)  # status is reset on the main resource
    intent.get("metadata", {}).pop("managedFields", None)
    wanted = field_paths(intent, api_version, kind)
    base = copy.deepcopy(live) if live else {}
    merged = _overlay(base, intent, root)
    changed = frozenset(_changed(base, merged, wanted))

    me = _Entry(manager, "Apply", api_version, "", now, frozenset(wanted))
    others = [e for e in _entries(live) if e.identity != me.identity]
    previous = next((e.paths for e in _entries(live) if e.identity == me.identity), frozenset())
    conflicts = [
        Conflict(e.manager, path_string(p), e.label)
        for e in sorted(others, key=lambda e: e.label)
        for p in sorted(changed & e.paths)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    others = [e._replace(paths=e.paths - changed) for e in others]

    still_owned = frozenset().union(*(e.paths for e in others)) | me.paths
    # Shallow paths first: removing a list item removes everything below it too.
    for path in sorted(previous - me.paths, key=len):
        if not _owns(still_owned, path) and _value_at(merged, path) is not _MISSING:
            _remove_path(merged, path)
    return _with_entries(merged, [me, *others])


def _overlay(live: Any, applied: Any, info: FieldInfo) -> Any:
    """Merge an applied configuration onto the live object, structurally."""
    kind = info.kind
    if isinstance(applied, dict) and kind in ("object", "map") and not info.atomic:
        out = dict(live) if isinstance(live, dict) else {}
        for key, value in applied.items():
            if value is None:
                out.pop(key, None)
            else:
                sub = schema.child(info, key) or FieldInfo(schema={})
                out[key] = _overlay(out.get(key), value, sub)
        return out
    if isinstance(applied, list) and isinstance(live, list) and kind == "array" and not info.atomic:
        if info.is_set:
            return live + [v for v in applied if v not in live]
        return _overlay_items(live, applied, info)
    return copy.deepcopy(applied)


def _overlay_items(live: list, applied: list, info: FieldInfo) -> list:
    keys = info.associative_keys
    element = schema.item(info)
    out = list(live)
    for entry in applied:
        wanted = {k: entry.get(k) for k in keys if isinstance(entry, dict) and k in entry}
        index = next(
            (
                i
                for i, o in enumerate(out)
                if isinstance(o, dict) and all(o.get(k) == v for k, v in wanted.items())
            ),
            None,
        )
        if index is None:
            out.append(copy.deepcopy(entry))
        else:
            out[index] = _overlay(out[index], entry, element)
    return out
