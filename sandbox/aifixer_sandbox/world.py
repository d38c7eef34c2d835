"""The whole stand-in world on one event loop: cluster, Loki, forge and phone.

`World` starts every stand-in on its own loopback port, loads a scenario the way a
team would have set up their cluster — the healthy manifests applied through the API
server (server-side apply, so defaulting and validation run exactly as for any
client) and committed to the GitOps repository, then, once the workloads are healthy,
the bad `change` applied and committed too — scripts the on-call people, and writes
the files a user points aifixer at: a kubeconfig and `endpoints.json`.

It runs either in the foreground (`aifixer sandbox up`) or on a background thread
(tests, the demo); product code only ever sees the URLs.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from aifixer.cliparams import UserError

from . import forge as forge_mod
from . import gitops as gitops_mod
from . import hpa as hpa_mod
from . import loki as loki_mod
from . import metrics as metrics_mod
from . import phone as phone_mod
from . import registry as registry_mod
from .clock import Clock
from .kube import server as kube_server
from .kube.cluster import Cluster
from .kube.resources import by_kind
from .kube.selectors import match_label_selector
from .scenario import ManifestFile, Scenario
from .serve import LoopThread, Site, start_site, stop_site

log = logging.getLogger("aifixer_sandbox")

APPLY_MANAGER = "kubectl"  # the team applied their manifests with kubectl --server-side


class WorldError(UserError, RuntimeError):
    pass


# Marks a state directory as the sandbox's own: only such a directory is ever cleared.
# A running world holds an exclusive lock on it (released when its process ends, however
# it ends), and writes its process id in it.
STATE_MARKER = ".aifixer-sandbox"


class StateDir:
    """A world's state directory, claimed for one running world.

    `claim` creates it (or takes over one the sandbox created before, recognised by
    its marker file), refuses while another world runs in it, and empties it unless
    `reuse` is asked for; `release` lets the next world in.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.marker = self.path / STATE_MARKER
        self._fd: int | None = None

    def claim(self, *, reuse: bool = False) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise WorldError(f"state directory {self.path} is a file: choose another --state-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker.exists() and any(self.path.iterdir()):
            raise WorldError(
                f"{self.path} holds files the sandbox did not create (no {STATE_MARKER} "
                "in it): empty it or choose another --state-dir"
            )
        fd = os.open(self.marker, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorldError(
                f"a sandbox is already running in {self.path} (pid {pid}): stop it with "
                "Ctrl-C, or start another one with --state-dir DIR"
            ) from None
        try:
            if not reuse:
                self._clear()
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _clear(self) -> None:
        """Remove everything but the marker (symbolic links are removed, not followed)."""
        for entry in self.path.iterdir():
            if entry.name == STATE_MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def running_pid(state_dir: Path) -> int | None:
    """The process id of the world running in `state_dir`, or None if none runs there."""
    try:
        fd = os.open(Path(state_dir) / STATE_MARKER, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass
class Endpoints:
    """Everything a client needs to talk to the world. Written to endpoints.json."""

    kubernetes: str
    kubeconfig: str
    loki: str
    github_api: str
    git_base: str
    gitops_repo: str
    gitops_clone_url: str
    github_token: str
    twilio_base: str
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_from: str
    oncall_numbers: list[str]
    state_dir: str
    metrics: str = ""  # the kubelet's /metrics/cadvisor and kube-state-metrics' /metrics
    registry: str = ""  # the container registry serving the image catalog (/v2/)
    loki_tenant: str = ""  # the X-Scope-OrgID Loki requires ("": single tenant, none)


class World:
    def __init__(
        self,
        scenario: Scenario | None,
        state_dir: Path,
        *,
        speed: float = 1.0,
        ports: dict[str, int] | None = None,
        reuse: bool = False,
        shared: World | None = None,
        loki_tenant: str | None = None,
    ) -> None:
        """`shared`: another world whose forge, phone and registry this one uses (its own
        API server, Loki and metrics: one more cluster of the same team), started first
        and stopped after it. `loki_tenant`: Loki requires that X-Scope-OrgID."""
        self.shared = shared
        self.loki_tenant = loki_tenant
        self.scenario = scenario
        self.state_dir = Path(state_dir)
        self.reuse = reuse
        self._state = StateDir(self.state_dir)
        self.clock = Clock(speed)
        self.ports = ports or {}
        self.github_token = "ghs_" + secrets.token_hex(18)
        self.twilio_sid = "AC" + secrets.token_hex(16)
        self.twilio_token = secrets.token_hex(16)
        self.twilio_from = "+15005550006"
        self.logs = loki_mod.LogStore()
        self.cluster = Cluster(self.clock, self._image, self.logs.push)
        self.metrics = metrics_mod.Metrics(self.cluster.store, self.clock, self._image)
        self.hpa = hpa_mod.HpaController(
            self.cluster.store, self.clock, self.cluster.recorder, self.metrics
        )
        if shared is not None:
            self.github_token, self.twilio_sid = shared.github_token, shared.twilio_sid
            self.twilio_token, self.twilio_from = shared.twilio_token, shared.twilio_from
            self.forge, self.phone, self.registry = shared.forge, shared.phone, shared.registry
        else:
            self.forge = forge_mod.Forge(self.state_dir / "git", self.github_token)
            self.phone = phone_mod.Phone(
                self.state_dir / "calls", {self.twilio_sid: self.twilio_token}, self.clock
            )
            spec = scenario.registry if scenario is not None else None
            self.registry = registry_mod.RegistryStore.of(
                scenario.images if scenario is not None else [],
                **({"host": spec.host, "auth": spec.auth} if spec is not None else {}),
            )
        self.sites: dict[str, Site] = {}
        self._shared_sites: dict[str, Site] = {}
        self.endpoints: Endpoints | None = None
        self.gitops: list[gitops_mod.ArgoController | gitops_mod.FluxController] = []
        self._thread: LoopThread | None = None

    def _image(self, ref: str):
        return self.scenario.image(ref) if self.scenario else None

    # -- lifecycle on the running loop --------------------------------------------

    async def astart(self) -> Endpoints:
        """Claim the state directory (emptied unless `reuse`) and start every stand-in.

        Raises:
            WorldError: the directory holds files the sandbox did not create, or
                another world is running in it.
        """
        self._state.claim(reuse=self.reuse)
        self.cluster.start()
        if self.scenario is not None:
            self.cluster.register_nodes(self.scenario.nodes)
        apps = {
            "kubernetes": kube_server.make_app(self.cluster.store, self.cluster.logs),
            "loki": loki_mod.make_app(self.logs, self.loki_tenant),
            "metrics": metrics_mod.make_app(self.metrics),
        }
        if self.shared is None:
            apps["forge"] = forge_mod.make_app(self.forge, lambda: self.sites["forge"].url)
            apps["twilio"] = phone_mod.make_app(self.phone)
            apps["registry"] = registry_mod.make_app(
                self.registry, lambda: self.sites["registry"].url
            )
            apps["forge"].router.add_get("/sandbox/prs", self._prs_view)
        self.metrics.start()
        self.hpa.start()
        for name, app in apps.items():
            self.sites[name] = await start_site(Site(name, app, self.ports.get(name, 0)))
        if self.shared is not None:
            self._shared_sites = {n: self.shared.sites[n] for n in ("forge", "twilio", "registry")}
        self.endpoints = self._write_endpoints()
        log.info(
            "sandbox up: kubernetes %s, loki %s, forge %s, twilio %s",
            self.sites["kubernetes"].url,
            self.sites["loki"].url,
            self.endpoints.git_base,
            self.endpoints.twilio_base,
        )
        return self.endpoints

    async def _prs_view(self, request: web.Request) -> web.Response:
        """Every pull request with its diff, for `aifixer sandbox prs`."""
        return web.json_response(await self.forge.prs())

    async def start_gitops(
        self, controller: str, **options: Any
    ) -> gitops_mod.ArgoController | gitops_mod.FluxController:
        """Install the GitOps controllers' CRDs and start one: "argocd" (an Argo CD-like
        controller of Applications) or "flux" (Flux-like GitRepositories and
        Kustomizations). `options` go to the controller (self_heal_seconds, …)."""
        if controller not in ("argocd", "flux"):
            raise WorldError(f"unknown GitOps controller {controller!r}: argocd or flux")
        gitops_mod.install_crds(self.cluster.store)
        workdir = self.state_dir / "gitops" / controller
        kube_url = lambda: self.sites["kubernetes"].url  # noqa: E731
        c: gitops_mod.ArgoController | gitops_mod.FluxController
        if controller == "argocd":
            self.cluster.ensure_namespace(gitops_mod.ARGO_NAMESPACE)
            c = gitops_mod.ArgoController(
                self.cluster.store, self.clock, kube_url, workdir, **options
            )
        else:
            self.cluster.ensure_namespace(gitops_mod.FLUX_NAMESPACE)
            c = gitops_mod.FluxController(
                self.cluster.store, self.clock, kube_url, workdir, **options
            )
        c.start()
        self.gitops.append(c)
        return c

    async def astop(self) -> None:
        try:
            for controller in self.gitops:
                await controller.stop()
            await self.hpa.stop()
            await self.metrics.stop()
            if self.shared is None:
                await self.phone.close()
            for site in self.sites.values():
                await stop_site(site)
            await self.cluster.stop()
        finally:
            self._state.release()

    async def aload(self, *, apply_change: bool = True, healthy_timeout: float = 60.0) -> None:
        """Set the scenario's world up: healthy start, then (optionally) the bad change."""
        sc = self.scenario
        if sc is None:
            return
        for number in sc.oncall.numbers:
            self.phone.set_person(number, sc.oncall.answers.get(number, "no-answer"))
        for number, answer in sc.oncall.answers.items():
            if number not in sc.oncall.numbers:
                self.phone.set_person(number, answer)
        owner, name = sc.gitops.repo.split("/", 1)
        manifests, message = _files(sc.manifests), f"Add {sc.name} manifests"
        if self.reuse:  # the repository of the previous world, if there was one
            await self.forge.open_repo(owner, name, manifests, message)
        else:
            await self.forge.create_repo(owner, name, manifests, message)
        if sc.gitops.controller:
            await self._sync_from_git(sc)
        else:
            await self.apply(sc.manifests)
        if sc.change:
            # A scenario with a change starts healthy and is broken by it; one without
            # a change is broken from its first deployment (there is no good revision).
            # A chart's workloads are not in the files: the ones expected to fail are named.
            every = dict.fromkeys([*_deployments(sc.manifests), *sc.failing_workloads()])
            await self.wait_healthy(list(every), healthy_timeout)
            if apply_change:
                await self.apply_change()
        else:
            # Born broken: its healthy neighbours run before anyone looks at it.
            failing = sc.failing_workloads()
            await self.wait_healthy(
                [d for d in _deployments(sc.manifests) if d not in failing], healthy_timeout
            )

    async def apply_change(self) -> None:
        sc = self.scenario
        if sc is None:
            raise WorldError("no scenario loaded")
        owner, name = sc.gitops.repo.split("/", 1)
        await self.forge.commit(
            owner, name, _files(sc.change), f"Update {', '.join(m.path for m in sc.change)}"
        )
        if not sc.gitops.controller:  # else the controller rolls the commit out
            await self.apply(sc.change)

    async def _sync_from_git(self, sc: Scenario) -> None:
        """Start the scenario's GitOps controller and hand it the repository's path: an
        Application (argocd) or a GitRepository and a Kustomization (flux)."""
        g = sc.gitops
        store = self.cluster.store
        url = f"{self.sites['forge'].url}/{g.repo}.git"
        path = g.sync_path(sc.manifests)
        namespaces = [
            (d.get("metadata") or {}).get("namespace") or "default"
            for mf in sc.manifests
            for d in mf.documents()
        ]
        namespaces = namespaces or [ns for ns, _ in sc.failing_workloads()]  # a chart's
        for ns in namespaces:
            self.cluster.ensure_namespace(ns)
        if g.controller == "argocd":
            await self.start_gitops("argocd", self_heal_seconds=g.self_heal_seconds)
            res = store.custom.by_kind("argoproj.io/v1alpha1", "Application")
            store.create(
                res,
                {
                    "metadata": {"name": sc.name, "namespace": gitops_mod.ARGO_NAMESPACE},
                    "spec": {
                        "project": "default",
                        "source": {"repoURL": url, "path": path, "targetRevision": "main"},
                        "destination": {
                            "server": "https://kubernetes.default.svc",
                            "namespace": namespaces[0] if namespaces else "default",
                        },
                        "syncPolicy": {
                            "automated": {"selfHeal": g.self_heal, "prune": g.prune},
                            "syncOptions": ["CreateNamespace=true"],
                        },
                    },
                },
            )
        else:
            await self.start_gitops("flux")
            ns, interval = gitops_mod.FLUX_NAMESPACE, f"{g.interval_seconds:g}s"
            store.create(
                store.custom.by_kind("source.toolkit.fluxcd.io/v1", "GitRepository"),
                {
                    "metadata": {"name": sc.name, "namespace": ns},
                    "spec": {"url": url, "ref": {"branch": "main"}, "interval": interval},
                },
            )
            store.create(
                store.custom.by_kind("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
                {
                    "metadata": {"name": sc.name, "namespace": ns},
                    "spec": {
                        "interval": interval,
                        "path": f"./{path}",
                        "prune": g.prune,
                        "sourceRef": {"kind": "GitRepository", "name": sc.name},
                    },
                },
            )

    async def apply(self, files: list[ManifestFile]) -> None:
        """Server-side apply every document over HTTP, as `kubectl apply --server-side` would."""
        base = self.sites["kubernetes"].url
        async with aiohttp.ClientSession() as http:
            for mf in files:
                for doc in mf.documents():
                    res = by_kind(doc["apiVersion"], doc["kind"])
                    if res is None:
                        raise WorldError(
                            f"{mf.path}: the sandbox does not serve {doc['apiVersion']} {doc['kind']}"
                        )
                    meta = doc.setdefault("metadata", {})
                    ns = meta.setdefault("namespace", "default") if res.namespaced else None
                    if ns:
                        self.cluster.ensure_namespace(ns)
                    prefix = f"/apis/{res.group}/{res.version}" if res.group else "/api/v1"
                    path = (
                        f"{prefix}/namespaces/{ns}/{res.plural}/{meta['name']}"
                        if ns
                        else f"{prefix}/{res.plural}/{meta['name']}"
                    )
                    async with http.patch(
                        base + path,
                        params={"fieldManager": APPLY_MANAGER, "force": "true"},
                        data=json.dumps(doc),
                        headers={"Content-Type": "application/apply-patch+yaml"},
                    ) as resp:
                        if resp.status >= 300:
                            body = await resp.text()
                            raise WorldError(
                                f"{mf.path}: applying {doc['kind']} {meta['name']} failed: "
                                f"{resp.status} {body[:500]}"
                            )

    async def wait_healthy(self, deployments: list[tuple[str, str]], timeout: float) -> None:
        """Wait (wall seconds) until every Deployment has rolled out completely."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = list(deployments)
        while pending:
            pending = [d for d in pending if not self.rolled_out(*d)]
            if not pending:
                return
            if loop.time() > deadline:
                raise WorldError(
                    "the scenario's starting state never became healthy: "
                    + ", ".join(f"{ns}/{n}" for ns, n in pending)
                )
            await asyncio.sleep(0.05)

    def workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment, StatefulSet or DaemonSet of that name (in that order)."""
        for kind in WORKLOAD_KINDS:
            obj = self.cluster.store.try_get(by_kind("apps/v1", kind), namespace, name)
            if obj is not None:
                return obj
        return None

    def rolled_out(self, namespace: str, name: str) -> bool:
        """`kubectl rollout status`'s success condition, by the workload's kind."""
        dep = self.workload(namespace, name)
        if dep is None:
            return False
        st = dep.get("status") or {}
        if dep["kind"] != "Deployment" and dep["metadata"].get("generation", 0) > st.get(
            "observedGeneration", -1
        ):
            return False
        if dep["kind"] == "StatefulSet":
            partition = ((dep["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}).get(
                "partition"
            ) or 0
            replicas = dep["spec"].get("replicas", 1)
            return (
                st.get("readyReplicas", 0) >= replicas
                and st.get("updatedReplicas", 0) >= replicas - partition
            )
        if dep["kind"] == "DaemonSet":
            desired = st.get("desiredNumberScheduled", 0)
            return (
                st.get("updatedNumberScheduled", 0) >= desired
                and st.get("numberAvailable", 0) >= desired
            )
        replicas = dep["spec"].get("replicas", 1)
        return (
            dep["metadata"].get("generation", 0) <= st.get("observedGeneration", -1)
            and st.get("updatedReplicas", 0) >= replicas
            and st.get("replicas", 0) <= st.get("updatedReplicas", 0)
            and st.get("availableReplicas", 0) >= st.get("updatedReplicas", 0)
        )

    def pod_labels(self, namespace: str, deployment: str, key: str) -> dict[str, str | None]:
        """The value of label `key` on each pod of a Deployment (None: not set)."""
        store = self.cluster.store
        dep = self.workload(namespace, deployment)
        if dep is None:
            return {}
        selector = dep["spec"].get("selector") or {}
        return {
            p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(key)
            for p in store.list(by_kind("v1", "Pod"), namespace)
            if match_label_selector(selector, p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
        }

    def symptoms(self, namespace: str, deployment: str) -> dict[str, Any]:
        """What is wrong with a Deployment's pods right now: reasons and Warning events."""
        store = self.cluster.store
        dep = self.workload(namespace, deployment)
        if dep is None:
            return {"reasons": [], "events": []}
        selector = dep["spec"].get("selector") or {}
        pods = [
            p
            for p in store.list(by_kind("v1", "Pod"), namespace)
            if match_label_selector(selector, p["metadata"].get("labels") or {})
        ]
        names = {p["metadata"]["name"] for p in pods}
        reasons = sorted({r for p in pods for r in pod_symptoms(p)})
        events = sorted(
            {
                e["reason"]
                for e in store.list(by_kind("v1", "Event"), namespace)
                if e.get("type") == "Warning" and e["involvedObject"].get("name") in names
            }
        )
        return {"reasons": reasons, "events": events}

    def _write_endpoints(self) -> Endpoints:
        kube_url = self.sites["kubernetes"].url
        kubeconfig = self.state_dir / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(kube_url))
        repo = self.scenario.gitops.repo if self.scenario else "acme/gitops"
        site = lambda name: (self._shared_sites.get(name) or self.sites[name]).url  # noqa: E731
        forge_url = site("forge")
        ep = Endpoints(
            kubernetes=kube_url,
            kubeconfig=str(kubeconfig),
            loki=self.sites["loki"].url,
            github_api=f"{forge_url}/api/v3",
            git_base=forge_url,
            gitops_repo=repo,
            gitops_clone_url=f"{forge_url}/{repo}.git",
            github_token=self.github_token,
            twilio_base=site("twilio"),
            twilio_account_sid=self.twilio_sid,
            twilio_auth_token=self.twilio_token,
            twilio_from=self.twilio_from,
            oncall_numbers=list(self.scenario.oncall.numbers) if self.scenario else [],
            state_dir=str(self.state_dir),
            metrics=self.sites["metrics"].url,
            registry=site("registry"),
            loki_tenant=self.loki_tenant or "",
        )
        path = self.state_dir / "endpoints.json"
        path.write_text(json.dumps(asdict(ep), indent=2))
        path.chmod(0o600)  # it holds the sandbox's credentials
        return ep

    # -- synchronous facade (tests, demo) -----------------------------------------

    def start(self, *, load: bool = True, apply_change: bool = True) -> Endpoints:
        self._thread = LoopThread().start()
        try:
            ep = self._thread.call(self.astart)
            if load:
                self._thread.call(lambda: self.aload(apply_change=apply_change), timeout=120)
        except BaseException:
            self.stop()
            raise
        return ep

    def call(self, coro_fn, *args, timeout: float = 60):
        """Run a coroutine function on the world's loop (from another thread)."""
        if self._thread is None:
            raise WorldError("the world is not started")
        return self._thread.call(coro_fn, *args, timeout=timeout)

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            self._thread.call(self.astop, timeout=30)
        finally:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def kubeconfig_text(server_url: str) -> str:
    """A kubeconfig for an API server on loopback: no TLS, no credentials.

    `insecure-skip-tls-verify` is set although there is no TLS to verify: the Node.js
    client (@kubernetes/client-node) refuses an http:// server without it, and kubectl,
    the Python client, lightkube and kr8s ignore it for http://.
    """
    cluster = {"server": server_url, "insecure-skip-tls-verify": True}
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": cluster}],
            "users": [{"name": "sandbox", "user": {}}],
            "contexts": [
                {
                    "name": "sandbox",
                    "context": {"cluster": "sandbox", "user": "sandbox", "namespace": "default"},
                }
            ],
            "current-context": "sandbox",
        }
    )


# The workloads a scenario's world waits for and aifixer fixes.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def _files(manifests: list[ManifestFile]) -> dict[str, str]:
    return {m.path: m.yaml for m in manifests}


def _deployments(manifests: list[ManifestFile]) -> list[tuple[str, str]]:
    out = []
    for mf in manifests:
        for doc in mf.documents():
            if doc.get("kind") in WORKLOAD_KINDS:
                meta = doc.get("metadata") or {}
                out.append((meta.get("namespace", "default"), meta["name"]))
    return out


def pod_symptoms(pod: dict[str, Any]) -> list[str]:
    """The failure reasons a person would read off `kubectl get pods`/`describe` for one pod."""
    out: list[str] = []
    st = pod.get("status") or {}
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            out.append(cond.get("reason") or "Unschedulable")
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            out.append(waiting["reason"])
        last = (cs.get("lastState") or {}).get("terminated")
        if last and last.get("reason") not in (None, "Completed"):
            out.append(last["reason"])
        if (cs.get("state") or {}).get("running") and not cs.get("ready"):
            out.append("NotReady")
    return out
