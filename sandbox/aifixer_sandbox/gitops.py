"""GitOps controllers for the sandbox: an Argo CD-like and a Flux-like one.

Teams that run GitOps let a controller keep the cluster equal to Git: with Argo CD's
automated sync and self-heal, or Flux's Kustomization, a change made to a live object
is put back to what Git says within seconds. These controllers do that to the sandbox
cluster, so the product's live fix can be seen reverted, and handled.

Both read Git the way the real ones do, over the forge's smart HTTP (`git ls-remote`,
`git fetch`, then the tree of the revision), render it with the real tools through the
product's renderer (`aifixer.adapters.render`: `kubectl kustomize`, `helm template`; a
directory of plain YAML as it is), and apply every object through the API server with
server-side apply, forced, as their field manager (`argocd-controller`,
`kustomize-controller`). Their own resources are custom resources served by the
Kubernetes stand-in (`kube/crds.py`), so `kubectl get applications -A` works.

Argo CD-like (`argoproj.io/v1alpha1` Application, in any namespace, typically
`argocd`): `spec.source` {repoURL, path, targetRevision, helm.releaseName,
helm.valueFiles}, `spec.destination.namespace`, `spec.syncPolicy.automated`
{selfHeal, prune}, `spec.syncPolicy.syncOptions` (CreateNamespace=true). With
`automated`, every new commit of the target revision is synced; with `selfHeal` too,
drift of a live object is reverted once it has lasted `self_heal_seconds` (simulated);
without `automated`, nothing is synced unless an `operation` {sync: {}} is set on the
Application (what `argocd app sync` does). Managed objects carry the tracking
annotation `argocd.argoproj.io/tracking-id: <app>:<group>/<kind>:<namespace>/<name>`
(Argo CD 3's default method), or the `app.kubernetes.io/instance` label with
`tracking="label"`, or both with `"annotation+label"`. Status as Argo CD writes it:
`sync.status` Synced/OutOfSync, `sync.revision`, `health.status`
(Healthy/Progressing/Degraded/Missing), `operationState` (phase, message, startedAt,
finishedAt, syncResult), `resources`, `reconciledAt`, `sourceType`.

Flux-like (`source.toolkit.fluxcd.io/v1` GitRepository {url, ref.branch, interval}
and `kustomize.toolkit.fluxcd.io/v1` Kustomization {sourceRef, path, interval, prune,
suspend, targetNamespace}): every `interval` (simulated) the source is fetched and the
path applied again (so drift is corrected at the next interval), objects labelled
`kustomize.toolkit.fluxcd.io/name` and `…/namespace`; `suspend: true` stops it; status
conditions Ready with `lastAppliedRevision` (`main@sha1:<sha>`) and an inventory.

Not modelled: sync waves and hooks, ignoreDifferences, multiple sources, projects
(`spec.project` is only shown), Flux's health checks, dependsOn, post-build
substitution, SOPS, OCI and Helm sources; the diff is "every field Git sets has Git's
value" (defaulted fields are never drift), not Argo CD's three-way diff.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from aifixer.adapters.render import Renderer
from aifixer.settings import Settings
from aifixer.sources import Layout

from .clock import Clock, rfc3339
from .forge_git import GitError, git
from .kube import errors
from .kube.crds import CRDS
from .kube.store import Obj, Store

log = logging.getLogger("aifixer_sandbox.gitops")

ARGO_NAMESPACE = "argocd"
FLUX_NAMESPACE = "flux-system"
TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
ARGO_MANAGER = "argocd-controller"
FLUX_MANAGER = "kustomize-controller"
_PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(
    group: str,
    version: str,
    kind: str,
    plural: str,
    short: list[str],
    columns: list[dict[str, Any]],
    status: bool,
    categories: list[str] | None = None,
) -> Obj:
    v: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": _PRESERVE},
        "additionalPrinterColumns": columns,
    }
    if status:
        v["subresources"] = {"status": {}}
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": kind + "List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": short,
    }
    if categories:
        names["categories"] = categories
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced", "names": names, "versions": [v]},
    }


_READY = '.status.conditions[?(@.type=="Ready")]'
_AGE = {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}
# The columns and names of the projects' own CRDs (Argo CD's Application has no status
# subresource: its controller writes the whole object).
APPLICATION_CRD = _crd(
    "argoproj.io",
    "v1alpha1",
    "Application",
    "applications",
    ["app", "apps"],
    [
        {"jsonPath": ".status.sync.status", "name": "Sync Status", "type": "string"},
        {"jsonPath": ".status.health.status", "name": "Health Status", "type": "string"},
        {"jsonPath": ".status.sync.revision", "name": "Revision", "priority": 10, "type": "string"},
        {"jsonPath": ".spec.project", "name": "Project", "priority": 10, "type": "string"},
    ],
    status=False,
)
GITREPOSITORY_CRD = _crd(
    "source.toolkit.fluxcd.io",
    "v1",
    "GitRepository",
    "gitrepositories",
    ["gitrepo"],
    [
        {"jsonPath": ".spec.url", "name": "URL", "type": "string"},
        _AGE,
        {"jsonPath": _READY + ".status", "name": "Ready", "type": "string"},
        {"jsonPath": _READY + ".message", "name": "Status", "type": "string"},
    ],
    status=True,
    categories=["fluxcd"],
)
KUSTOMIZATION_CRD = _crd(
    "kustomize.toolkit.fluxcd.io",
    "v1",
    "Kustomization",
    "kustomizations",
    ["ks"],
    [
        _AGE,
        {"jsonPath": _READY + ".status", "name": "Ready", "type": "string"},
        {"jsonPath": _READY + ".message", "name": "Status", "type": "string"},
    ],
    status=True,
    categories=["fluxcd"],
)
CRDS_ALL = (APPLICATION_CRD, GITREPOSITORY_CRD, KUSTOMIZATION_CRD)


def install_crds(store: Store) -> None:
    """Store the controllers' CRDs (as installing Argo CD and Flux does); idempotent."""
    for crd in CRDS_ALL:
        if store.try_get(CRDS, None, crd["metadata"]["name"]) is None:
            store.create(CRDS, crd)


