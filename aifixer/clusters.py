"""Several clusters from one farm: the clusters file (AIFIXER_CLUSTERS_FILE).

One farm may watch several application clusters (staging, prod, regions), each with
its own API server, Loki tenant, part of the GitOps repository and on-call list. They
are described in one YAML file, named by AIFIXER_CLUSTERS_FILE::

    default: prod                  # records and alerts that name no cluster (default: the first)
    clusters:
      - name: prod                 # a DNS label: part of every fingerprint, lock and branch
        kubeconfig: prod.kubeconfig  # relative to this file; omitted: in-cluster config
        context: prod              # optional: a context of that kubeconfig (needs it)
        namespaces: [shop]         # optional: watched namespaces (default: all)
        loki:
          url: http://loki-prod.monitoring:3100
          tenant: prod             # optional: X-Scope-OrgID
          username: prod           # optional: basic auth, with the password below
          password_env: LOKI_PROD_PASSWORD
        gitops:                    # optional; each key defaults to the AIFIXER_* setting
          repo: acme/deploy
          token_env: GITOPS_PROD_TOKEN
          path: overlays/prod      # this cluster's part of the repository
          paths: {shop/checkout: overlays/prod/checkout}
        oncall: ["+33600000001"]   # optional: default AIFIXER_ONCALL_NUMBERS

Secrets are never written in the file: a key holding one is named by the environment
variable that holds it (`*_env`), and an inline `token`, `password` or a URL with
credentials is refused. Loading is all or nothing: any problem is one `ClustersError`
naming the file and every bad key.

Without the file, the AIFIXER_KUBECONFIG, AIFIXER_LOKI_URL... settings are one implicit
cluster named AIFIXER_CLUSTER_NAME, exactly as before. With it, a record, a lock or a
pause naming AIFIXER_CLUSTER_NAME (the farm of one cluster's, open at the switch) is the
default cluster's, unless the file lists a cluster of that name. Either way each cluster is a
`Settings` of its own (the farm's, with the cluster's values in place), so every
adapter built from it talks to that cluster's endpoints only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .settings import Settings

# A cluster's name: a DNS label (it appears in Redis keys, pull request markers and the
# call's speech), at most 40 characters.
NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")
# Loki's tenant IDs: up to 150 of these characters (Loki rejects "." and ".." alone).
TENANT = re.compile(r"[A-Za-z0-9!\-_.*'()]{1,150}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PHONE = re.compile(r"\+[1-9][0-9]{6,14}")  # E.164
REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
WORKLOAD_KEY = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
SECRET_KEYS = ("token", "password", "secret", "auth", "credentials", "api_key", "bearer")
MAX_CLUSTERS = 50


class ClustersError(ValueError):
    """The clusters file cannot be used; the message names the file and every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key.lower() in SECRET_KEYS:
                    raise ValueError(
                        f"{key!r}: secrets are not written in the clusters file; name the "
                        f"environment variable that holds it ({key.lower()}_env)"
                    )
        return data


def _env_name(v: str | None) -> str | None:
    # The value is never echoed: a secret pasted here in place of a name would be logged.
    if v is not None and not ENV_NAME.fullmatch(v):
        raise ValueError("not an environment variable name (the secret itself goes in one)")
    return v


