"""Manifest field paths: diffs, lookups and the server-owned fields to strip.

A change is named by a path like `spec.template.spec.containers[0].resources.limits.memory`,
the same way in guardrails, playbooks, pull-request bodies and scenario expectations.
Lists are compared the way a reviewer reads them: lists of named items (containers, env,
ports, volumes) are compared item by item while the names line up, and as a whole once
items are added, removed or reordered; lists of scalars (command, args) as a whole.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .models import FieldChange, Manifest

# Metadata the API server owns; a manifest to apply or to compare carries none of it.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
SERVER_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
)

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def clean(manifest: Manifest) -> Manifest:
    """A copy without status and server-owned metadata."""
    out = copy.deepcopy(manifest)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in SERVER_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations")
    if annotations:
        for key in SERVER_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            meta.pop("annotations")
    return out


def split_path(path: str) -> list[str | int]:
    """`a.b[0].c` -> ["a", "b", 0, "c"]."""
    parts: list[str | int] = []
    for name, index in _SEGMENT.findall(path):
        parts.append(int(index) if index else name)
    return parts


def join_path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


_MISSING = object()


def get_path(obj: Any, path: str, default: Any = None) -> Any:
    cur = obj
    for part in split_path(path):
        if isinstance(part, int):
            if not isinstance(cur, list) or part >= len(cur):
                return default
            cur = cur[part]
        else:
            if not isinstance(cur, dict) or part not in cur:
                return default
            cur = cur[part]
    return cur


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set (or, with value None, delete) the field at `path`, creating maps on the way."""
    parts = split_path(path)
    cur = obj
    for part, nxt in zip(parts, parts[1:], strict=False):
        if isinstance(part, int):
            cur = cur[part]
        else:
            if cur.get(part) is None:
                cur[part] = [] if isinstance(nxt, int) else {}
            cur = cur[part]
    last = parts[-1]
    if value is None:
        if isinstance(last, int):
            del cur[last]
        else:
            cur.pop(last, None)
    else:
        cur[last] = value


def _named(items: list[Any]) -> list[str] | None:
    """The names of a list of named maps, or None if it is not one."""
    if items and all(isinstance(i, dict) and "name" in i for i in items):
        return [i["name"] for i in items]
    return None


def diff(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Every field that differs between two manifests (or sub-trees), as leaf-most paths."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[FieldChange] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out.extend(diff(before.get(key), after.get(key), sub))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        names_b, names_a = _named(before), _named(after)
        if names_b == names_a and (
            names_b is not None or all(isinstance(x, dict) for x in before + after)
        ):
            out = []
            for i, (b, a) in enumerate(zip(before, after, strict=True)):
                out.extend(diff(b, a, f"{path}[{i}]"))
            return out
    return [FieldChange(path=path, before=before, after=after)]


def changed_paths(before: Manifest, after: Manifest) -> list[str]:
    return [c.path for c in diff(before, after)]


def apply_changes(manifest: Manifest, changes: list[FieldChange]) -> Manifest:
    """A copy of `manifest` with each change's `after` value set at its path."""
    out = copy.deepcopy(manifest)
    for change in changes:
        set_path(out, change.path, copy.deepcopy(change.after))
    return out