def _res(store: Store, api_version: str, kind: str):
    res = store.custom.by_kind(api_version, kind)
    if res is None:
        raise errors.not_found("", kind.lower(), "")
    return res


# -- Git ------------------------------------------------------------------------------------


class GitSource:
    """Revisions of remote repositories, fetched over smart HTTP into a private cache."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks: dict[str, asyncio.Lock] = {}

    def _cache(self, url: str) -> Path:
        return self.root / re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-120:]

    async def resolve(self, url: str, ref: str) -> str:
        """The commit `ref` (a branch, tag, HEAD or a full sha) names in the remote."""
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            return ref
        names = ["HEAD"] if ref in ("", "HEAD") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        out = await git(self.root, "ls-remote", url, *names)
        for line in out.decode().splitlines():
            sha, name = line.split("\t", 1)
            if name in names:
                return sha
        raise GitError(("ls-remote", url, ref), 2, f"unable to resolve '{ref}'".encode())

    async def tree(self, url: str, sha: str) -> Path:
        """A directory holding the files of commit `sha` (kept while the cache lives)."""
        out = self.root / "trees" / sha
        if out.is_dir():
            return out
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            if out.is_dir():
                return out
            cache = self._cache(url)
            if not cache.is_dir():
                cache.mkdir(parents=True)
                await git(cache, "init", "--quiet", "--bare")
            await git(cache, "fetch", "--quiet", "--force", url, "+refs/heads/*:refs/heads/*")
            data = await git(cache, "archive", "--format=tar", sha)
            tmp = Path(tempfile.mkdtemp(dir=self.root))
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(tmp, filter="data")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(out)
        return out


def _documents(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]


def render_path(
    renderer: Renderer,
    root: Path,
    path: str,
    *,
    release: str = "",
    namespace: str = "",
    value_files: Iterable[str] = (),
    recurse: bool = False,
) -> tuple[str, list[Obj]]:
    """(source type, objects) of `path` in a checkout: a Helm chart, a kustomization or
    a directory of YAML files (Argo CD's Helm, Kustomize and Directory source types)."""
    rel = path.strip("/") or "."
    where = (root / rel).resolve()
    if root.resolve() not in (where, *where.parents) or not where.is_dir():
        raise ValueError(f"app path does not exist: {path}")
    if (where / "Chart.yaml").is_file():
        values = tuple(str(Path(rel) / v) for v in value_files)
        layout = Layout("helm", rel, values=values, release=release, namespace=namespace)
        return "Helm", _documents(renderer.render(root, layout))
    if any(
        (where / n).is_file() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
    ):
        return "Kustomize", _documents(renderer.render(root, Layout("kustomize", rel)))
    files = sorted(where.rglob("*") if recurse else where.iterdir())
    docs: list[Obj] = []
    for f in files:
        if f.is_file() and f.suffix in (".yaml", ".yml", ".json"):
            docs += _documents(f.read_text())
    return "Directory", docs


# -- comparing and applying -----------------------------------------------------------------


def covers(live: Any, desired: Any) -> bool:
    """Whether every field `desired` sets has that value in `live` (defaults are not drift)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(covers(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return live == desired
    return live == desired or (desired is None and live in (None, {}, []))


def _comparable(obj: Obj) -> Obj:
    """The part of a desired object a live one is compared on."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}


@dataclass
class Desired:
    """One object as Git renders it, ready to apply."""

    obj: Obj
    group: str
    kind: str
    namespace: str
    name: str
    resource: Any

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.group, self.kind, self.namespace, self.name)


