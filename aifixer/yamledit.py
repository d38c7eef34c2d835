"""Edit one object in a GitOps manifest file the way a careful person would by hand.

A pull request is reviewed line by line, so the fix must touch only the lines that carry
the changed fields: every comment, the key order, flow or block style, quoting and
indentation of everything else stay as the team wrote them, and the other documents of
a multi-document file stay byte for byte identical.

ruamel.yaml's round-trip mode keeps most of that, but not all: re-emitting a document
normalises a few constructs (`["sh", "-c"]` loses its quotes unless asked, a flow list of
one-pair maps is written `[a: 1]`). So the document is emitted twice, before and after
the edit, and only the lines that differ between those two emissions are carried into
the original text; every other line is the original's own. The result is checked by
parsing it again: it must hold exactly the edited content.
"""

from __future__ import annotations

import copy
import difflib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from .manifests import split_path
from .models import FieldChange

# A line starting a new document. YAML forbids `---` at column 0 inside content, so a
# line-based split is exact.
_DOC_START = re.compile(r"^---(?:[ \t]|$)")
_COMMENT_LINE = re.compile(r"^\s*#")
_KEY_ONLY = re.compile(r"^(\s*)(?:- +)?[^\s#][^#]*:\s*(?:#.*)?$")
# Wide enough that the emitter never folds a long line the author wrote on one line.
_NO_WRAP = 1 << 16


class EditError(ValueError):
    """The file cannot be edited as asked (not YAML, a path through a scalar...)."""


class DocumentNotFound(EditError):
    """No document in the file defines the object."""


def edit_manifest_file(
    text: str, kind: str, namespace: str, name: str, changes: list[FieldChange]
) -> str:
    """Return `text` with `changes` made to the document defining `kind` `namespace/name`.

    Args:
        text: one or more YAML documents.
        kind, namespace, name: the object; a document without a namespace is in "default".
        changes: fields to set to `after`, or to delete when `after` is None.

    Returns:
        The new file text; equal to `text` when the file already holds every change.

    Raises:
        DocumentNotFound: no document defines the object.
        EditError: the file is not YAML, or a change's path cannot be followed.
    """
    docs = _split_documents(text)
    for i, doc in enumerate(docs):
        if _defines(doc, kind, namespace, name):
            docs[i] = _edit_document(doc, changes)
            return "".join(docs)
    raise DocumentNotFound(f"no document defines {kind} {namespace}/{name}")


def edit_document(text: str, changes: list[FieldChange], index: int = 0) -> str:
    """Return `text` with `changes` made to its `index`-th document, whatever it holds.

    For files that are not Kubernetes objects: a kustomization, a patch (a strategic
    merge document or a JSON6902 list of operations), a Helm chart's values. The other
    documents stay byte for byte identical.

    Raises:
        DocumentNotFound: the file has fewer documents.
        EditError: the file is not YAML, or a change's path cannot be followed.
    """
    docs = _split_documents(text)
    real = [i for i, d in enumerate(docs) if _safe_load(d) is not None] or [0]
    if index >= len(real):
        raise DocumentNotFound(f"the file has no document {index}")
    docs[real[index]] = _edit_document(docs[real[index]], changes)
    return "".join(docs)


def defines(text: str, kind: str, namespace: str, name: str) -> bool:
    """Whether a document in `text` defines `kind` `namespace/name`.

    Raises:
        EditError: the file is not YAML.
    """
    return any(_defines(doc, kind, namespace, name) for doc in _split_documents(text))


def _split_documents(text: str) -> list[str]:
    """The file cut before every `---` line; joining the parts gives back `text` exactly."""
    docs: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if _DOC_START.match(line) and current:
            docs.append("".join(current))
            current = []
        current.append(line)
    docs.append("".join(current))
    return docs


def _safe_load(text: str) -> Any:
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise EditError(f"not valid YAML: {exc}") from exc


def _defines(doc: str, kind: str, namespace: str, name: str) -> bool:
    data = _safe_load(doc)
    if not isinstance(data, dict):
        return False
    meta = data.get("metadata") or {}
    return (
        data.get("kind") == kind
        and meta.get("name") == name
        and (meta.get("namespace") or "default") == namespace
    )


# -- one document ------------------------------------------------------------------


@dataclass(frozen=True)
class _Indent:
    mapping: int = 2
    sequence: int = 2
    offset: int = 0


