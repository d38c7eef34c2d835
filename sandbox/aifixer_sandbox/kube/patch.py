"""The three PATCH flavours of the Kubernetes API: JSON patch, merge patch, strategic merge patch.

kubectl sends strategic merge patches for `apply` and `edit`, JSON patches for
`rollout undo`, merge patches for custom resources; controllers and the product use all of
them. Strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch` as the API
server runs it (parallel deletion lists merged, unmatched nulls ignored), including its list
ordering rules, with merge keys and strategies read from the v1.32 schemas.

All functions are pure: inputs are never mutated, a new document is returned.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aifixer_sandbox.kube import schema
from aifixer_sandbox.kube.schema import FieldInfo

REJECTED = "the server rejected our request due to an error in our request"


class PatchError(Exception):
    """A patch that cannot be applied.

    `code` is the HTTP status the API server answers with: 400 for a malformed patch
    document, 422 when a well-formed patch does not apply (its message is then the server's
    generic `REJECTED` text and `message` becomes the status cause).
    """

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def status(self) -> dict:
        """The `Status` body the API server sends for this error."""
        if self.code == 400:
            return _status(400, "BadRequest", self.message)
        details = {"causes": [{"reason": "UnexpectedServerResponse", "message": self.message}]}
        return _status(422, "Invalid", REJECTED, details)


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    status.update(status="Failure", message=message, reason=reason)
    if details:
        status["details"] = details
    status["code"] = code
    return status


# ---------------------------------------------------------------------------------------------
# RFC 6902 JSON patch


def json_patch(obj: Any, ops: Any) -> Any:
    """Apply an RFC 6902 patch (`[{"op": "replace", "path": "/spec/replicas", "value": 2}]`)."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch", 400)
    doc = copy.deepcopy(obj)
    for op in ops:
        doc = _apply_op(doc, op)
    return doc


def _apply_op(doc: Any, op: dict) -> Any:
    name = op.get("op")
    handlers = {"add": _op_add, "remove": _op_remove, "replace": _op_replace,
                "move": _op_move, "copy": _op_copy, "test": _op_test}  # fmt: skip
    if name not in handlers:
        raise PatchError(f"Unexpected kind: {name}")
    if "path" not in op:
        raise PatchError(f"{name} operation missing path")
    return handlers[name](doc, op)