class Applier:
    """Server-side apply and delete through the API server, as one field manager."""

    def __init__(self, store: Store, api_url: Callable[[], str], manager: str) -> None:
        self.store = store
        self.api_url = api_url
        self.manager = manager

    def _path(self, d: Desired) -> str:
        res = d.resource
        prefix = f"/apis/{res.group}/{res.version}" if res.group else "/api/v1"
        scope = f"/namespaces/{d.namespace}" if res.namespaced else ""
        return f"{prefix}{scope}/{res.plural}/{d.name}"

    async def apply(self, http: aiohttp.ClientSession, d: Desired) -> str:
        """Apply one object; returns "" or the API server's error message."""
        async with http.patch(
            self.api_url() + self._path(d),
            params={"fieldManager": self.manager, "force": "true"},
            data=json.dumps(d.obj),
            headers={"Content-Type": "application/apply-patch+yaml"},
        ) as resp:
            if resp.status < 300:
                return ""
            try:
                return (await resp.json()).get("message", "") or str(resp.status)
            except (aiohttp.ContentTypeError, ValueError):
                return f"{resp.status} {(await resp.text())[:300]}"

    async def delete(self, http: aiohttp.ClientSession, d: Desired) -> None:
        async with http.delete(self.api_url() + self._path(d)) as resp:
            await resp.read()


def _desired(store: Store, docs: list[Obj], namespace: str) -> tuple[list[Desired], list[str]]:
    """The rendered documents as Desired objects, and what could not be placed."""
    out, problems = [], []
    for doc in docs:
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if kind.endswith("List") and isinstance(doc.get("items"), list):
            more, bad = _desired(store, doc["items"], namespace)
            out += more
            problems += bad
            continue
        res = store.custom.by_kind(api_version, kind)
        meta = doc.setdefault("metadata", {})
        if res is None:
            problems.append(
                f"the server could not find the requested resource {api_version}/{kind}"
            )
            continue
        if not meta.get("name"):
            problems.append(f"{kind} without metadata.name")
            continue
        if res.namespaced:
            meta["namespace"] = meta.get("namespace") or namespace or "default"
        else:
            meta.pop("namespace", None)
        out.append(Desired(doc, res.group, kind, meta.get("namespace", ""), meta["name"], res))
    return out, problems


def _live(store: Store, d: Desired) -> Obj | None:
    return store.try_get(d.resource, d.namespace or None, d.name)


def deployment_health(dep: Obj) -> tuple[str, str]:
    """Argo CD's health of a Deployment: (status, message)."""
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    if spec.get("paused"):
        return "Suspended", "Deployment is paused"
    generation = (dep.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return (
            "Progressing",
            "Waiting for rollout to finish: observed deployment generation less than desired generation",
        )
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return (
                "Degraded",
                f'Deployment "{dep["metadata"]["name"]}" exceeded its progress deadline',
            )
    replicas = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < replicas:
        return (
            "Progressing",
            f"Waiting for rollout to finish: {updated} out of {replicas} new replicas have been updated...",
        )
    if status.get("replicas", 0) > updated:
        return (
            "Progressing",
            "Waiting for rollout to finish: old replicas are pending termination...",
        )
    if status.get("availableReplicas", 0) < updated:
        return (
            "Progressing",
            f"Waiting for rollout to finish: {status.get('availableReplicas', 0)} of {updated} updated replicas are available...",
        )
    return "Healthy", ""


_HEALTH_ORDER = ("Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown")


def health_of(live: Obj | None) -> tuple[str, str]:
    if live is None:
        return "Missing", ""
    if live.get("kind") == "Deployment":
        return deployment_health(live)
    return "Healthy", ""


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_HEALTH_ORDER.index, default="Healthy")


def parse_duration(text: Any, default: float) -> float:
    """Go's time.ParseDuration for the units Flux intervals use (`1m30s`, `10s`, `1h`)."""
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text or ""))
    if not parts:
        return default
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# -- the controllers --------------------------------------------------------------------------


@dataclass
class _AppState:
    revision: str = ""
    source_type: str = ""
    desired: list[Desired] = field(default_factory=list)
    error: str = ""
    drift_since: float | None = None
    checked_at: float = -1e9
    synced_revision: str = ""
    generation: int = 0
    key: tuple[str, str] = ("", "")  # the Application's namespace and name


def resource_result(d: Desired, status: str, message: str, **extra: str) -> dict[str, Any]:
    """One resource's line in a sync result, as Argo CD reports it."""
    return {
        "group": d.group,
        "version": d.resource.version,
        "kind": d.kind,
        "namespace": d.namespace,
        "name": d.name,
        "status": status,
        "message": message,
        **extra,
        "syncPhase": "Sync",
    }