def _guess_indent(text: str) -> _Indent:
    """The author's indentation, read off the first nested mapping and block sequence."""
    mapping = sequence = offset = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for parent, child in zip(lines, lines[1:], strict=False):
        m = _KEY_ONLY.match(parent)
        if not m:
            continue
        # The parent key's column: after any "- " that opens it.
        key_col = len(parent) - len(parent.lstrip(" -"))
        child_col = len(child) - len(child.lstrip(" "))
        if child_col <= key_col and not (child_col == key_col and child.lstrip().startswith("- ")):
            continue
        body = child.lstrip(" ")
        if body.startswith("- "):
            if sequence is None:
                offset = child_col - key_col
                sequence = offset + len(body) - len(body[1:].lstrip(" "))
        elif mapping is None:
            mapping = child_col - key_col
        if mapping is not None and sequence is not None:
            break
    default = _Indent()
    return _Indent(
        mapping or default.mapping,
        sequence or default.sequence,
        offset if offset is not None else default.offset,
    )


def _round_trip(indent: _Indent, explicit_start: bool) -> YAML:
    y = YAML(typ="rt", pure=True)
    y.preserve_quotes = True
    y.width = _NO_WRAP
    y.indent(mapping=indent.mapping, sequence=indent.sequence, offset=indent.offset)
    y.explicit_start = explicit_start
    return y


def _dump(y: YAML, data: Any) -> str:
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue()


def _edit_document(doc: str, changes: list[FieldChange]) -> str:
    y = _round_trip(_guess_indent(doc), explicit_start=bool(_DOC_START.match(doc)))
    try:
        data = y.load(doc)
    except YAMLError as exc:
        raise EditError(f"not valid YAML: {exc}") from exc
    before = _dump(y, data)
    for change in changes:
        _apply(data, change)
    after = _dump(y, data)
    if before == after:
        return doc
    edited = _carry_over(doc, before, after)
    expected = _safe_load(after)
    if _safe_load(edited) != expected:
        # The splice met a construct it cannot align; the emitter's whole document is
        # still exactly the edited content, only less like the original in style.
        return after
    return edited


def _carry_over(original: str, before: str, after: str) -> str:
    """`original` with the lines that differ between `before` and `after` replaced.

    `before` is the emitter's rendering of `original`; where the two differ (the
    emitter normalised something), a change is widened to the nearest lines on which
    they agree, so it is spliced at a place both agree on.
    """
    orig, base, new = (s.splitlines(keepends=True) for s in (original, before, after))
    anchors = _anchors(orig, base)
    out: list[str] = []
    o_pos = 0
    for b1, b2, n1, n2 in _widened_hunks(base, new, anchors):
        o1, o2 = anchors[b1], anchors[b2]
        out += orig[o_pos:o1] + _keep_comments(orig[o1:o2], new[n1:n2])
        o_pos = o2
    out += orig[o_pos:]
    return "".join(out)


def _keep_comments(old: list[str], new: list[str]) -> list[str]:
    """`new`, with the whole-line comments of `old` it lost put back where they stood.

    ruamel attaches a comment line to the node before it, so deleting a key or a list
    item would also drop the comment written above the next one.
    """
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, o1, o2, n1, n2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            out += [ln for ln in old[o1:o2] if _COMMENT_LINE.match(ln) and ln not in new]
        out += new[n1:n2]
    return out


def _anchors(orig: list[str], base: list[str]) -> dict[int, int]:
    """Line boundaries of `base` whose position in `orig` is certain: base index -> orig index."""
    anchors = {0: 0, len(base): len(orig)}
    matcher = difflib.SequenceMatcher(None, orig, base, autojunk=False)
    for tag, o1, _o2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(b2 - b1 + 1):
                anchors[b1 + k] = o1 + k
    return anchors


