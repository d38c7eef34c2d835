"""Image references and tags: parsed strictly, and the closest existing tag chosen by rule.

An image reference comes from a workload (anyone who can apply a Deployment wrote it)
and a tag list from a registry (whoever pushes to it wrote it): both are validated
here, with the grammar of the distribution specification, before anything is built
from them.

`closest_tag` is the repair a person makes when a Deployment names a tag that was
never published: pick the tag of the same repository that exists. It guesses only
when one tag is clearly meant:

- a version tag (`v1.4.7`, `2.4.3-alpine`) whose patch release is missing: the
  newest existing patch of the same major.minor (and the same `v` and suffix) below
  the wanted one; a newer patch, another minor or major is never chosen;
- any other tag (a typo, `3.1.O` for `3.1.0`): the one tag at the smallest edit
  distance (1 for a short tag, at most 2 for a longer one); a tie is no guess;
- a moving tag (`latest`, `stable`, `main`...) is never wanted nor offered: which
  release it should point at is a person's decision, not a spelling mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
# The path component and tag grammars of the distribution specification.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST = re.compile(rf"^{_DOMAIN}$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
MAX_NAME = 255  # characters of host/path, as the specification bounds a name

# Tags that name a moving target rather than a release.
MOVING_TAGS = frozenset(
    {"latest", "stable", "edge", "main", "master", "nightly", "dev", "develop", "head", "current"}
)
_VERSION = re.compile(
    r"^(v?)(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-+][A-Za-z0-9_.-]+)?$"
)


class ImageRefError(ValueError):
    """Not an image reference."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: `host/path[:tag][@digest]`, Docker Hub's defaults applied."""

    host: str  # registry host as the workload names it, lower-cased; docker.io for Docker Hub
    path: str  # repository path inside the registry: library/nginx, web/storefront
    tag: str | None
    digest: str | None
    named: str = ""  # the repository as written in the reference (host omitted if it was)

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}"

    def with_tag(self, tag: str) -> str:
        """The reference to `tag` of the same repository, written as the workload wrote
        its host (`web/storefront:3.1.0` stays without `docker.io/`)."""
        return f"{self.named}:{tag}"


def parse(ref: object) -> ImageRef:
    """Parse an image reference strictly.

    Raises:
        ImageRefError: not a string, too long, or not of the reference grammar.
    """
    if not isinstance(ref, str) or not ref or len(ref) > MAX_NAME + 200:
        raise ImageRefError("not an image reference")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _ANY_DIGEST.fullmatch(digest):
            raise ImageRefError(f"bad digest in {ref[:300]!r}")
    name, tag = rest, None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not TAG.fullmatch(tag):
            raise ImageRefError(f"bad tag in {ref[:300]!r}")
    if len(name) > MAX_NAME:
        raise ImageRefError("name too long")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host, path = first.lower(), remainder
        if not _HOST.fullmatch(first):
            raise ImageRefError(f"bad registry host in {ref[:300]!r}")
    else:
        host, path = DOCKER_HUB, name
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.fullmatch(path):
        raise ImageRefError(f"bad repository path in {ref[:300]!r}")
    return ImageRef(host=host, path=path, tag=tag, digest=digest, named=name)


def valid_tags(tags: Iterable[object]) -> list[str]:
    """The tags of a registry's answer that are tags; anything else dropped."""
    return [t for t in tags if isinstance(t, str) and TAG.fullmatch(t)]


@dataclass(frozen=True)
class TagChoice:
    tag: str
    rule: str  # "missing-patch" or "typo"
    why: str  # one sentence for the record


def edit_distance(a: str, b: str, bound: int = 3) -> int:
    """Optimal string alignment distance (a swap of neighbours counts one), capped at
    `bound` + 1 so a long unrelated tag costs little."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > bound:
            return bound + 1
        prev2, prev = prev, cur
    return min(prev[len(b)], bound + 1)


def is_moving(tag: str) -> bool:
    return tag.lower() in MOVING_TAGS


def closest_tag(wanted: str | None, existing: Iterable[str]) -> TagChoice | None:
    """The existing tag that `wanted` (which does not exist) was clearly meant to be, or
    None when no tag is, or several are equally (see the module's rules)."""
    tags = sorted(set(valid_tags(existing)))
    if wanted is None or not TAG.fullmatch(wanted) or wanted in tags or is_moving(wanted):
        return None
    tags = [t for t in tags if not is_moving(t)]
    version = _VERSION.fullmatch(wanted)
    if version is not None:
        return _missing_patch(wanted, version, tags)
    limit = 1 if len(wanted) <= 4 else 2
    scored = sorted((edit_distance(wanted, t, limit), t) for t in tags)
    near = [t for d, t in scored if d <= limit and d == scored[0][0]]
    if len(near) != 1:
        return None
    return TagChoice(
        near[0],
        "typo",
        f"{near[0]} is the only existing tag within {scored[0][0]} edit(s) of {wanted}",
    )


def _missing_patch(wanted: str, version: re.Match[str], tags: list[str]) -> TagChoice | None:
    prefix, major, minor, patch, suffix = version.groups()
    below = []
    for t in tags:
        m = _VERSION.fullmatch(t)
        if m is None:
            continue
        p, ma, mi, pa, su = m.groups()
        if (p, ma, mi, su) == (prefix, major, minor, suffix) and int(pa) < int(patch):
            below.append((int(pa), t))
    if not below:
        return None
    best = max(below)[1]
    return TagChoice(
        best,
        "missing-patch",
        f"{wanted} was never published; {best} is the newest existing patch release of "
        f"{prefix}{major}.{minor} below it",
    )