def _http_url(v: str, credentials_key: str) -> str:
    """An http(s) URL without credentials. The value is never echoed: it may hold some
    (`user:password@host` without a scheme is no URL)."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL (http://host:port/...)")
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError(f"credentials do not belong in the URL: {credentials_key}")
    return v


class LokiConfig(_Strict):
    url: str
    tenant: str | None = None  # sent as X-Scope-OrgID
    username: str | None = None
    password_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "username and password_env")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        if v is not None and (not TENANT.fullmatch(v) or v in (".", "..")):
            raise ValueError(f"{v!r} is not a Loki tenant ID")
        return v

    _password_env = field_validator("password_env")(_env_name)

    @model_validator(mode="after")
    def _pair(self) -> LokiConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        return self


class GitOpsConfig(_Strict):
    repo: str | None = None  # owner/name; default AIFIXER_GITHUB_REPO
    clone_url: str | None = None  # default: derived from AIFIXER_GIT_CLONE_URL, or GitHub's
    base_branch: str | None = None
    token_env: str | None = None  # default AIFIXER_GITHUB_TOKEN
    # The repository path of this cluster's workloads (a kustomize overlay, a chart or a
    # values file, a manifest), unless `paths` names one for the workload.
    path: str | None = None
    paths: dict[str, str] = Field(default_factory=dict)  # "namespace/name": path

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None and not REPO.fullmatch(v):
            raise ValueError(f"{v!r} is not owner/name")
        return v

    @field_validator("clone_url")
    @classmethod
    def _clone_url(cls, v: str | None) -> str | None:
        return _http_url(v, "token_env") if v is not None else v

    _token_env = field_validator("token_env")(_env_name)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _repo_path(v) if v is not None else v

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: dict[str, str]) -> dict[str, str]:
        for key, path in v.items():
            if not WORKLOAD_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not namespace/name")
            _repo_path(path)
        return v


def _repo_path(v: str) -> str:
    """A path inside the repository: relative, no `..`, nothing a tool reads as an option."""
    parts = Path(v).parts
    if not v or v.startswith(("/", "-")) or ".." in parts or "\\" in v:
        raise ValueError(f"{v!r} is not a path inside the repository")
    return v


class ClusterConfig(_Strict):
    name: str
    kubeconfig: Path | None = None  # omitted: the in-cluster configuration
    context: str | None = None
    namespaces: list[str] = Field(default_factory=list)
    loki: LokiConfig
    gitops: GitOpsConfig = Field(default_factory=GitOpsConfig)
    oncall: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a cluster name (a DNS label: a-z, 0-9, '-')")
        return v

    @field_validator("oncall")
    @classmethod
    def _numbers(cls, v: list[str]) -> list[str]:
        for number in v:
            if not PHONE.fullmatch(number):
                raise ValueError(f"{number!r} is not a phone number in E.164 form (+15550001234)")
        return v


class ClustersFile(_Strict):
    clusters: list[ClusterConfig] = Field(min_length=1, max_length=MAX_CLUSTERS)
    default: str | None = None

    @model_validator(mode="after")
    def _names(self) -> ClustersFile:
        names = [c.name for c in self.clusters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"cluster names must differ: {', '.join(twice)} more than once")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default: {self.default!r} is none of the clusters listed")
        # A context is one of a kubeconfig's: without the file, it would name nothing and
        # the entry would silently be the farm's own cluster under another name.
        bare = [c.name for c in self.clusters if c.kubeconfig is None and c.context is not None]
        if bare:
            raise ValueError(
                f"context: names a context of the cluster's kubeconfig, so kubeconfig: is "
                f"required with it (omit both for the cluster the farm runs in): "
                f"{', '.join(bare)}"
            )
        incluster = [c.name for c in self.clusters if c.kubeconfig is None]
        if len(incluster) > 1:
            raise ValueError(
                f"only one cluster can be the one the farm runs in (no kubeconfig): "
                f"{', '.join(incluster)}"
            )
        # Two names for one API server would be two incidents and two fixes of one failure.
        seen: dict[tuple[str, str | None], str] = {}
        for c in self.clusters:
            if c.kubeconfig is None:
                continue
            where = (os.path.normpath(c.kubeconfig), c.context)
            if where in seen:
                raise ValueError(
                    f"{seen[where]} and {c.name} name the same kubeconfig and context: one "
                    f"cluster under two names"
                )
            seen[where] = c.name
        return self


@dataclass(frozen=True)
class Clusters:
    """The clusters the farm watches: each one's settings, in the file's order."""

    settings: Mapping[str, Settings]
    default: str
    from_file: bool  # named in a clusters file (else the implicit one of AIFIXER_*)
    # AIFIXER_CLUSTER_NAME when the file does not list it: the name the records, locks
    # and self-heal pauses of the farm of one cluster carry, which that cluster — now
    # the default one — still answers to, so an incident open at the switch ends.
    previous: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.settings)


def load(base: Settings, environ: Mapping[str, str] | None = None) -> Clusters:
    """The clusters `base` describes: its clusters file's, or the implicit one.

    Raises:
        ClustersError: the file cannot be read or parsed, a key is unknown or invalid, a
            secret is inline, or a named environment variable is unset.
    """
    if base.clusters_file is None:
        return Clusters({base.cluster_name: base}, base.cluster_name, from_file=False)
    path = base.clusters_file
    env = os.environ if environ is None else environ
    parsed = parse(path)
    problems: list[str] = []
    out: dict[str, Settings] = {}
    for i, c in enumerate(parsed.clusters):
        where = f"clusters[{i}] ({c.name})"
        try:
            out[c.name] = cluster_settings(base, c, path.parent, env)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ClustersError(f"{path}: " + "; ".join(problems))
    previous = base.cluster_name if base.cluster_name not in out else None
    return Clusters(
        out, parsed.default or parsed.clusters[0].name, from_file=True, previous=previous
    )


def names(base: Settings) -> tuple[list[str], bool]:
    """The clusters' names (in the file's order) and whether they come from a file: what
    beat needs, without the clusters' secrets (beat is given none).

    Raises:
        ClustersError: the file cannot be read or parsed, or a key is unknown or invalid.
    """
    if base.clusters_file is None:
        return [base.cluster_name], False
    return [c.name for c in parse(base.clusters_file).clusters], True


def default_name(base: Settings) -> str | None:
    """The default cluster's name when a clusters file names the clusters (None without
    one): what `aifixer web` needs, without the clusters' secrets.

    Raises:
        ClustersError: the file cannot be read or parsed, or a key is unknown or invalid.
    """
    if base.clusters_file is None:
        return None
    parsed = parse(base.clusters_file)
    return parsed.default or parsed.clusters[0].name


def parse(path: Path) -> ClustersFile:
    """The clusters file, validated (see the module's docstring for its form)."""
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text())
    except OSError as exc:
        raise ClustersError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, MarkedYAMLError) else None
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ClustersError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ClustersError(f"{path}: the clusters file is a YAML mapping with a clusters: list")
    try:
        return ClustersFile.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{_loc(e['loc'], data)}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise ClustersError(f"{path}: invalid clusters file: {fields}") from None


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """`clusters[1].loki.url`, the way the file reads."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def cluster_settings(
    base: Settings, c: ClusterConfig, directory: Path, env: Mapping[str, str]
) -> Settings:
    """The farm's settings with cluster `c`'s in place of the single-cluster ones.

    Raises:
        ValueError: a named environment variable is unset or empty.
    """
    # Read by the Kubernetes adapter when the cluster is first reached (a pod that never
    # reaches the clusters, web or beat, needs no kubeconfig mounted).
    kubeconfig = None
    if c.kubeconfig is not None:
        kubeconfig = c.kubeconfig if c.kubeconfig.is_absolute() else directory / c.kubeconfig
    g = c.gitops
    repo = g.repo or base.github_repo
    clone_url = g.clone_url
    if clone_url is None and base.git_clone_url:
        if repo == base.github_repo:
            clone_url = base.git_clone_url
        elif base.git_clone_url.endswith(f"/{base.github_repo}.git"):
            # The same forge as the farm's repository: its sibling there.
            clone_url = base.git_clone_url[: -len(f"{base.github_repo}.git")] + f"{repo}.git"
    update: dict[str, Any] = {
        "cluster_name": c.name,
        "kubeconfig": kubeconfig,
        "kube_context": c.context,
        "namespaces": list(c.namespaces),
        "loki_url": c.loki.url,
        "loki_org_id": c.loki.tenant,
        "loki_username": c.loki.username,
        "loki_password": _secret(env, c.loki.password_env, "loki.password_env"),
        "github_repo": repo,
        "git_clone_url": clone_url,
        "git_base_branch": g.base_branch or base.git_base_branch,
        "gitops_paths": dict(g.paths),
        "gitops_path": g.path,
        "oncall_numbers": list(c.oncall) or list(base.oncall_numbers),
    }
    if g.token_env is not None:
        update["github_token"] = _secret(env, g.token_env, "gitops.token_env")
    return base.model_copy(update=update)


def _secret(env: Mapping[str, str], name: str | None, key: str) -> SecretStr | None:
    if name is None:
        return None
    value = env.get(name)
    if not value:
        # The variable's name is not echoed: a token pasted in place of it looks like one.
        raise ValueError(f"{key}: the environment variable it names is not set")
    return SecretStr(value)