def _widened_hunks(
    base: list[str], new: list[str], anchors: dict[int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """The (base1, base2, new1, new2) ranges that differ, grown to anchored boundaries.

    Outside the differing ranges `base` and `new` are the same lines, so growing a range
    by k lines on one side grows it by k lines on the other; ranges that meet merge.
    """
    merged: list[list[int]] = []
    matcher = difflib.SequenceMatcher(None, base, new, autojunk=False)
    for tag, b1, b2, n1, n2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        while b1 not in anchors:
            b1, n1 = b1 - 1, n1 - 1
        while b2 not in anchors:
            b2, n2 = b2 + 1, n2 + 1
        if merged and b1 <= merged[-1][1]:
            merged[-1][1], merged[-1][3] = max(b2, merged[-1][1]), max(n2, merged[-1][3])
        else:
            merged.append([b1, b2, n1, n2])
    for hunk in merged:
        yield tuple(hunk)  # type: ignore[misc]


# -- changing the tree -------------------------------------------------------------


def _apply(data: Any, change: FieldChange) -> None:
    parts = split_path(change.path)
    if not parts:
        raise EditError("a change needs a field path")
    parent = data
    for part, nxt in zip(parts, parts[1:], strict=False):
        parent = _child(parent, part, nxt, change.path)
    last = parts[-1]
    _check_container(parent, last, change.path)
    if change.after is None:
        _delete(parent, last, change.path)
    elif isinstance(last, int) and last == len(parent):
        parent.append(_styled(change.after, None))
    elif isinstance(last, int) and last > len(parent):
        raise EditError(f"{change.path}: index {last} is past the end of the list")
    else:
        old = parent[last] if isinstance(last, int) or last in parent else None
        parent[last] = _styled(change.after, old)


def _check_container(node: Any, part: str | int, path: str) -> None:
    if isinstance(part, int) and not isinstance(node, list):
        raise EditError(f"{path}: [{part}] indexes something that is not a list")
    if isinstance(part, str) and not isinstance(node, dict):
        raise EditError(f"{path}: .{part} names a field of something that is not a map")


def _child(node: Any, part: str | int, nxt: str | int, path: str) -> Any:
    """The node at `part`, created (as the kind `nxt` needs) when a map lacks it."""
    _check_container(node, part, path)
    if isinstance(part, int):
        if part >= len(node):
            raise EditError(f"{path}: index {part} is past the end of the list")
        return node[part]
    if node.get(part) is None:
        node[part] = CommentedSeq() if isinstance(nxt, int) else CommentedMap()
    return node[part]


def _delete(node: Any, part: str | int, path: str) -> None:
    if isinstance(part, int):
        if part >= len(node):
            raise EditError(f"{path}: index {part} is past the end of the list")
        del node[part]
    else:
        node.pop(part, None)


def _styled(value: Any, old: Any) -> Any:
    """`value` made to look like the `old` node it replaces: same quotes, same flow style.

    A map or a list is updated in place, so what did not change keeps its node, and with
    it its comments and style.
    """
    if isinstance(value, dict):
        if isinstance(old, CommentedMap):
            for key in [k for k in old if k not in value]:
                del old[key]
            for key, item in value.items():
                if key not in old or old[key] != item:
                    old[key] = _styled(item, old.get(key))
            return old
        out = CommentedMap((k, _styled(v, None)) for k, v in value.items())
        _copy_flow_style(out, old)
        return out
    if isinstance(value, list):
        if isinstance(old, CommentedSeq):
            _update_seq(old, value)
            return old
        out_seq = CommentedSeq(_styled(item, None) for item in value)
        _copy_flow_style(out_seq, old)
        return out_seq
    if isinstance(value, str):
        if isinstance(old, LiteralScalarString):
            return LiteralScalarString(value)  # a `|` block (an inline patch) stays one
        if isinstance(old, FoldedScalarString):
            return FoldedScalarString(value)
        if isinstance(old, DoubleQuotedScalarString):
            return DoubleQuotedScalarString(value)
        if isinstance(old, SingleQuotedScalarString):
            return SingleQuotedScalarString(value)
    return copy.deepcopy(value)


def _update_seq(old: CommentedSeq, new: list[Any]) -> None:
    """Turn `old` into `new` by inserting, deleting and updating items, never rewriting all.

    ruamel keeps a list item's comments by index and shifts them on insert and delete,
    so items that stay keep their comments even when others come and go around them.
    """
    matcher = difflib.SequenceMatcher(
        None, [_key(i) for i in old], [_key(i) for i in new], autojunk=False
    )
    # Back to front, so the indexes of the steps still to do stay valid.
    for tag, o1, o2, n1, n2 in reversed(matcher.get_opcodes()):
        if tag == "equal":
            for k in range(o2 - o1):
                if old[o1 + k] != new[n1 + k]:
                    old[o1 + k] = _styled(new[n1 + k], old[o1 + k])
            continue
        if tag == "replace" and not any(map(_is_named, [*old[o1:o2], *new[n1:n2]])):
            # Unnamed items (command words, ports) replaced one for one keep their quotes.
            pairs = min(o2 - o1, n2 - n1)
            for k in range(pairs):
                old[o1 + k] = _styled(new[n1 + k], old[o1 + k])
            o1, n1 = o1 + pairs, n1 + pairs
        for k in reversed(range(o1, o2)):
            del old[k]
        for k in reversed(range(n1, n2)):
            old.insert(o1, _styled(new[k], None))


def _is_named(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str)


def _key(item: Any) -> str:
    """A list item's identity: the name of a named map (containers, env), else its content."""
    if _is_named(item):
        return "name:" + item["name"]
    return json.dumps(item, sort_keys=True, default=str)


def _copy_flow_style(new: CommentedMap | CommentedSeq, old: Any) -> None:
    if isinstance(old, (CommentedMap, CommentedSeq)) and old.fa.flow_style():
        new.fa.set_flow_style()