class _Controller:
    """Common plumbing: a loop on the sandbox's event loop, Git, the renderer, the applier."""

    tick_seconds = 0.25  # wall seconds between looks at the store

    def __init__(
        self,
        store: Store,
        clock: Clock,
        api_url: Callable[[], str],
        workdir: Path,
        manager: str,
        renderer: Renderer | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.git = GitSource(Path(workdir))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.renderer = renderer or Renderer(Settings(_env_file=None))
        self.applier = Applier(store, api_url, manager)
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop after the reconcile under way (so no git or render is cut off mid-way)."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession()
        while not self._stopping:
            try:
                await self.reconcile_all()
            except Exception:  # noqa: BLE001 - a controller keeps running, as the real ones do
                log.exception("%s: reconcile failed", type(self).__name__)
            await asyncio.sleep(self.tick_seconds)

    async def reconcile_all(self) -> None:
        raise NotImplementedError

    async def _render(self, url: str, sha: str, path: str, **kwargs: Any) -> tuple[str, list[Obj]]:
        root = await self.git.tree(url, sha)
        return await asyncio.to_thread(render_path, self.renderer, root, path, **kwargs)

    async def _apply_all(self, desired: list[Desired]) -> list[dict[str, Any]]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        results = []
        for d in desired:
            message = await self.applier.apply(self._http, d)
            results.append(
                resource_result(
                    d,
                    "SyncFailed" if message else "Synced",
                    message or f"{d.kind.lower()}.{d.group or 'core'}/{d.name} serverside-applied",
                    hookPhase="Failed" if message else "Succeeded",
                )
            )
        return results

    def _managed(self, predicate: Callable[[Obj], bool]) -> list[Desired]:
        """Live objects carrying this controller's mark (for pruning)."""
        from .kube.resources import RESOURCES

        found = []
        resources = [
            r
            for r in RESOURCES
            if r.kind not in ("Event", "Pod", "ReplicaSet", "ControllerRevision")
        ]
        resources += [
            r
            for versions in self.store.custom.groups().values()
            for rs in versions.values()
            for r in rs
        ]
        seen = set()
        for res in resources:
            if res.key in seen:
                continue
            seen.add(res.key)
            for obj in self.store.list(res, None, predicate):
                meta = obj["metadata"]
                found.append(
                    Desired(obj, res.group, res.kind, meta.get("namespace", ""), meta["name"], res)
                )
        return found


class ArgoController(_Controller):
    """Reconciles `argoproj.io/v1alpha1` Applications (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        api_url: Callable[[], str],
        workdir: Path,
        *,
        self_heal_seconds: float = 3.0,
        poll_seconds: float = 3.0,
        tracking: str = "annotation",
        renderer: Renderer | None = None,
    ) -> None:
        super().__init__(store, clock, api_url, workdir, ARGO_MANAGER, renderer)
        if tracking not in ("annotation", "label", "annotation+label"):
            raise ValueError(f"unknown tracking method {tracking!r}")
        self.self_heal_seconds = self_heal_seconds
        self.poll_seconds = poll_seconds
        self.tracking = tracking
        self._apps: dict[tuple[str, str], _AppState] = {}
        self.resource = _res(store, "argoproj.io/v1alpha1", "Application")

    def _mark(self, app: str, d: Desired) -> None:
        meta = d.obj.setdefault("metadata", {})
        if "annotation" in self.tracking:
            tracking_id = f"{app}:{d.group}/{d.kind}:{d.namespace}/{d.name}"
            meta.setdefault("annotations", {})[TRACKING_ANNOTATION] = tracking_id
        if "label" in self.tracking:
            meta.setdefault("labels", {})[INSTANCE_LABEL] = app

    def _is_mine(self, app: str) -> Callable[[Obj], bool]:
        def check(obj: Obj) -> bool:
            meta = obj.get("metadata") or {}
            if self.tracking == "label":
                return (meta.get("labels") or {}).get(INSTANCE_LABEL) == app
            tid = (meta.get("annotations") or {}).get(TRACKING_ANNOTATION, "")
            return tid.startswith(app + ":")

        return check

    async def reconcile_all(self) -> None:
        apps = self.store.list(self.resource)
        keys = {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in apps}
        for key in list(self._apps):
            if key not in keys:
                del self._apps[key]
        for app in apps:
            await self.reconcile(app)

    async def reconcile(self, app: Obj) -> None:
        # Read again: an earlier Application's pass awaited, and its spec may have changed.
        latest = self.store.try_get(
            self.resource, app["metadata"]["namespace"], app["metadata"]["name"]
        )
        if latest is None:
            return
        app = latest
        meta, spec = app["metadata"], app.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        state = self._apps.setdefault(key, _AppState(key=key))
        source = spec.get("source") or {}
        dest_ns = (spec.get("destination") or {}).get("namespace") or ""
        policy = spec.get("syncPolicy") or {}
        automated = policy.get("automated")
        now = self.clock.sim()
        refresh = (meta.get("annotations") or {}).get("argocd.argoproj.io/refresh")
        if (
            now - state.checked_at >= self.poll_seconds
            or state.generation != meta.get("generation")
            or refresh
            or not state.revision
        ):
            state.checked_at, state.generation = now, meta.get("generation", 0)
            await self._refresh(meta["name"], state, source, dest_ns)
            # Decide on the Application as it is now, not as it was before Git was read.
            latest = self.store.try_get(self.resource, key[0], key[1])
            if latest is None:
                return
            app, meta = latest, latest["metadata"]
            policy = (app.get("spec") or {}).get("syncPolicy") or {}
            automated = policy.get("automated")
        live = [(d, _live(self.store, d)) for d in state.desired]
        out_of_sync = [d for d, obj in live if obj is None or not covers(obj, _comparable(d.obj))]
        wanted = {d.key for d in state.desired}
        extra = (
            [d for d in self._managed(self._is_mine(meta["name"])) if d.key not in wanted]
            if state.desired or state.revision
            else []
        )
        drifted = bool(out_of_sync or extra)
        operation = app.get("operation")
        result: dict[str, Any] | None = None
        if state.error:
            pass
        elif operation and isinstance(operation.get("sync"), dict):
            result = await self._sync(
                meta["name"], state, policy, extra, operation, automated=False
            )
        elif automated is not None and drifted:
            new_revision = state.revision != state.synced_revision
            if new_revision:
                result = await self._sync(meta["name"], state, policy, extra, None, automated=True)
            elif automated.get("selfHeal"):
                if state.drift_since is None:
                    state.drift_since = now
                elif now - state.drift_since >= self.self_heal_seconds:
                    result = await self._sync(
                        meta["name"], state, policy, extra, None, automated=True
                    )
        if not drifted:
            state.drift_since = None
            state.synced_revision = state.revision
        if result is not None:
            state.drift_since = None
            live = [(d, _live(self.store, d)) for d in state.desired]
            out_of_sync = [
                d for d, obj in live if obj is None or not covers(obj, _comparable(d.obj))
            ]
            extra = [d for d in self._managed(self._is_mine(meta["name"])) if d.key not in wanted]
        self._write_status(key, state, live, out_of_sync, extra, result, source, dest_ns)

    async def _refresh(self, name: str, state: _AppState, source: Obj, dest_ns: str) -> None:
        url, path = source.get("repoURL", ""), source.get("path", "")
        try:
            state.revision = await self.git.resolve(url, source.get("targetRevision") or "HEAD")
            helm = source.get("helm") or {}
            state.source_type, docs = await self._render(
                url,
                state.revision,
                path,
                release=helm.get("releaseName") or name,
                namespace=dest_ns or "default",
                value_files=helm.get("valueFiles") or (),
                recurse=bool((source.get("directory") or {}).get("recurse")),
            )
            desired, problems = _desired(self.store, docs, dest_ns)
            for d in desired:
                self._mark(name, d)
            state.desired, state.error = desired, "; ".join(problems)
        except (GitError, ValueError, OSError) as exc:
            state.error = f"rpc error: code = Unknown desc = {exc}"
        except Exception as exc:  # noqa: BLE001 - a render failure is the app's condition
            state.error = f"Manifest generation error (cached): {exc}"

    async def _sync(
        self,
        name: str,
        state: _AppState,
        policy: Obj,
        extra: list[Desired],
        operation: Obj | None,
        *,
        automated: bool,
    ) -> dict[str, Any]:
        try:
            return await self._sync_once(name, state, policy, extra, operation, automated=automated)
        except BaseException as exc:
            # Cut short (an error, the world stopping): ended as an error, never left
            # Running for whoever waits on it.
            self._set_operation(state.key, {"phase": "Error", "message": str(exc)[:500],
                                            "finishedAt": rfc3339(self.clock.now())})  # fmt: skip
            raise

    async def _sync_once(
        self,
        name: str,
        state: _AppState,
        policy: Obj,
        extra: list[Desired],
        operation: Obj | None,
        *,
        automated: bool,
    ) -> dict[str, Any]:
        started = rfc3339(self.clock.now())
        operation_spec = {
            "sync": {"revision": state.revision},
            "initiatedBy": {"automated": True} if automated else {"username": "admin"},
        }
        # The operation is Running from its decision to its end, as Argo CD records it:
        # written before the first await, so whoever turns self-heal off after this line
        # can see that a sync already decided is still applying Git's version.
        self._set_operation(state.key, {"operation": operation_spec, "phase": "Running",
                                   "message": "one or more tasks are running",
                                   "startedAt": started})  # fmt: skip
        options = policy.get("syncOptions") or []
        if "CreateNamespace=true" in options:
            from .kube.resources import core

            for ns in {d.namespace for d in state.desired if d.namespace}:
                if self.store.try_get(core("namespaces"), None, ns) is None:
                    self.store.create(core("namespaces"), {"metadata": {"name": ns}})
        results = await self._apply_all(state.desired)
        prune = bool((policy.get("automated") or {}).get("prune")) or bool(
            ((operation or {}).get("sync") or {}).get("prune")
        )
        if prune and self._http is not None:
            for d in extra:
                await self.applier.delete(self._http, d)
                results.append(resource_result(d, "Pruned", "pruned"))
        failed = [r for r in results if r["status"] == "SyncFailed"]
        state.synced_revision = state.revision
        return {
            "operation": {
                "sync": {"revision": state.revision, **({"prune": True} if prune else {})},
                "initiatedBy": {"automated": True} if automated else {"username": "admin"},
                "retry": {},
            },
            "phase": "Failed" if failed else "Succeeded",
            "message": (
                "one or more objects failed to apply, reason: " + failed[0]["message"]
                if failed
                else "successfully synced (all tasks run)"
            ),
            "startedAt": started,
            "finishedAt": rfc3339(self.clock.now()),
            "syncResult": {
                "revision": state.revision,
                "resources": results,
                "source": {},
            },
        }

    def _set_operation(self, key: tuple[str, str], operation_state: dict[str, Any]) -> None:
        current = self.store.try_get(self.resource, key[0], key[1])
        if current is None:
            return
        status = {**(current.get("status") or {}), "operationState": operation_state}
        try:
            self.store.update(self.resource, {**current, "status": status})
        except errors.ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _write_status(
        self,
        key: tuple[str, str],
        state: _AppState,
        live: list[tuple[Desired, Obj | None]],
        out_of_sync: list[Desired],
        extra: list[Desired],
        result: dict[str, Any] | None,
        source: Obj,
        dest_ns: str,
    ) -> None:
        current = self.store.try_get(self.resource, key[0], key[1])
        if current is None:
            return
        stale = {d.key for d in out_of_sync}
        resources = []
        healths = []
        for d, obj in live:
            health, message = health_of(obj)
            healths.append(health)
            entry: dict[str, Any] = {
                "group": d.group,
                "version": d.resource.version,
                "kind": d.kind,
                "namespace": d.namespace,
                "name": d.name,
                "status": "OutOfSync" if d.key in stale else "Synced",
                "health": {"status": health, **({"message": message} if message else {})},
            }
            if not d.group:
                entry.pop("group")
            resources.append(entry)
        for d in extra:
            resources.append(
                {
                    "group": d.group,
                    "version": d.resource.version,
                    "kind": d.kind,
                    "namespace": d.namespace,
                    "name": d.name,
                    "status": "OutOfSync",
                    "requiresPruning": True,
                }  # fmt: skip
            )
        status = dict(current.get("status") or {})
        synced = not (out_of_sync or extra) and not state.error
        status["sync"] = {
            "status": "Synced" if synced else "OutOfSync",
            "revision": state.revision,
            "comparedTo": {
                "source": source,
                "destination": (current.get("spec") or {}).get("destination") or {},
            },
        }
        status["health"] = {"status": _worst(healths) if not state.error else "Unknown"}
        status["resources"] = resources
        status["sourceType"] = state.source_type or status.get("sourceType", "")
        status["summary"] = {
            "images": sorted(
                {
                    c.get("image", "")
                    for d, _ in live
                    for c in (
                        ((d.obj.get("spec") or {}).get("template") or {}).get("spec") or {}
                    ).get("containers")
                    or []
                }
            )
        }
        status["conditions"] = (
            [
                {
                    "type": "ComparisonError",
                    "message": state.error,
                    "lastTransitionTime": rfc3339(self.clock.now()),
                }
            ]
            if state.error
            else []
        )
        if result is not None:
            status["operationState"] = result
            history = list(status.get("history") or [])
            history.append(
                {
                    "id": len(history),
                    "revision": state.revision,
                    "deployedAt": result["finishedAt"],
                    "deployStartedAt": result["startedAt"],
                    "source": source,
                }
            )
            status["history"] = history[-10:]
        status["reconciledAt"] = rfc3339(self.clock.now())
        new = {**current, "status": status}
        if result is not None and "operation" in new:
            new = {k: v for k, v in new.items() if k != "operation"}
        meta = dict(new["metadata"])
        annotations = dict(meta.get("annotations") or {})
        if annotations.pop("argocd.argoproj.io/refresh", None) is not None:
            meta["annotations"] = annotations
            new["metadata"] = meta
        old_status = {k: v for k, v in (current.get("status") or {}).items() if k != "reconciledAt"}
        if (
            result is None
            and old_status == {k: v for k, v in status.items() if k != "reconciledAt"}
            and new.get("metadata") == current.get("metadata")
        ):
            return  # nothing to say: no write (as the real controller skips empty patches)
        try:
            self.store.update(self.resource, new)
        except errors.ApiError as exc:
            if exc.code not in (404, 409):
                raise


class FluxController(_Controller):
    """Reconciles Flux-like GitRepositories and Kustomizations (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        api_url: Callable[[], str],
        workdir: Path,
        *,
        renderer: Renderer | None = None,
    ) -> None:
        super().__init__(store, clock, api_url, workdir, FLUX_MANAGER, renderer)
        self.repos = _res(store, "source.toolkit.fluxcd.io/v1", "GitRepository")
        self.kustomizations = _res(store, "kustomize.toolkit.fluxcd.io/v1", "Kustomization")
        self._due: dict[tuple[str, str, str], float] = {}
        self._tokens: dict[tuple[str, str, str], str] = {}
        self._applied: dict[tuple[str, str], str] = {}

    def _is_due(self, kind: str, obj: Obj, interval: float) -> bool:
        """Every `interval` (simulated), or at once when the spec or a reconcile request changed."""
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        requested = (meta.get("annotations") or {}).get("reconcile.fluxcd.io/requestedAt", "")
        token = f"{meta.get('generation')}|{requested}"
        now = self.clock.sim()
        if now < self._due.get(key, -1.0) and self._tokens.get(key) == token:
            return False
        self._due[key], self._tokens[key] = now + interval, token
        return True

    async def reconcile_all(self) -> None:
        for repo in self.store.list(self.repos):
            spec = repo.get("spec") or {}
            if spec.get("suspend") or not self._is_due(
                "GitRepository", repo, parse_duration(spec.get("interval"), 60)
            ):
                continue
            await self._reconcile_repo(repo)
        for listed in self.store.list(self.kustomizations):
            # Read again: an earlier pass awaited, and a suspension may have landed since.
            ks = self.store.try_get(
                self.kustomizations, listed["metadata"]["namespace"], listed["metadata"]["name"]
            )
            spec = (ks or {}).get("spec") or {}
            if ks is None or spec.get("suspend"):
                continue
            source = self._source(ks)
            revision = ((source or {}).get("status") or {}).get("artifact", {}).get("revision", "")
            key = (ks["metadata"]["namespace"], ks["metadata"]["name"])
            moved = revision and self._applied.get(key) != revision
            if moved or self._is_due(
                "Kustomization", ks, parse_duration(spec.get("interval"), 600)
            ):
                try:
                    await self._reconcile_kustomization(ks, source)
                except BaseException as exc:
                    # A pass cut short (an error, the world stopping) ends as failed,
                    # never left `Reconciling` for whoever waits on it.
                    self._set_status(
                        self.kustomizations, ks,
                        {"conditions": [self._ready(ks, False, "ReconciliationFailed",
                                                    f"{type(exc).__name__}: {exc}"[:500])]},
                    )  # fmt: skip
                    raise

    def _source(self, ks: Obj) -> Obj | None:
        ref = (ks.get("spec") or {}).get("sourceRef") or {}
        ns = ref.get("namespace") or ks["metadata"]["namespace"]
        return self.store.try_get(self.repos, ns, ref.get("name", ""))

    def _set_status(self, res: Any, obj: Obj, status: Obj) -> None:
        current = self.store.try_get(res, obj["metadata"]["namespace"], obj["metadata"]["name"])
        if current is None:
            return
        old = current.get("status") or {}
        conditions = status.get("conditions") or []
        for c in conditions:  # a condition keeps its transition time while its status holds
            prev = next(
                (p for p in old.get("conditions") or [] if p.get("type") == c["type"]), None
            )
            if prev and prev.get("status") == c["status"]:
                c["lastTransitionTime"] = prev.get("lastTransitionTime", c["lastTransitionTime"])
        merged = {**old, **status}
        if merged == old:
            return
        try:
            self.store.update(res, {**current, "status": merged}, subresource="status")
        except errors.ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _ready(self, obj: Obj, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": "Ready",
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "observedGeneration": obj["metadata"].get("generation", 1),
            "lastTransitionTime": rfc3339(self.clock.now()),
        }

    async def _reconcile_repo(self, repo: Obj) -> None:
        spec = repo.get("spec") or {}
        ref = spec.get("ref") or {}
        name = ref.get("branch") or ref.get("tag") or ref.get("commit") or "master"
        try:
            sha = await self.git.resolve(spec.get("url", ""), name)
            await self.git.tree(spec.get("url", ""), sha)
        except (GitError, OSError) as exc:
            self._set_status(
                self.repos, repo,
                {"conditions": [self._ready(repo, False, "GitOperationFailed", str(exc)[:500])],
                 "observedGeneration": repo["metadata"].get("generation", 1)},
            )  # fmt: skip
            return
        revision = f"{name}@sha1:{sha}"
        self._set_status(
            self.repos,
            repo,
            {
                "artifact": {
                    "revision": revision,
                    "path": f"gitrepository/{repo['metadata']['namespace']}/{repo['metadata']['name']}/{sha}.tar.gz",
                    "lastUpdateTime": rfc3339(self.clock.now()),
                },
                "conditions": [
                    self._ready(
                        repo, True, "Succeeded", f"stored artifact for revision '{revision}'"
                    )
                ],
                "observedGeneration": repo["metadata"].get("generation", 1),
            },
        )

    async def _reconcile_kustomization(self, ks: Obj, source: Obj | None) -> None:
        meta, spec = ks["metadata"], ks.get("spec") or {}
        artifact = ((source or {}).get("status") or {}).get("artifact") or {}
        revision = artifact.get("revision", "")
        if source is None or not revision:
            ref = spec.get("sourceRef") or {}
            self._set_status(
                self.kustomizations, ks,
                {"conditions": [self._ready(ks, False, "ArtifactFailed",
                 f"Source artifact not found, retrying in 30s ({ref.get('kind')}/{ref.get('name')})")]},
            )  # fmt: skip
            return
        # As kustomize-controller does before any work: `Reconciling` True for as long as
        # this pass runs (its end writes the conditions without it). Set before the first
        # await, so a suspension written after this line can still see a pass in flight.
        self._set_status(
            self.kustomizations, ks,
            {"conditions": [*_other_conditions(ks, "Reconciling"), {
                "type": "Reconciling", "status": "True", "reason": "Progressing",
                "message": f"Fetching manifests for revision {revision}",
                "observedGeneration": meta.get("generation", 1),
                "lastTransitionTime": rfc3339(self.clock.now())}]},
        )  # fmt: skip
        url = (source.get("spec") or {}).get("url", "")
        sha = revision.rsplit(":", 1)[-1]
        try:
            _, docs = await self._render(url, sha, spec.get("path") or "./", recurse=True)
        except Exception as exc:  # noqa: BLE001 - a build failure is the Kustomization's condition
            self._set_status(
                self.kustomizations, ks,
                {"lastAttemptedRevision": revision,
                 "conditions": [self._ready(ks, False, "BuildFailed", str(exc)[:500])]},
            )  # fmt: skip
            return
        target = spec.get("targetNamespace") or ""
        desired, problems = _desired(self.store, docs, target or meta["namespace"])
        for d in desired:
            if target and d.resource.namespaced:
                d.obj["metadata"]["namespace"] = d.namespace = target
            labels = d.obj["metadata"].setdefault("labels", {})
            labels[FLUX_NAME_LABEL], labels[FLUX_NAMESPACE_LABEL] = meta["name"], meta["namespace"]
        results = await self._apply_all(desired)
        failed = [r["message"] for r in results if r["status"] == "SyncFailed"] + problems
        if spec.get("prune") and not failed and self._http is not None:
            wanted = {d.key for d in desired}
            mine = self._managed(
                lambda o: (
                    (o["metadata"].get("labels") or {}).get(FLUX_NAME_LABEL) == meta["name"]
                    and (o["metadata"].get("labels") or {}).get(FLUX_NAMESPACE_LABEL)
                    == meta["namespace"]
                )
            )
            for d in mine:
                if d.key not in wanted:
                    await self.applier.delete(self._http, d)
        self._applied[(meta["namespace"], meta["name"])] = revision
        if failed:
            ready = self._ready(ks, False, "ReconciliationFailed", failed[0][:500])
            status: dict[str, Any] = {"lastAttemptedRevision": revision, "conditions": [ready]}
        else:
            ready = self._ready(
                ks, True, "ReconciliationSucceeded", f"Applied revision: {revision}"
            )
            status = {
                "lastAppliedRevision": revision,
                "lastAttemptedRevision": revision,
                "conditions": [ready],
                "inventory": {
                    "entries": [
                        {
                            "id": f"{d.namespace}_{d.name}_{d.group}_{d.kind}",
                            "v": d.resource.version,
                        }
                        for d in desired
                    ]
                },
            }
        status["observedGeneration"] = meta.get("generation", 1)
        self._set_status(self.kustomizations, ks, status)


def _other_conditions(obj: Obj, kind: str) -> list[dict[str, Any]]:
    """The object's current status conditions, but the one of type `kind`."""
    current = (obj.get("status") or {}).get("conditions") or []
    return [c for c in current if c.get("type") != kind]
