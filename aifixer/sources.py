"""Where a Deployment's field comes from in a GitOps repository, edited there and proven.

Teams rarely keep a Deployment as one plain file. With kustomize, the image a cluster
runs is often set by an overlay's `images:` transformer, the memory limit by an
overlay's patch, the replica count by its `replicas:` field, and only the rest by the
base file; with Helm, the Deployment is rendered from a chart's templates and the
fields that matter come from `values.yaml`. Editing the base when the overlay sets the
tag changes nothing in production. So for each changed field this module finds the
place that decides it and edits there (comments and layout kept: `aifixer.yamledit`),
then proves the edit by rendering, as the team's pipeline would:

- plain manifests (one or several documents): the document defining the workload.
- kustomize (a directory with a kustomization): from the top overlay down, the first of
  the overlay's `images:` entries (newTag, newName, digest: image changes only), its
  `replicas:` entries (spec.replicas), its patches that set the field (`patches:` and
  the older `patchesStrategicMerge:` / `patchesJson6902:`, inline or in files, strategic
  merge or JSON6902), then the layers it includes, and last the resource file defining
  the Deployment; a layer below is edited only when no layer above overrides the field.
- Helm (a directory with Chart.yaml): the values entries whose value flows into the
  field: the rendered value found among the values (whole, or as the part of a string
  that changes, like an image's tag), or a values map named like the field's parents.

Every candidate edit is tried by rendering (`kubectl kustomize` or `helm template`,
through the `Render` function the caller supplies), and kept only if the rendered
Deployment then holds the change's `after` at its path and nothing else in the render
moved. Once every change has its edit, the whole edited tree is rendered once more and
compared with the render before: every changed field equals its `after`, no other field
of any rendered object differs. A change no edit proves raises `Unproven`, naming what
must be edited by hand; nothing is half-proposed.

Pure logic apart from reading and writing the checkout's files: the renders are the
caller's (aifixer.adapters.render runs the real tools).
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .manifests import apply_changes, diff, get_path, split_path
from .models import FieldChange, Subject
from .yamledit import EditError, edit_document, edit_manifest_file

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
CHART_FILE = "Chart.yaml"
# Trials per changed field; each is one render.
MAX_TRIALS = 40

LayoutKind = Literal["plain", "kustomize", "helm"]

# Helm's rule for a release name: lowercase RFC 1123 labels joined by dots, at most 53
# characters. The release reaches `helm template` from the live Deployment's annotation.
_RELEASE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def valid_release(name: str) -> bool:
    """Whether `name` is a Helm release name (nothing a tool could read as an option)."""
    return len(name) <= 53 and bool(_RELEASE.match(name))


def valid_namespace(name: str) -> bool:
    """Whether `name` is a Kubernetes namespace name (an RFC 1123 label)."""
    return len(name) <= 63 and bool(_NAMESPACE.match(name))


def inside(root: Path, path: str) -> Path:
    """`path` of the repository, resolved, and refused unless it stays inside `root`.

    A path from the repository or a workload's annotation is refused when it is
    absolute, when one of its parts starts with "-" (a tool would read it as an
    option), or when it resolves (through "..", or a symbolic link) outside the checkout.

    Raises:
        SourceError: the path is refused.
    """
    root = root.resolve()
    parts = Path(path).parts
    if not path or Path(path).is_absolute() or any(p.startswith("-") for p in parts):
        raise SourceError(f"{path!r} is not a path inside the repository: refused")
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise SourceError(f"{path} resolves outside the repository: refused")
    return target


def _confined(root: Path, file: Path) -> Path:
    """`file`, resolved, if it is a regular file inside `root` (resolved); else refused.

    A symbolic link of the repository may point anywhere on the machine: a file is
    resolved before it is read or written, never followed out of the checkout.
    """
    real = file.resolve()
    if not real.is_relative_to(root):
        shown = file.relative_to(root) if file.is_relative_to(root) else file.name
        raise SourceError(f"{shown} resolves outside the repository (a symbolic link?): refused")
    if real.exists() and not real.is_file():
        raise SourceError(f"{real.relative_to(root)} is not a regular file: refused")
    return real


def _read(root: Path, file: Path) -> str:
    return _confined(root, file).read_text(encoding="utf-8")


def _write(root: Path, file: Path, text: str) -> None:
    _confined(root, file).write_text(text, encoding="utf-8")


class SourceError(ValueError):
    """The repository's layout cannot be read as asked (a broken kustomization...)."""


class Unproven(SourceError):
    """No edit of the repository could be proven to make exactly the verified change.

    Attributes:
        explanation: what was tried and why it fell short, for a person to read.
        hand_edits: one line per field still to edit by hand ("<path>: set to <after>
            (rendered from ...)").
    """

    def __init__(self, explanation: str, hand_edits: list[str]) -> None:
        super().__init__(explanation)
        self.explanation = explanation
        self.hand_edits = hand_edits


@dataclass(frozen=True)
class Layout:
    """How the repository defines the workload.

    kind: "plain" (`path` is the manifest file), "kustomize" (`path` is the directory
    the pipeline builds), "helm" (`path` is the chart; `values` the values files given
    to `helm template` after the chart's own values.yaml; `release` and `namespace`
    name the release).
    """

    kind: LayoutKind
    path: str
    values: tuple[str, ...] = ()
    release: str = ""
    namespace: str = ""

    def describe(self) -> str:
        if self.kind == "kustomize":
            return f"kubectl kustomize {self.path}"
        if self.kind == "helm":
            files = "".join(f" -f {v}" for v in self.values)
            return f"helm template {self.release} {self.path} --namespace {self.namespace}{files}"
        return self.path