def parse_pointer(pointer: str) -> list[str]:
    """`/metadata/annotations/a~1b` -> ["metadata", "annotations", "a/b"] (RFC 6901)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f'invalid JSON pointer "{pointer}"')
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _container(doc: Any, parts: list[str], op: str, pointer: str) -> Any:
    """The value holding the last element of `parts`."""
    node = doc
    for part in parts[:-1]:
        try:
            node = (
                node[_index(node, part, allow_end=False)] if isinstance(node, list) else node[part]
            )
        except (KeyError, TypeError, IndexError, PatchError):
            raise PatchError(
                f'{op} operation does not apply: doc is missing path: "{pointer}": missing value'
            ) from None
    return node


def _index(node: list, part: str, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(node)
    if not part.isdigit() or (len(part) > 1 and part.startswith("0")):
        raise PatchError(f"invalid array index: {part}")
    index = int(part)
    if index > len(node) or (index == len(node) and not allow_end):
        raise PatchError(f"Unable to access invalid index: {index}: invalid index referenced")
    return index


def _get(doc: Any, pointer: str, op: str) -> Any:
    parts = parse_pointer(pointer)
    if not parts:
        return doc
    node = _container(doc, parts, op, pointer)
    last = parts[-1]
    try:
        return node[_index(node, last, allow_end=False)] if isinstance(node, list) else node[last]
    except (KeyError, TypeError, PatchError):
        raise PatchError(
            f'{op} operation does not apply: doc is missing path: "{pointer}": missing value'
        ) from None


def _add(doc: Any, pointer: str, value: Any, op: str = "add") -> Any:
    parts = parse_pointer(pointer)
    if not parts:
        return value
    node = _container(doc, parts, op, pointer)
    last = parts[-1]
    if isinstance(node, list):
        node.insert(_index(node, last, allow_end=True), value)
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise PatchError(
            f'{op} operation does not apply: doc is missing path: "{pointer}": missing value'
        )
    return doc


def _remove(doc: Any, pointer: str, op: str = "remove") -> tuple[Any, Any]:
    parts = parse_pointer(pointer)
    if not parts:
        raise PatchError(f"{op} operation does not apply: cannot remove the document root")
    _get(doc, pointer, op)
    node = _container(doc, parts, op, pointer)
    last = parts[-1]
    removed = (
        node.pop(_index(node, last, allow_end=False)) if isinstance(node, list) else node.pop(last)
    )
    return doc, removed


def _value(op: dict) -> Any:
    if "value" not in op:
        raise PatchError(f"{op['op']} operation missing value")
    return copy.deepcopy(op["value"])


def _op_add(doc: Any, op: dict) -> Any:
    return _add(doc, op["path"], _value(op))


def _op_remove(doc: Any, op: dict) -> Any:
    return _remove(doc, op["path"])[0]


def _op_replace(doc: Any, op: dict) -> Any:
    value = _value(op)
    parts = parse_pointer(op["path"])
    if not parts:
        return value
    _get(doc, op["path"], "replace")
    node = _container(doc, parts, "replace", op["path"])
    key = _index(node, parts[-1], allow_end=False) if isinstance(node, list) else parts[-1]
    node[key] = value
    return doc


def _op_move(doc: Any, op: dict) -> Any:
    source = op.get("from")
    if source is None:
        raise PatchError("move operation missing from")
    if op["path"].startswith(source + "/"):
        raise PatchError("move operation does not apply: cannot move a value into itself")
    doc, value = _remove(doc, source, "move")
    return _add(doc, op["path"], value, "move")


def _op_copy(doc: Any, op: dict) -> Any:
    source = op.get("from")
    if source is None:
        raise PatchError("copy operation missing from")
    return _add(doc, op["path"], copy.deepcopy(_get(doc, source, "copy")), "copy")


def _op_test(doc: Any, op: dict) -> Any:
    expected = op.get("value")
    try:
        actual = _get(doc, op["path"], "test")
    except PatchError:
        actual = None
        found = False
    else:
        found = True
    if not (found or expected is None) or not _json_equal(actual, expected):
        raise PatchError(f"testing value {op['path']} failed: test failed")
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ---------------------------------------------------------------------------------------------
# RFC 7386 merge patch


def merge_patch(obj: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: objects merge, `null` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(obj) if isinstance(obj, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------------------
# Strategic merge patch

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ELEMENT_ORDER = "$setElementOrder"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList"
ERR_RETAIN_KEYS = "invalid patch format of retainKeys"
ERR_SET_ELEMENT_ORDER = "invalid patch format of setElementOrder list"
ERR_PRIMITIVE_LIST = "invalid patch format of primitive list"


def strategic_merge_patch(obj: dict, patch: Any, api_version: str, kind: str) -> dict:
    """Apply a strategic merge patch to an object of a built-in kind.

    Raises PatchError for kinds without a schema (the server answers 415 for those; clients
    use merge patch instead) and for malformed patches.
    """
    root = schema.root_info(api_version, kind)
    if root is None:
        raise PatchError(
            f"strategic merge patch is not supported for {api_version}, Kind={kind}", 415
        )
    if not isinstance(patch, dict):
        raise PatchError("invalid JSON document", 400)
    return _merge_map(copy.deepcopy(obj), copy.deepcopy(patch), root)


def _field(info: FieldInfo, key: str) -> FieldInfo:
    # Unknown fields still merge (as maps/replaced lists); decoding decides about them later.
    return schema.child(info, key) or FieldInfo(schema={})


def _merge_map(original: dict | None, patch: dict, info: FieldInfo) -> dict:
    """mergeMap: both arguments are owned (already copied) and may be modified."""
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return _strip(patch, info)
        if directive == "delete":
            return {}
        if directive != "merge":
            raise PatchError(f"unknown patch type: {directive} in map: {_go_map(patch)}", 400)
    original = {} if original is None else original
    _apply_retain_keys(original, patch)
    _merge_ordered_lists(original, patch, info)
    for key, patch_value in patch.items():
        is_delete_list = key.startswith(DELETE_FROM_PRIMITIVE_LIST + "/")
        if is_delete_list:
            key = _strip_prefix(key, DELETE_FROM_PRIMITIVE_LIST, ERR_PRIMITIVE_LIST)
        if patch_value is None:
            original.pop(key, None)
            continue
        field = _field(info, key)
        if key not in original:
            if not is_delete_list:
                original[key] = _strip(patch_value, field)
            continue
        current = original[key]
        if isinstance(current, dict) and isinstance(patch_value, dict):
            if "replace" in field.patch_strategies:
                original[key] = _strip(patch_value, field)
            else:
                original[key] = _merge_map(current, patch_value, field)
        elif isinstance(current, list) and isinstance(patch_value, list):
            if field.merges_list:
                original[key] = _merge_list(current, patch_value, field, is_delete_list)
            else:
                original[key] = _strip(patch_value, field)
        else:
            original[key] = _strip(patch_value, field)
    return original


def _strip(value: Any, info: FieldInfo) -> Any:
    """A patch value as plain data: directives applied against nothing, nulls dropped."""
    if isinstance(value, dict):
        return _merge_map({}, value, info)
    if isinstance(value, list):
        return _merge_list([], value, info, False) if info.merges_list else value
    return value


def _strip_prefix(key: str, prefix: str, error: str) -> str:
    head, sep, rest = key.partition("/")
    if head != prefix or not sep:
        raise PatchError(error, 400)
    return rest


def _apply_retain_keys(original: dict, patch: dict) -> None:
    if RETAIN_KEYS not in patch:
        return
    retain = patch.pop(RETAIN_KEYS)
    if not isinstance(retain, list):
        raise PatchError(ERR_RETAIN_KEYS, 400)
    for key, value in patch.items():
        directive = key.startswith((DELETE_FROM_PRIMITIVE_LIST + "/", SET_ELEMENT_ORDER + "/"))
        if value is not None and not directive and key not in retain:
            raise PatchError(ERR_RETAIN_KEYS, 400)
    for key in [k for k in original if k not in retain]:
        del original[key]


def _merge_ordered_lists(original: dict, patch: dict, info: FieldInfo) -> None:
    """mergePatchIntoOriginal: lists with a `$setElementOrder/<list>` directive."""
    for key in [k for k in patch if k.startswith(SET_ELEMENT_ORDER + "/")]:
        order = patch.pop(key)
        list_key = _strip_prefix(key, SET_ELEMENT_ORDER, ERR_SET_ELEMENT_ORDER)
        if not isinstance(order, list):
            raise PatchError(ERR_SET_ELEMENT_ORDER, 400)
        field = _field(info, list_key)
        merge_key = field.merge_key
        in_original, in_patch = list_key in original, list_key in patch
        original_list = original.get(list_key) or []
        patch_list = patch.get(list_key) or []
        if not isinstance(original_list, list) or not isinstance(patch_list, list):
            raise PatchError(ERR_SET_ELEMENT_ORDER, 400)
        _check_set_order(patch_list, order, merge_key)
        if in_original and in_patch:
            merged = (
                _merge_list(original_list, patch_list, field, False)
                if field.merges_list
                else _strip(patch_list, field)
            )
        elif in_patch:
            merged = _strip(patch_list, field)
        elif in_original:
            merged = original_list
        else:
            continue
        in_order, server_only = _partition(merged, order, merge_key)
        original[list_key] = _normalize_order(
            in_order, server_only, order, original_list, merge_key
        )
        patch.pop(list_key, None)


def _check_set_order(patch_list: list, order: list, merge_key: str | None) -> None:
    """Items of the patch list must appear in the `$setElementOrder` list, in the same order."""
    if not order or not patch_list:
        return
    kept = [p for p in patch_list if not _is_delete(p)] if merge_key else patch_list
    p = s = 0
    while p < len(kept) and s < len(order):
        if isinstance(kept[p], dict) and DIRECTIVE in kept[p]:
            p += 1
            continue
        if _key_of(kept[p], merge_key) == _key_of(order[s], merge_key):
            p += 1
        s += 1
    if p < len(kept):
        raise PatchError(
            f"The order in patch list:\n{patch_list}\n doesn't match "
            f"{SET_ELEMENT_ORDER} list:\n{order}\n",
            400,
        )


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get(DIRECTIVE) == "delete"


def _key_of(item: Any, merge_key: str | None) -> Any:
    if not merge_key:
        return item
    if not isinstance(item, dict) or merge_key not in item:
        raise PatchError(
            f"map: {_go_map(item)} does not contain declared merge key: {merge_key}", 400
        )
    return item[merge_key]


def _merge_list(original: list, patch: list, info: FieldInfo, is_delete_list: bool) -> list:
    """mergeSlice: merge by merge key (maps) or as a set (primitives), then restore order."""
    if not original and not patch:
        return original
    merge_key = info.merge_key
    element = schema.item(info)
    maps = any(isinstance(v, dict) for v in original + patch)
    if any(isinstance(v, list) for v in original + patch):
        raise PatchError("lists of lists are not supported")
    if not maps:
        if is_delete_list:
            return [v for v in original if not any(_json_equal(v, d) for d in patch)]
        merged = _dedupe(original + patch)
        merge_key = None
    else:
        if not merge_key:
            raise PatchError(
                f"cannot merge lists without merge key for {info.definition or 'list'}"
            )
        original, patch = _special_elements(original, patch, merge_key)
        merged = _merge_by_key(original, patch, merge_key, element)
    in_patch, server_only = _partition(merged, patch, merge_key)
    return _normalize_order(in_patch, server_only, patch, original, merge_key)


def _dedupe(values: list) -> list:
    out: list = []
    for value in values:
        if not any(_json_equal(value, seen) for seen in out):
            out.append(value)
    return out


def _special_elements(original: list, patch: list, merge_key: str) -> tuple[list, list]:
    """Handle `{"$patch": "delete"|"replace"}` items; return (original, remaining patch)."""
    remaining, replace = [], False
    for entry in patch:
        directive = entry.get(DIRECTIVE) if isinstance(entry, dict) else None
        if directive is None:
            remaining.append(entry)
        elif directive == "delete":
            if merge_key not in entry:
                raise PatchError(
                    f"map: {_go_map(entry)} does not contain declared merge key: {merge_key}", 400
                )
            original = [
                o for o in original if not (isinstance(o, dict) and _same_key(o, entry, merge_key))
            ]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch")
        else:
            raise PatchError(f"unknown patch type: {directive} in map: {_go_map(entry)}", 400)
    if replace:
        return remaining, []
    return original, remaining


def _same_key(a: dict, b: dict, merge_key: str) -> bool:
    return merge_key in a and _json_equal(a[merge_key], b.get(merge_key))


def _merge_by_key(original: list, patch: list, merge_key: str, element: FieldInfo) -> list:
    merged = list(original)
    for entry in patch:
        if not isinstance(entry, dict) or merge_key not in entry:
            raise PatchError(
                f"map: {_go_map(entry)} does not contain declared merge key: {merge_key}", 400
            )
        index = next((i for i, o in enumerate(merged) if _same_key(o, entry, merge_key)), None)
        if index is None:
            merged.append(_strip(entry, element))
        else:
            merged[index] = _merge_map(merged[index], entry, element)
    return merged


def _partition(items: list, by: list, merge_key: str | None) -> tuple[list, list]:
    """Split `items` into those present in `by` (compared by merge key) and the others."""
    present, others = [], []
    for entry in items:
        (present if _position(by, entry, merge_key) >= 0 else others).append(entry)
    return present, others


def _position(order: list, entry: Any, merge_key: str | None) -> int:
    """Index of `entry` in `order` by merge key (or value); -1 if absent."""
    key = _key_of(entry, merge_key)
    for index, candidate in enumerate(order):
        if merge_key and not (isinstance(candidate, dict) and merge_key in candidate):
            continue  # e.g. a bare {"$patch": "replace"} marker
        if _json_equal(candidate[merge_key] if merge_key else candidate, key):
            return index
    return -1


def _normalize_order(patch_items: list, server_only: list, patch_order: list, server_order: list,
                     merge_key: str | None) -> list:  # fmt: skip
    """normalizeElementOrder: sort each part by its order, then interleave by server order.

    As in the real implementation, an item whose relative position cannot be decided from
    the live list goes after the patch item being compared, so new items lead.
    """
    patch_items = _sort_by(patch_items, patch_order, merge_key)
    server_only = _sort_by(server_only, server_order, merge_key)
    result, i, j = [], 0, 0
    while i < len(server_only) or j < len(patch_items):
        if j >= len(patch_items):
            result.append(server_only[i])
            i += 1
        elif i >= len(server_only):
            result.append(patch_items[j])
            j += 1
        else:
            left = _position(server_order, server_only[i], merge_key)
            right = _position(server_order, patch_items[j], merge_key)
            if left >= 0 and right >= 0 and left < right:
                result.append(server_only[i])
                i += 1
            else:
                result.append(patch_items[j])
                j += 1
    return result


def _sort_by(items: list, order: list, merge_key: str | None) -> list:
    def rank(entry: Any) -> int:
        position = _position(order, entry, merge_key)
        return position if position >= 0 else len(order)

    return sorted(items, key=rank)


def _go_map(value: Any) -> str:
    """Approximate Go's `%v` of a decoded JSON map, for error messages."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_map(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_map(v) for v in value) + "]"
    return json.dumps(value) if not isinstance(value, str) else value
