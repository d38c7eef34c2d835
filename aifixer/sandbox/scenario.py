"""Scenario files: one small world for the sandbox, in YAML.

This format is a contract that other tools write files for, so the keys and their
meanings are fixed (new optional keys may be added). A scenario names the images the
sandbox registry holds and how each behaves, the healthy starting manifests (applied to
the cluster and committed to the GitOps repository), an optional bad `change`, the
on-call people and how each answers, and the outcome the farm should reach.

Loading validates strictly: an unknown key is an error naming the key and the file,
never silently ignored, because a typo in a scenario would otherwise test nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrashSpec(_Strict):
    """An image that starts, then exits on its own whatever its configuration (a bad release)."""

    after_seconds: float = 5  # simulated seconds after start
    exit_code: int = 1
    logs: list[str] = Field(default_factory=list)  # written just before it exits


class Image(_Strict):
    """How a container running this image behaves in the pod simulator."""

    memory_mib: int = 32  # working set; OOMKilled (exit 137) when the memory limit is below it
    cpu_millicores: int = 10
    port: int | None = None  # HTTP port; probes to another port fail (connection refused)
    health_path: str = "/healthz"  # HTTP probes to another path fail with 404
    binaries: list[str] | None = None  # command/args[0] naming another executable exit 127
    requires_env: dict[str, str | None] = Field(default_factory=dict)  # None: must be set
    requires_files: list[str] = Field(default_factory=list)  # must be mounted, else exit 1
    start_seconds: float = 1  # simulated seconds from start to listening/ready
    size_bytes: int = 50_000_000  # reported in the kubelet's Pulled event
    logs: list[str] = Field(default_factory=list)  # printed once started
    crash: CrashSpec | None = None


class Taint(_Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Node(_Strict):
    name: str
    cpu_millicores: int = 4000
    memory_mib: int = 8192
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)


class ManifestFile(_Strict):
    path: str  # path in the GitOps repository
    yaml: str  # one or more YAML documents

    def documents(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.yaml) if d]

    @field_validator("yaml")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            docs = [d for d in yaml.safe_load_all(v) if d]
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {exc}") from exc
        for d in docs:
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                raise ValueError("every document needs apiVersion and kind")
        return v


class OnCall(_Strict):
    numbers: list[str] = Field(default_factory=list)  # called in order
    # What each person does when asked: "yes", "no", "silence", any phrase ("oui",
    # "non, désolé"), "press 1" for a keypad digit; or "no-answer", "busy", "failed"
    # for a call that never connects.
    answers: dict[str, str] = Field(default_factory=dict)


class Symptoms(_Strict):
    """The broken state the scenario must reach, as a person would observe it."""

    pod_reasons: list[str] = Field(
        default_factory=list
    )  # waiting/terminated reasons, Unschedulable, NotReady
    events: list[str] = Field(default_factory=list)  # Warning event reasons on the pods
    logs: list[str] = Field(default_factory=list)  # substrings of lines that reach Loki


class Expect(_Strict):
    outcome: Literal["fixed", "called"]
    changed: list[str] = Field(default_factory=list)  # manifest field paths a fix changes
    symptoms: Symptoms = Field(default_factory=Symptoms)


class GitOps(_Strict):
    repo: str = "acme/gitops"  # owner/name in the forge


DEFAULT_NODES = (Node(name="node-1"),)


class Scenario(_Strict):
    name: str
    description: str = ""
    images: dict[str, Image]
    nodes: list[Node] = Field(default_factory=lambda: list(DEFAULT_NODES))
    manifests: list[ManifestFile]
    change: list[ManifestFile] = Field(default_factory=list)
    oncall: OnCall = Field(default_factory=OnCall)
    expect: Expect
    gitops: GitOps = Field(default_factory=GitOps)

    def image(self, ref: str) -> Image | None:
        """The catalog entry for an image reference, with or without a registry host."""
        if ref in self.images:
            return self.images[ref]
        for prefix in ("docker.io/", "docker.io/library/"):
            if ref.startswith(prefix) and ref[len(prefix) :] in self.images:
                return self.images[ref[len(prefix) :]]
        return None


class ScenarioError(ValueError):
    pass


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{path}: invalid scenario:\n{exc}") from exc


def bundled_dir() -> Path:
    """The scenarios shipped with the project (tests/scenarios in a checkout)."""
    return Path(__file__).resolve().parents[2] / "tests" / "scenarios"


def bundled() -> list[Path]:
    return sorted(bundled_dir().glob("*.yaml"))