# Renders the layout from the checkout as it is now: the YAML stream of its objects.
Render = Callable[[Layout], str]


@dataclass(frozen=True)
class FileEdit:
    """One GitOps file before and after the fix."""

    path: str  # in the repository
    before: str
    after: str

    @property
    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                f"a/{self.path}",
                f"b/{self.path}",
            )
        )


@dataclass(frozen=True)
class FieldProof:
    path: str  # the Deployment's field
    source: str  # where it was edited: "overlays/prod/kustomization.yaml: images[0].newTag"
    rendered_before: Any
    rendered_after: Any


@dataclass(frozen=True)
class SiblingRender:
    """Another top kustomization that includes a file the fix edits, rendered before and
    after the edit: `fields` are the ones of its own copy of the workload that moved
    (path, before, after), each to the verified value; empty when it renders the same."""

    command: str
    fields: tuple[tuple[str, Any, Any], ...] = ()


@dataclass(frozen=True)
class Proof:
    command: str  # the render, as the pipeline runs it
    fields: tuple[FieldProof, ...]
    siblings: tuple[SiblingRender, ...] = ()

    def markdown(self) -> str:
        lines = [
            f"Rendered with `{self.command}` before and after this change: the Deployment "
            "differs in exactly these fields, each now the value verified in the cluster, "
            "and nothing else in the render changed.",
            "",
            "| field | edited in | rendered before | rendered after |",
            "| --- | --- | --- | --- |",
        ]
        for f in self.fields:
            cells = [f.path, f.source, _short(f.rendered_before), _short(f.rendered_after)]
            lines.append("| " + " | ".join(f"`{c}`" for c in cells) + " |")
        if self.siblings:
            lines += [
                "",
                "Other kustomizations include an edited file; rendered before and after:",
                "",
            ]
            for sib in self.siblings:
                if not sib.fields:
                    lines.append(f"- `{sib.command}`: renders the same.")
                    continue
                moved = ", ".join(f"`{p}` `{_short(b)}` → `{_short(a)}`" for p, b, a in sib.fields)
                lines.append(
                    f"- `{sib.command}`: the same fix reaches it, on the same fields only: {moved}."
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class SourceChange:
    """The files edited for a fix, and for kustomize and Helm the render that proves it."""

    layout: Layout
    edits: tuple[FileEdit, ...]
    proof: Proof | None = None

    @property
    def path(self) -> str:
        return ", ".join(e.path for e in self.edits)

    @property
    def diff(self) -> str:
        return "".join(e.diff for e in self.edits)


# -- the layout ------------------------------------------------------------------------


def layout_of(root: Path, path: str, *, release: str = "", namespace: str = "") -> Layout:
    """The layout a configured path (annotation or AIFIXER_GITOPS_PATHS) points at.

    A directory holding a kustomization, or the kustomization file itself: kustomize. A
    directory holding Chart.yaml, Chart.yaml itself, or a values file beside it: Helm
    (that values file is given to `helm template` after values.yaml). Anything else: a
    plain manifest file.
    """
    root = root.resolve()
    target = inside(root, path)
    rel = path.rstrip("/")
    if target.is_dir():
        if _kustomization(target) is not None:
            return Layout("kustomize", rel)
        if (target / CHART_FILE).is_file():
            return Layout("helm", rel, release=release, namespace=namespace)
        raise SourceError(f"{path} holds neither a kustomization nor a Helm chart")
    parent = str(Path(rel).parent)
    if target.name in KUSTOMIZATION_FILES:
        return Layout("kustomize", parent)
    if target.name == CHART_FILE:
        return Layout("helm", parent, release=release, namespace=namespace)
    if (target.parent / CHART_FILE).is_file() and target.suffix in (".yaml", ".yml"):
        values = () if target.name == "values.yaml" else (rel,)
        return Layout("helm", parent, values=values, release=release, namespace=namespace)
    return Layout("plain", rel)


def rendered_layouts(root: Path, *, release: str, namespace: str) -> list[Layout]:
    """Every kustomization and chart of the repository that a pipeline would render.

    Kustomizations another one includes are parts, not entry points; charts vendored in
    another chart's charts/ likewise.
    """
    root = root.resolve()
    kustomizations = sorted(
        d for d in _dirs(root) if _kustomization(d) is not None and "templates" not in d.parts
    )
    included: set[Path] = set()
    for d in kustomizations:
        for entry in _entries(d, _load_kustomization(root, d)):
            if entry.is_dir():
                included.add(entry.resolve())
    charts = [d for d in _dirs(root) if (d / CHART_FILE).is_file()]
    out = [
        Layout("kustomize", str(d.relative_to(root)))
        for d in kustomizations
        if d.resolve() not in included
    ]
    out += [
        Layout("helm", str(d.relative_to(root)), release=release, namespace=namespace)
        for d in sorted(charts)
        if not _vendored(root, d)
    ]
    return out


def _vendored(root: Path, chart: Path) -> bool:
    """Whether `chart` sits in another chart's charts/ directory (a dependency, rendered
    by its parent), not in a repository's own charts/ folder of top charts."""
    parts = chart.relative_to(root).parts
    return any(
        parts[i] == "charts" and (root.joinpath(*parts[:i]) / CHART_FILE).is_file()
        for i in range(len(parts) - 1)
    )


def parts_of_layouts(root: Path, layouts: list[Layout]) -> set[Path]:
    """The files a kustomization includes and every file inside a chart: not plain sources."""
    root = root.resolve()
    out: set[Path] = set()
    for layout in layouts:
        base = (root / layout.path).resolve()
        if layout.kind == "helm":
            out |= {p.resolve() for p in base.rglob("*") if p.is_file()}
        else:
            for layer in _layers(root, base):
                out |= {f.resolve() for f in _resource_files(root, layer)}
    return out


def renders_workload(text: str, workload: Subject, layout: Layout) -> bool:
    return _find_workload(_objects(text), workload, layout) is not None


# -- the change ------------------------------------------------------------------------


def change_source(
    root: Path, layout: Layout, workload: Subject, changes: list[FieldChange], render: Render
) -> SourceChange:
    """Edit, in the checkout at `root`, the source of every changed field, and prove it.

    The files are left edited on success and restored on failure.

    Returns:
        The edited files and, for kustomize and Helm, the render proof.

    Raises:
        SourceError: a plain file does not define the workload, or a file is not YAML.
        Unproven: a change no edit could be proven to make (files restored).
    """
    root = root.resolve()
    if layout.kind == "plain":
        return _change_plain(root, layout, workload, changes)
    return _Prover(root, layout, workload, changes, render).run()


def _change_plain(
    root: Path, layout: Layout, workload: Subject, changes: list[FieldChange]
) -> SourceChange:
    file = inside(root, layout.path)
    before = _read(root, file)
    after = edit_manifest_file(before, workload.kind, workload.namespace, workload.name, changes)
    _write(root, file, after)
    return SourceChange(layout, (FileEdit(layout.path, before, after),))


@dataclass
class _Candidate:
    file: Path  # absolute
    where: str
    edit: Callable[[str], str]  # the file's text -> the edited text


@dataclass
class _Prover:
    root: Path
    layout: Layout
    workload: Subject
    changes: list[FieldChange]
    render: Render
    originals: dict[Path, str] = field(default_factory=dict)

    def run(self) -> SourceChange:
        before_objs = self._render()
        index = _find_workload(before_objs, self.workload, self.layout)
        if index is None:
            raise SourceError(
                f"{self.layout.describe()} renders no {self.workload.kind} {self.workload.key}"
            )
        d0 = before_objs[index]
        pending = [c for c in self.changes if get_path(d0, c.path) != c.after]
        if not pending:
            raise SourceError(f"{self.layout.describe()} already renders the fix: nothing to edit")
        done: list[FieldChange] = [c for c in self.changes if c not in pending]
        sources: dict[str, str] = {}
        failed: list[FieldChange] = []
        current = before_objs
        try:
            for change in pending:
                if get_path(current[index], change.path) == change.after:
                    # An earlier edit made this one too (one image tag, two containers).
                    done.append(change)
                    sources[change.path] = next(reversed(sources.values()), "")
                    continue
                proven = self._prove_one(change, before_objs, index, done)
                if proven is None:
                    failed.append(change)
                else:
                    sources[change.path], current = proven
                    done.append(change)
            if failed:
                raise self._unproven(failed, d0, sources)
            after_objs = self._render()
            problem = _compare(before_objs, after_objs, index, self.changes)
            if problem:  # each held alone but not together
                raise Unproven(
                    f"{self.layout.describe()}: the edits, together, render differently than "
                    f"the verified fix: {problem}",
                    [_hand_edit(c, d0) for c in pending],
                )
        except BaseException:
            self._restore()
            raise
        siblings = self._siblings(d0) if self.layout.kind == "kustomize" else ()
        d1 = after_objs[index]
        edits = tuple(
            FileEdit(str(f.relative_to(self.root)), text, f.read_text(encoding="utf-8"))
            for f, text in sorted(self.originals.items())
            if f.read_text(encoding="utf-8") != text
        )
        proof = Proof(
            self.layout.describe(),
            tuple(
                FieldProof(
                    c.path,
                    sources.get(c.path, "(already rendered so)"),
                    get_path(d0, c.path),
                    get_path(d1, c.path),
                )
                for c in self.changes
            ),
            siblings,
        )
        return SourceChange(self.layout, edits, proof)

    def _siblings(self, d0: dict[str, Any]) -> tuple[SiblingRender, ...]:
        """What the edits do to the other top kustomizations that include an edited file
        (a base shared by several overlays): each is rendered before and after, and may
        change only on the fixed fields of its own copy of the workload, each to the
        verified value; anything else (another object or field moved, a render broken)
        raises Unproven, files restored."""
        edited = {
            f: f.read_text(encoding="utf-8")
            for f, text in self.originals.items()
            if f.read_text(encoding="utf-8") != text
        }
        dirs = {f.parent for f in edited}
        top = (self.root / self.layout.path).resolve()
        others: list[Layout] = []
        for lay in rendered_layouts(self.root, release="", namespace=""):
            where = (self.root / lay.path).resolve()
            if lay.kind != "kustomize" or where == top:
                continue
            layers = list(_layers(self.root, where))
            files = {f for layer in layers for f in _resource_files(self.root, layer)}
            if dirs & set(layers) or files & set(edited):
                others.append(lay)
        if not others:
            return ()
        try:
            for f in edited:
                _write(self.root, f, self.originals[f])
            before: dict[str, list[Any]] = {}
            for lay in others:
                try:
                    before[lay.path] = _objects(self.render(lay))
                except SourceError:
                    continue  # it does not render today: nothing of it to keep
        finally:
            for f, text in edited.items():
                _write(self.root, f, text)
        out: list[SiblingRender] = []
        by_path = {c.path: c for c in self.changes}
        hand = [_hand_edit(c, d0, "in this overlay only") for c in self.changes]
        for lay in others:
            if lay.path not in before:
                continue
            try:
                after = _objects(self.render(lay))
            except SourceError as exc:
                raise self._fail(f"the edit breaks `{lay.describe()}`: {exc}", hand) from None
            problem = _sibling_problem(before[lay.path], after, self.workload, by_path)
            if isinstance(problem, str):
                raise self._fail(f"the edit changes `{lay.describe()}` too: {problem}", hand)
            out.append(SiblingRender(lay.describe(), problem))
        return tuple(out)

    def _fail(self, why: str, hand: list[str]) -> Unproven:
        self._restore()
        return Unproven(f"{self.layout.describe()}: {why}", hand)

    # -- trying candidates

    def _prove_one(
        self, change: FieldChange, before_objs: list[Any], index: int, done: list[FieldChange]
    ) -> tuple[str, list[Any]] | None:
        """The first candidate edit whose render holds `change` (and the ones `done`),
        other changes of the fix at most, and nothing else: (where, the render)."""
        d0 = before_objs[index]
        others = [c for c in self.changes if c not in done and c is not change]
        seen: set[tuple[Path, str]] = set()
        trials = 0
        for cand in self._candidates(change, d0):
            current = self._text(cand.file)
            try:
                new = cand.edit(current)
            except (EditError, KeyError, IndexError, TypeError, ValueError):
                continue
            if new == current or (cand.file, new) in seen:
                continue
            seen.add((cand.file, new))
            trials += 1
            if trials > MAX_TRIALS:
                break
            _write(self.root, cand.file, new)
            try:
                after_objs = self._render()
            except SourceError:
                after_objs = None
            if after_objs is not None and not _compare(
                before_objs, after_objs, index, [*done, change], others
            ):
                return f"{cand.file.relative_to(self.root)}: {cand.where}", after_objs
            _write(self.root, cand.file, current)
        return None

    def _text(self, file: Path) -> str:
        text = _read(self.root, file)
        self.originals.setdefault(file, text)
        return text

    def _restore(self) -> None:
        for file, text in self.originals.items():
            _write(self.root, file, text)

    def _render(self) -> list[Any]:
        return _objects(self.render(self.layout))

    def _candidates(self, change: FieldChange, d0: dict[str, Any]) -> Iterator[_Candidate]:
        if self.layout.kind == "kustomize":
            yield from _kustomize_candidates(self.root, self.root / self.layout.path, change, d0)
        else:
            yield from _helm_candidates(self.root, self.layout, change, d0)

    def _unproven(
        self, failed: list[FieldChange], d0: dict[str, Any], sources: dict[str, str]
    ) -> Unproven:
        where = "the overlays' images, replicas and patches, then the resource files"
        if self.layout.kind == "helm":
            where = "the chart's values (no values entry yields exactly that render)"
        hand = [_hand_edit(c, d0, self._template_hint(c)) for c in failed]
        proven = "".join(f"; {p} is proven in {s}" for p, s in sources.items())
        return Unproven(
            f"{self.layout.describe()}: no edit of {where} renders exactly the verified fix "
            f"for {', '.join(c.path for c in failed)}{proven}. Edit by hand: " + "; ".join(hand),
            hand,
        )

    def _template_hint(self, change: FieldChange) -> str:
        """For Helm: the templates that write the field's key, for the person who edits."""
        if self.layout.kind != "helm":
            return ""
        keys = [p for p in split_path(change.path) if isinstance(p, str)]
        if not keys:
            return ""
        pattern = re.compile(rf"^\s*-?\s*{re.escape(keys[-1])}\s*:", re.M)
        chart = self.root / self.layout.path
        hits = [
            str(p.relative_to(self.root))
            for p in sorted((chart / "templates").rglob("*"))
            if p.is_file()
            and p.resolve().is_relative_to(self.root)
            and pattern.search(p.read_text(encoding="utf-8", errors="replace"))
        ]
        return f"written by {', '.join(hits[:3])}" if hits else ""


def _hand_edit(change: FieldChange, d0: dict[str, Any], hint: str = "") -> str:
    now = _short(get_path(d0, change.path))
    text = f"{change.path}: renders {now}, must render {_short(change.after)}"
    return f"{text} ({hint})" if hint else text


def _compare(
    before: list[Any],
    after: list[Any],
    index: int,
    changes: list[FieldChange],
    allowed: Sequence[FieldChange] = (),
) -> str | None:
    """Why `after` is not `before` with exactly `changes` made to the workload (and any
    of `allowed` that it holds), or None."""
    if len(before) != len(after):
        return f"the render has {len(after)} objects instead of {len(before)}"
    held = [c for c in allowed if get_path(after[index], c.path) == c.after]
    expected = apply_changes(before[index], [*changes, *held])
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if i == index:
            if a != expected:
                wrong = [c.path for c in changes if get_path(a, c.path) != c.after]
                if wrong:
                    return f"{', '.join(wrong)} not as verified"
                return "other fields of the Deployment changed too"
        elif a != b:
            meta = a.get("metadata") or {} if isinstance(a, dict) else {}
            return f"{a.get('kind') if isinstance(a, dict) else a} {meta.get('name')} changed too"
    return None


def _sibling_problem(
    before: list[Any], after: list[Any], workload: Subject, changes: dict[str, FieldChange]
) -> str | tuple[tuple[str, Any, Any], ...]:
    """The fields of another render's copy of the workload that moved (each a changed
    field, now its verified value), or why the render moved otherwise."""
    if len(before) != len(after):
        return f"it renders {len(after)} objects instead of {len(before)}"
    moved: list[tuple[str, Any, Any]] = []
    for b, a in zip(before, after, strict=True):
        if a == b:
            continue
        meta = (b.get("metadata") or {}) if isinstance(b, dict) else {}
        same = (
            isinstance(b, dict)
            and isinstance(a, dict)
            and b.get("kind") == workload.kind
            and meta.get("name") == workload.name
        )
        if not same:
            kind = b.get("kind") if isinstance(b, dict) else b
            return f"{kind} {meta.get('name')} changed"
        for d in diff(b, a):
            change = changes.get(d.path)
            if change is None or d.after != change.after:
                return f"{d.path} renders {_short(d.after)}"
            moved.append((d.path, d.before, d.after))
    return tuple(moved)


# -- kustomize -------------------------------------------------------------------------

_IMAGE_PATH = re.compile(r"(^|\.)(containers|initContainers)\[\d+\]\.image$")


def _kustomization(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _load_kustomization(root: Path, directory: Path) -> dict[str, Any]:
    file = _kustomization(directory)
    if file is None:
        return {}
    data = _safe_load(_read(root, file), str(file))
    return data if isinstance(data, dict) else {}


# Kinds kustomize runs in process from a generators:/transformers: config; any other kind
# (exec and container plugins, KRM functions) would run a program or fetch an image.
BUILTIN_PLUGINS = frozenset(
    {
        "AnnotationsTransformer",
        "ConfigMapGenerator",
        "HashTransformer",
        "ImageTagTransformer",
        "LabelTransformer",
        "NamespaceTransformer",
        "PatchJson6902Transformer",
        "PatchStrategicMergeTransformer",
        "PatchTransformer",
        "PrefixSuffixTransformer",
        "PrefixTransformer",
        "ReplacementTransformer",
        "ReplicaCountTransformer",
        "SecretGenerator",
        "SuffixTransformer",
    }
)


def check_kustomization(root: Path, path: str) -> None:
    """Refuse a kustomization tree whose render would reach beyond the checkout.

    Every kustomization reachable from `path` (resources, bases, components) is read,
    and every file it names (resources, patches, generators' files and envs,
    replacements, configurations, crds, openapi) must be an existing local path inside
    the checkout: a URL or a remote target (`github.com/org/repo//dir?ref=`) would be
    fetched during the render, from inside the cluster's network, and make the proof
    depend on content that can change. `helmCharts:` is refused, and so is a
    `generators:`/`transformers:`/`validators:` entry that is not a local file of
    kustomize's built-in kinds.

    Raises:
        SourceError: what is refused, and in which kustomization.
    """
    root = root.resolve()
    seen: set[Path] = set()

    def local(layer: Path, entry: Any, what: str) -> Path:
        kfile = _kustomization(layer)
        where = kfile.relative_to(root) if kfile else layer.relative_to(root)
        if not isinstance(entry, str) or not entry:
            raise SourceError(f"{where}: {what} {entry!r} is not a path: refused")
        target = (layer / entry).resolve()
        if not target.is_relative_to(root) or not target.exists():
            raise SourceError(
                f"{where}: {what} {_quoted(entry)} is not a local path inside the "
                "repository (remote and outside resources are refused)"
            )
        return target

    def plugins(layer: Path, key: str, entries: list[Any]) -> None:
        for entry in entries:
            if isinstance(entry, str) and "\n" in entry:
                docs, name = entry, f"an inline {key} config"
            else:
                file = local(layer, entry, key)
                if not file.is_file():
                    raise SourceError(f"{file.relative_to(root)}: {key} must be a file: refused")
                docs, name = _read(root, file), str(file.relative_to(root))
            try:
                configs = [d for d in YAML(typ="safe", pure=True).load_all(docs) if d is not None]
            except YAMLError as exc:
                raise SourceError(f"{name} is not valid YAML: {exc}") from exc
            for config in configs:
                kind = config.get("kind") if isinstance(config, dict) else None
                annotations = (config.get("metadata") or {}).get("annotations") or {}
                if kind not in BUILTIN_PLUGINS or any("function" in str(a) for a in annotations):
                    raise SourceError(
                        f"{name}: {key} of kind {_quoted(str(kind))} is not one of "
                        "kustomize's built-in kinds: refused"
                    )

    def walk(layer: Path) -> None:
        if layer in seen:
            return
        seen.add(layer)
        kfile = _kustomization(layer)
        if kfile is None:
            raise SourceError(f"{layer.relative_to(root)} holds no kustomization")
        k = _load_kustomization(root, layer)
        for key in ("helmCharts", "helmChartInflationGenerator", "helmGlobals"):
            if k.get(key):
                raise SourceError(
                    f"{kfile.relative_to(root)}: {key} is refused "
                    "(a chart is rendered from its own directory)"
                )
        for key in ("resources", "bases", "components"):
            for entry in _list(k, key):
                target = local(layer, entry, key)
                if target.is_dir():
                    walk(target)
        for key in ("patches", "patchesJson6902", "replacements"):
            for entry in _list(k, key):
                if isinstance(entry, dict) and entry.get("path") is not None:
                    local(layer, entry["path"], key)
        for entry in _list(k, "patchesStrategicMerge"):
            if not (isinstance(entry, str) and "\n" in entry):
                local(layer, entry, "patchesStrategicMerge")
        for key in ("configMapGenerator", "secretGenerator"):
            for gen in _list(k, key):
                if not isinstance(gen, dict):
                    continue
                for item in [*(gen.get("files") or []), *(gen.get("envs") or [])]:
                    path = item.rpartition("=")[2] if isinstance(item, str) else item
                    local(layer, path, key)
                if gen.get("env") is not None:
                    local(layer, gen["env"], key)
        for key in ("configurations", "crds"):
            for entry in _list(k, key):
                local(layer, entry, key)
        openapi = k.get("openapi")
        if isinstance(openapi, dict) and openapi.get("path") is not None:
            local(layer, openapi["path"], "openapi")
        for key in ("generators", "transformers", "validators"):
            plugins(layer, key, _list(k, key))

    walk(inside(root, path))


def _list(k: dict[str, Any], key: str) -> list[Any]:
    value = k.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SourceError(f"{key} must be a list")
    return value


def _quoted(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _entries(directory: Path, k: dict[str, Any]) -> Iterator[Path]:
    """The local paths a kustomization includes (resources, bases, components), in order."""
    for key in ("resources", "bases", "components"):
        for entry in k.get(key) or []:
            if isinstance(entry, str) and "://" not in entry and not entry.startswith("git@"):
                yield (directory / entry).resolve()


def _layers(root: Path, top: Path) -> Iterator[Path]:
    """The kustomization directories from `top` down, depth first, in inclusion order."""
    seen: set[Path] = set()

    def walk(d: Path) -> Iterator[Path]:
        if d in seen:
            return
        seen.add(d)
        yield d
        for entry in _entries(d, _load_kustomization(root, d)):
            if entry.is_dir() and _kustomization(entry) is not None:
                yield from walk(entry)

    yield from walk(top.resolve())


def _resource_files(root: Path, layer: Path) -> list[Path]:
    return [e for e in _entries(layer, _load_kustomization(root, layer)) if e.is_file()]


def _kustomize_candidates(
    root: Path, top: Path, change: FieldChange, d0: dict[str, Any]
) -> Iterator[_Candidate]:
    """From the top overlay down: transformers and patches of a layer, then its resources."""
    visited: set[Path] = set()

    def walk(layer: Path) -> Iterator[_Candidate]:
        if layer in visited:
            return
        visited.add(layer)
        kfile = _kustomization(layer)
        if kfile is None:
            return
        k = _load_kustomization(root, layer)
        if _IMAGE_PATH.search(change.path):
            yield from _image_candidates(kfile, k, change, d0)
        if change.path == "spec.replicas":
            for i, entry in enumerate(k.get("replicas") or []):
                if isinstance(entry, dict) and entry.get("count") is not None:
                    yield _yaml_candidate(kfile, f"replicas[{i}].count", change.after)
        yield from _patch_candidates(root, layer, kfile, k, change, d0)
        for entry in _entries(layer, k):
            if entry.is_dir():
                yield from walk(entry)
            elif entry.is_file():
                yield from _resource_candidates(root, entry, change, d0)

    yield from walk(top.resolve())


def _yaml_candidate(file: Path, path: str, value: Any, index: int = 0) -> _Candidate:
    def edit(text: str) -> str:
        return edit_document(text, [FieldChange(path=path, after=value)], index)

    return _Candidate(file, path, edit)


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    """ "repo/name:tag@sha256:..." -> (repo/name, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _image_candidates(
    kfile: Path, k: dict[str, Any], change: FieldChange, d0: dict[str, Any]
) -> Iterator[_Candidate]:
    rendered = get_path(d0, change.path)
    if not isinstance(rendered, str) or not isinstance(change.after, str):
        return
    old_name, _, _ = _split_image(rendered)
    new_name, new_tag, new_digest = _split_image(change.after)
    for i, entry in enumerate(k.get("images") or []):
        if not isinstance(entry, dict) or old_name not in (entry.get("name"), entry.get("newName")):
            continue
        steps: list[FieldChange] = []
        if new_name != old_name or entry.get("newName"):
            same = new_name == entry.get("name")
            steps.append(FieldChange(path=f"images[{i}].newName", after=None if same else new_name))
        if new_digest:
            steps.append(FieldChange(path=f"images[{i}].digest", after=new_digest))
            steps.append(FieldChange(path=f"images[{i}].newTag", after=new_tag))
        elif new_tag:
            steps.append(FieldChange(path=f"images[{i}].newTag", after=new_tag))
            steps.append(FieldChange(path=f"images[{i}].digest", after=None))
        where = ", ".join(f"{s.path}" for s in steps if s.after is not None) or f"images[{i}]"
        yield _Candidate(kfile, where, functools.partial(edit_document, changes=steps))


def _patch_texts(
    root: Path, layer: Path, kfile: Path, k: dict[str, Any]
) -> Iterator[tuple[Path, str, Callable[[str, Callable[[str], str]], str]]]:
    """(file, patch text, apply) for every patch of a layer; `apply(file_text, edit)`
    returns the file's text with the patch's text replaced by `edit(patch text)`."""

    def in_file(path: Path) -> tuple[Path, str, Callable[[str, Callable[[str], str]], str]]:
        return path, _read(root, path), lambda text, edit: edit(text)

    def inline(key: str) -> Callable[[str, Callable[[str], str]], str]:
        def apply(text: str, edit: Callable[[str], str]) -> str:
            old = get_path(_safe_load(text, str(kfile)), key)
            new = edit(old)
            new = new.rstrip("\n") + ("\n" if old.endswith("\n") else "")
            return edit_document(text, [FieldChange(path=key, after=new)])

        return apply

    for key in ("patches", "patchesJson6902"):
        for i, entry in enumerate(k.get(key) or []):
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("path"), str) and (layer / entry["path"]).is_file():
                yield in_file((layer / entry["path"]).resolve())
            elif isinstance(entry.get("patch"), str):
                yield kfile, entry["patch"], inline(f"{key}[{i}].patch")
    for i, entry in enumerate(k.get("patchesStrategicMerge") or []):
        if isinstance(entry, str) and "\n" not in entry and (layer / entry).is_file():
            yield in_file((layer / entry).resolve())
        elif isinstance(entry, str):
            yield kfile, entry, inline(f"patchesStrategicMerge[{i}]")


def _patch_candidates(
    root: Path,
    layer: Path,
    kfile: Path,
    k: dict[str, Any],
    change: FieldChange,
    d0: dict[str, Any],
) -> Iterator[_Candidate]:
    for file, text, apply in _patch_texts(root, layer, kfile, k):
        try:
            docs = list(YAML(typ="safe", pure=True).load_all(text))
        except YAMLError:
            continue
        docs = [d for d in docs if d is not None]
        for n, doc in enumerate(docs):
            if isinstance(doc, list):
                paths = _json6902_paths(doc, change, d0)
            elif isinstance(doc, dict):
                paths = _smp_paths(doc, change, d0)
            else:
                continue
            for path in paths:

                def edit(t: str, p: str = path, n: int = n, apply: Any = apply) -> str:
                    return apply(t, lambda inner: edit_document(inner, [_set(p, change.after)], n))

                yield _Candidate(file, f"patch {path}", edit)


def _set(path: str, value: Any) -> FieldChange:
    return FieldChange(path=path, after=value)


def _pointer(change_path: str) -> list[str]:
    return [str(p) for p in split_path(change_path)]


def _json6902_paths(ops: list[Any], change: FieldChange, d0: dict[str, Any]) -> Iterator[str]:
    """Paths, inside the list of operations, of the value that sets the field."""
    want = _pointer(change.path)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in ("add", "replace"):
            continue
        raw = op.get("path")
        if not isinstance(raw, str) or not raw.startswith("/"):
            continue
        parts = [p.replace("~1", "/").replace("~0", "~") for p in raw[1:].split("/")]
        if parts == want:
            yield f"[{i}].value"
        elif want[: len(parts)] == parts and isinstance(op.get("value"), (dict, list)):
            rest = split_path(change.path)[len(parts) :]
            if _has_path(op["value"], rest, upto_last=True):
                yield f"[{i}].value" + _join(rest)


def _smp_paths(doc: dict[str, Any], change: FieldChange, d0: dict[str, Any]) -> Iterator[str]:
    """The field's path inside a strategic-merge patch that sets it (named lists by name)."""
    parts = split_path(change.path)
    node: Any = doc
    rendered: Any = d0
    out: list[str | int] = []
    for depth, part in enumerate(parts):
        if isinstance(part, int):
            if not isinstance(node, list) or not isinstance(rendered, list):
                return
            if part >= len(rendered):
                return
            item = rendered[part]
            name = item.get("name") if isinstance(item, dict) else None
            if name is not None:
                match = [
                    j for j, x in enumerate(node) if isinstance(x, dict) and x.get("name") == name
                ]
                if not match:
                    return
                idx = match[0]
            elif part < len(node):
                idx = part
            else:
                return
            out.append(idx)
            node, rendered = node[idx], item
        else:
            if not isinstance(node, dict):
                return
            last = depth == len(parts) - 1
            if part not in node:
                # The patch sets the parent (a map it owns): the field may be added there.
                if last and out and parts[depth - 1] not in ("spec", "template", "metadata"):
                    out.append(part)
                    yield _join(out)
                return
            out.append(part)
            node = node[part]
            rendered = rendered.get(part) if isinstance(rendered, dict) else None
    yield _join(out)


def _has_path(node: Any, parts: list[str | int], upto_last: bool) -> bool:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
            node = node[part]
        else:
            if not isinstance(node, dict):
                return False
            if part not in node:
                return upto_last and last
            node = node[part]
    return True


def _join(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _resource_candidates(
    root: Path, file: Path, change: FieldChange, d0: dict[str, Any]
) -> Iterator[_Candidate]:
    """The Deployment documents of a resource file: the field set where the base writes it."""
    text = _read(root, file)
    try:
        docs = list(YAML(typ="safe", pure=True).load_all(text))
    except YAMLError:
        return
    name = (d0.get("metadata") or {}).get("name", "")
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != d0.get("kind"):
            continue
        meta = doc.get("metadata") or {}
        if not isinstance(meta.get("name"), str) or meta["name"] not in name:
            continue
        path = _path_in(doc, change.path, d0)
        if path is None:
            continue
        ns = meta.get("namespace") or "default"
        kind, obj = doc["kind"], meta["name"]

        def edit(t: str, p: str = path, ns: str = ns, kind: str = kind, obj: str = obj) -> str:
            return edit_manifest_file(t, kind, ns, obj, [_set(p, change.after)])

        yield _Candidate(file, f"{kind} {obj} {path}", edit)


def _path_in(doc: dict[str, Any], change_path: str, d0: dict[str, Any]) -> str | None:
    """`change_path` (indexes of the render) with the indexes of `doc`'s named lists."""
    parts = split_path(change_path)
    node: Any = doc
    rendered: Any = d0
    out: list[str | int] = []
    for part in parts:
        if isinstance(part, int):
            if not isinstance(rendered, list) or part >= len(rendered):
                return None
            item = rendered[part]
            name = item.get("name") if isinstance(item, dict) else None
            idx = part
            if name is not None and isinstance(node, list):
                match = [
                    j for j, x in enumerate(node) if isinstance(x, dict) and x.get("name") == name
                ]
                if not match:
                    return None
                idx = match[0]
            out.append(idx)
            node = node[idx] if isinstance(node, list) and idx < len(node) else None
            rendered = item
        else:
            out.append(part)
            node = node.get(part) if isinstance(node, dict) else None
            rendered = rendered.get(part) if isinstance(rendered, dict) else None
    return _join(out)


# -- Helm ------------------------------------------------------------------------------

_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _helm_candidates(
    root: Path, layout: Layout, change: FieldChange, d0: dict[str, Any]
) -> Iterator[_Candidate]:
    """Values entries whose value flows into the field, the likeliest first.

    1. an entry equal to the rendered value (a scalar, or a whole map or list written
       with toYaml);
    2. a string entry that is the changing part of the rendered string (an image's tag
       in "repo:{{ .Values.image.tag }}"), set to the same part of the new value;
    3. a map named like one of the field's parents (`resources`), the rest of the
       field's path set under it.
    """
    chart = root / layout.path
    # The last values file given wins, so it is edited first; the chart's own last.
    files = [(root / v).resolve() for v in reversed(layout.values)] + [chart / "values.yaml"]
    rendered = get_path(d0, change.path)
    after = change.after
    exact: list[_Candidate] = []
    partial: list[_Candidate] = []
    named: list[_Candidate] = []
    wanted_keys = [p for p in split_path(change.path) if isinstance(p, str)]
    for file in files:
        if not file.is_file():
            continue
        values = _safe_load(_read(root, file), str(file.relative_to(root)))
        for vpath, value in _leaves(values, []):
            key = _join(vpath)
            if rendered is not None and _same(value, rendered):
                exact.append(_yaml_candidate(file, key, _typed(after, value)))
            elif (
                isinstance(value, (str, int, float))
                and not isinstance(value, bool)
                and isinstance(rendered, str)
                and isinstance(after, str)
                and str(value)
                and str(value) in rendered
            ):
                new = _changed_part(rendered, after, str(value))
                if new is not None:
                    partial.append(_yaml_candidate(file, key, _typed(new, value)))
            if isinstance(value, dict) and vpath and isinstance(vpath[-1], str):
                for j, k in enumerate(wanted_keys[:-1]):
                    if k == vpath[-1]:
                        rest = wanted_keys[j + 1 :]
                        if all(_SAFE_KEY.match(r) for r in rest):
                            named.append(_yaml_candidate(file, key + "." + ".".join(rest), after))
    yield from exact
    yield from partial
    yield from named


def _leaves(node: Any, path: list[str | int]) -> Iterator[tuple[list[str | int], Any]]:
    """Every entry of a values tree (maps and lists too), keys that a path can name only."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and _SAFE_KEY.match(k):
                yield from _leaves(v, [*path, k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, [*path, i])


def _same(value: Any, rendered: Any) -> bool:
    if isinstance(value, bool) or isinstance(rendered, bool):
        return value is rendered
    if isinstance(value, (dict, list)):
        return bool(value) and value == rendered
    return value is not None and str(value) == str(rendered)


def _typed(new: Any, old: Any) -> Any:
    """`new` as the values file wrote the old value: a number stays a number."""
    if isinstance(old, bool) or not isinstance(new, str):
        return new
    if isinstance(old, int):
        try:
            return int(new)
        except ValueError:
            return new
    if isinstance(old, float):
        try:
            return float(new)
        except ValueError:
            return new
    return new


def _changed_part(rendered: str, after: str, part: str) -> str | None:
    """What `part` of `rendered` must become so that `rendered` becomes `after`."""
    start = rendered.find(part)
    while start >= 0:
        prefix, suffix = rendered[:start], rendered[start + len(part) :]
        if (
            after.startswith(prefix)
            and after.endswith(suffix)
            and len(after) >= len(prefix) + len(suffix)
        ):
            new = after[len(prefix) : len(after) - len(suffix)]
            if new and new != part:
                return new
        start = rendered.find(part, start + 1)
    return None


# -- reading renders -------------------------------------------------------------------


def _safe_load(text: str, what: str) -> Any:
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise SourceError(f"{what} is not valid YAML: {exc}") from exc


def _objects(text: str) -> list[Any]:
    try:
        docs = list(YAML(typ="safe", pure=True).load_all(text))
    except YAMLError as exc:
        raise SourceError(f"the render is not valid YAML: {exc}") from exc
    return [copy.deepcopy(d) for d in docs if d is not None]


def _find_workload(objs: list[Any], workload: Subject, layout: Layout) -> int | None:
    """The index of the workload in a render. An object without a namespace is in the
    release's namespace (Helm) or the one the pipeline deploys to (kustomize: any)."""
    for i, obj in enumerate(objs):
        if not isinstance(obj, dict) or obj.get("kind") != workload.kind:
            continue
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or layout.namespace or workload.namespace
        if meta.get("name") == workload.name and ns == workload.namespace:
            return i
    return None


def _dirs(root: Path) -> Iterator[Path]:
    """The directories of the repository a scan looks at: hidden ones and ones whose
    name starts with "-" (a tool would read it as an option) left out."""
    for p in sorted(root.rglob("*")):
        parts = p.relative_to(root).parts
        if p.is_dir() and not any(part.startswith((".", "-")) for part in parts):
            yield p
    yield root


def _short(value: Any, limit: int = 80) -> str:
    text = "(absent)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
