"""Incident memory: what happened before, recalled when it happens again.

Every finished incident leaves a compact record in Redis: its symptoms as text, the
diagnosis, the fix that was applied and how it ended. When a new incident is being
fixed, memory answers two questions:

- `similar`: which past incidents looked most like this one? Their one-line summaries
  go into the model's prompt as examples (a small model copies a worked example better
  than it follows a rule);
- `known_good`: did a fix ever verify for this failure class on symptoms this close?
  It is replayed on the current Deployment and offered FIRST among the candidates; it
  still goes through the guardrails and the server-side dry-run like any other.

Symptoms are compared by the cosine of sentence embeddings (`adapters.embed`). Without
an embedder (not installed, or failing), memory still works, more coarsely: the same
failure class plus the overlap of words; it says so in the log once.

A fix is remembered in general terms so it can be replayed on another workload: the
container index becomes `[*]` (resolved again by container name, or the only
container) and each change keeps its intent rather than its literal value where that
is what made it work: `restore` (the value of the last healthy revision), `scale` (a
quantity multiplied by a factor) or, otherwise, `set` (only where the field still holds
the value the fix replaced).

Redis keys: `aifixer:memory` (sorted set: record id -> time it ended; the oldest go
beyond `memory_max_records`) and `aifixer:memory:<id>` (hash: `record` JSON, `vector`
base64 float32, `embedder` the model the vector came from).
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import logging
import math
import re
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import ModuleType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from . import grounding, manifests
from .adapters.errors import AdapterError
from .guardrails import MEBIBYTE, QuantityError, containers_by_name, parse_quantity, pod_spec
from .models import (
    Evidence,
    FailureClass,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    Outcome,
)
from .settings import Settings

# numpy comes with the embedding model; a few hundred vectors need no more than Python.
# Imported by name, so that its absence can be typed (and tests can set it to None).
numpy: ModuleType | None
try:
    numpy = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - exercised where the embedding extras are not installed
    numpy = None

log = logging.getLogger(__name__)

INDEX_KEY = "aifixer:memory"
RECORD_PREFIX = "aifixer:memory:"
CONTAINERS = "spec.template.spec.containers"
# Outcomes worth learning from: a fix that verified, or a failure a person had to take.
# "recovered" taught nothing, "error" is about aifixer, not about the fault.
REMEMBERED_OUTCOMES = ("fixed", "called", "rejected")
# Below this, a past incident is too unlike the new one to be worth the prompt's tokens.
EXAMPLE_MIN_SIMILARITY = 0.5
MAX_SYMPTOM_CHARS = 1200
MAX_EVENTS, MAX_ERROR_LINES, MAX_DIFF = 4, 3, 5
MEMORY_STEP = 64 * MEBIBYTE
_CONTAINER_INDEX = re.compile(r"^spec\.template\.spec\.containers\[(\d+)\]")
_WORD = re.compile(r"[a-z][a-z0-9]+")
_ERROR_LINE = re.compile(r"(?i)error|fatal|panic|exception|not found|killed|refused|denied")


class Embeds(Protocol):
    """What memory needs from an embedder (`adapters.embed.Embedder` is one)."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RememberedChange(_Record):
    """One change of a past fix, in terms that can be replayed on another Deployment."""

    path: str  # Deployment path; a container index is written containers[*]
    container: str | None = None  # that container's name
    action: Literal["restore", "scale", "set"]
    before: Any = None  # the value the fix replaced
    after: Any = None  # the value it wrote
    factor: float | None = None  # for "scale": after / before


class MemoryRecord(_Record):
    """One finished incident, as memory keeps it."""

    id: str  # fingerprint:opened-at, so a repeated finalize overwrites its own record
    fingerprint: str
    failure_class: FailureClass
    workload: str  # namespace/name
    symptoms: str  # pod reasons, warning events, error lines, template diff; names generalised
    diagnosis: str
    fix: list[RememberedChange]
    fix_strategy: str | None = None
    outcome: Outcome
    time: datetime  # when it ended


class PastIncident(_Record):
    record: MemoryRecord
    similarity: float  # cosine of the symptoms' vectors, or the fallback score; 0..1


class PastFix(_Record):
    """A fix that verified before, replayed on the current Deployment."""

    past: PastIncident
    proposal: FixProposal


class Memory:
    """Finished incidents in Redis, recalled by similarity of symptoms.

    Args:
        redis: a `redis.Redis` client (decoded responses or not).
        embedder: turns symptom texts into vectors; None for the coarse fallback.
        settings: `memory_max_records`, `memory_match_similarity`.
    """

    def __init__(self, redis: Any, embedder: Embeds | None, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._embedder = embedder
        self._query: tuple[str, list[float] | None] | None = None
        if embedder is None:
            _log_fallback("no embedder configured")

    # -- storing -------------------------------------------------------------------------

    def remember(self, state: IncidentState) -> MemoryRecord | None:
        """Store a finished incident; None when it holds nothing to learn from.

        Raises:
            redis.RedisError: Redis cannot be reached or refuses the write.
        """
        record = record_of(state)
        if record is None:
            return None
        vector = self._vector(record.symptoms)
        fields = {"record": record.model_dump_json()}
        if vector is not None and self._embedder is not None:  # a vector: an embedder made it
            fields |= {"vector": _pack(vector), "embedder": self._embedder.name}
        key = RECORD_PREFIX + record.id
        pipe = self.redis.pipeline()
        pipe.delete(key)  # a record stored without a vector must not keep an old one
        pipe.hset(key, mapping=fields)
        pipe.zadd(INDEX_KEY, {record.id: record.time.timestamp()})
        pipe.execute()
        self._evict()
        log.info(
            "[%s] remembered %s incident (%s, %d change(s))",
            record.workload,
            record.failure_class,
            record.outcome,
            len(record.fix),
        )
        return record

    def _evict(self) -> None:
        excess = self.redis.zcard(INDEX_KEY) - self.settings.memory_max_records
        if excess <= 0:
            return
        oldest = [_text(i) for i in self.redis.zrange(INDEX_KEY, 0, excess - 1)]
        pipe = self.redis.pipeline()
        pipe.zrem(INDEX_KEY, *oldest)
        pipe.delete(*(RECORD_PREFIX + i for i in oldest))
        pipe.execute()

    # -- recalling -----------------------------------------------------------------------

    def similar(self, evidence: Evidence, incident: Incident, k: int = 3) -> list[PastIncident]:
        """The `k` stored incidents whose symptoms are nearest this one's, nearest first."""
        return self._ranked(incident, evidence)[:k]

    def known_good(self, incident: Incident, evidence: Evidence) -> PastFix | None:
        """The nearest past fix that verified for this failure class and applies here.

        A past incident qualifies when it ended `fixed`, is of the same failure class,
        and is either the same fingerprint (this workload, this failure) or at least
        `memory_match_similarity` alike; its fix must replay on the live Deployment.
        """
        threshold = self.settings.memory_match_similarity
        for past in self._ranked(incident, evidence):
            r = past.record
            if r.outcome != "fixed" or r.failure_class != incident.failure_class or not r.fix:
                continue
            if r.fingerprint != incident.fingerprint and past.similarity < threshold:
                continue
            proposal = replay(r, evidence)
            if proposal is not None:
                return PastFix(past=past, proposal=proposal)
        return None

    def _ranked(self, incident: Incident, evidence: Evidence) -> list[PastIncident]:
        text = symptoms(incident, evidence)
        query = self._vector(text)
        stored = self._load()
        scores = _scores(
            query, [vector if name == self._name() else None for _, vector, name in stored]
        )
        past = [
            PastIncident(
                record=record,
                similarity=round(
                    score if score is not None else overlap(text, incident.failure_class, record),
                    4,
                ),
            )
            for (record, _, _), score in zip(stored, scores, strict=True)
        ]
        # Same fingerprint first among equals, then the most recent.
        past.sort(
            key=lambda p: (
                p.similarity,
                p.record.fingerprint == incident.fingerprint,
                p.record.time,
            ),
            reverse=True,
        )
        return past

    def _load(self) -> list[tuple[MemoryRecord, list[float] | None, str | None]]:
        ids = [_text(i) for i in self.redis.zrevrange(INDEX_KEY, 0, -1)]
        pipe = self.redis.pipeline()
        for record_id in ids:
            pipe.hgetall(RECORD_PREFIX + record_id)
        out = []
        for record_id, raw in zip(ids, pipe.execute(), strict=True):
            fields = {_text(k): v for k, v in raw.items()}
            if "record" not in fields:
                continue  # evicted between the two reads
            try:
                record = MemoryRecord.model_validate_json(fields["record"])
            except ValueError as exc:
                log.warning("memory record %s is unreadable, skipped: %s", record_id, exc)
                continue
            vector = _unpack(fields["vector"]) if "vector" in fields else None
            embedder = _text(fields["embedder"]) if "embedder" in fields else None
            out.append((record, vector, embedder))
        return out

    # -- vectors -------------------------------------------------------------------------

    def _name(self) -> str | None:
        return self._embedder.name if self._embedder is not None else None

    def _vector(self, text: str) -> list[float] | None:
        """The text's vector, or None once the embedder has failed (fallback from then on)."""
        if self._embedder is None:
            return None
        if self._query is not None and self._query[0] == text:
            return self._query[1]
        try:
            vector = self._embedder.embed([text])[0]
        except AdapterError as exc:
            _log_fallback(f"the embedder failed: {exc}")
            self._embedder = None
            return None
        self._query = (text, vector)
        return vector


def _log_fallback(why: str) -> None:
    log.warning(
        "incident memory without embeddings (%s): similarity by failure class and word overlap",
        why,
    )


# -- records -------------------------------------------------------------------------------


def record_of(state: IncidentState) -> MemoryRecord | None:
    """The compact record of a finished incident, or None when there is nothing to learn."""
    inc, evidence = state.incident, state.evidence
    if state.outcome not in REMEMBERED_OUTCOMES or evidence is None:
        return None
    proposal = state.proposal if state.apply is not None else None
    shown = grounding.shown(state)[0] if state.diagnosis is not None else None
    return MemoryRecord(
        id=f"{inc.fingerprint}:{int(inc.opened_at.timestamp())}",
        fingerprint=inc.fingerprint,
        failure_class=inc.failure_class,
        workload=inc.workload.key,
        symptoms=symptoms(inc, evidence),
        # What later prompts read: the diagnosis the facts bear out, never an untrue one.
        diagnosis=_clip(f"{shown.summary} {shown.root_cause}" if shown else "", 400),
        fix=generalise(proposal.changes, evidence) if proposal else [],
        fix_strategy=proposal.strategy if proposal else None,
        outcome=state.outcome,
        time=state.closed_at or datetime.now(UTC),
    )


def symptoms(incident: Incident, evidence: Evidence) -> str:
    """What the incident looked like, as short text with the workload's own names generalised."""
    lines = [f"failure class {incident.failure_class}"]
    reasons = sorted({r for p in evidence.pods for r in p.reasons})
    if reasons:
        lines.append("pod reasons: " + ", ".join(reasons))
    for term in _unique(_termination(p.last_termination) for p in evidence.pods):
        lines.append(f"last termination: {term}")
    warnings = _unique(
        f"{e.reason}: {_clip(e.message, 160)}" for e in evidence.events if e.type == "Warning"
    )
    lines += [f"event {w}" for w in warnings[-MAX_EVENTS:]]
    lines += [f"log: {line}" for line in _error_lines(evidence)[:MAX_ERROR_LINES]]
    lines += [
        f"changed {_short(c.path)}: {_clip(c.before, 60)} -> {_clip(c.after, 60)}"
        for c in evidence.template_diff[:MAX_DIFF]
    ]
    text = _generalised("\n".join(lines), incident.workload.name)
    return text[:MAX_SYMPTOM_CHARS]


def _termination(term: dict[str, Any] | None) -> str:
    if not term:
        return ""
    return " ".join(f"{k} {term[k]}" for k in ("reason", "exitCode") if term.get(k) is not None)


def _error_lines(evidence: Evidence) -> list[str]:
    """Error lines, the crashed container's own output first."""
    keys = sorted(evidence.pod_logs, key=lambda k: not k.endswith("/previous"))
    lines = [ln for k in keys for ln in evidence.pod_logs[k].splitlines()]
    lines += [ln.line for ln in evidence.logs]
    return _unique(_clip(ln, 160) for ln in lines if _ERROR_LINE.search(ln))


def _generalised(text: str, workload: str) -> str:
    """Pod, ReplicaSet and workload names -> <workload>; timestamps and long hex dropped."""
    text = re.sub(rf"\b{re.escape(workload)}(?:-[a-z0-9]{{4,10}}){{0,2}}\b", "<workload>", text)
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}[T ][\d:.]+Z?\b", "<time>", text)
    return re.sub(r"\b[0-9a-f]{12,}\b", "<hex>", text)


def generalise(changes: list[FieldChange], evidence: Evidence) -> list[RememberedChange]:
    """A fix's changes in replayable terms: container by name, value by intent."""
    containers = manifests.get_path(evidence.deployment, CONTAINERS) or []
    out = []
    for change in changes:
        match = _CONTAINER_INDEX.match(change.path)
        name = None
        path = change.path
        if match:
            index = int(match.group(1))
            name = containers[index].get("name") if index < len(containers) else None
            path = f"{CONTAINERS}[*]" + change.path[match.end() :]
        out.append(_intent(path, name, change, evidence))
    return out


def _intent(
    path: str, container: str | None, change: FieldChange, evidence: Evidence
) -> RememberedChange:
    healthy = _healthy_value(evidence, path, container)
    if healthy is not _ABSENT and healthy == change.after and change.before != change.after:
        return RememberedChange(
            path=path,
            container=container,
            action="restore",
            before=change.before,
            after=change.after,
        )
    factor = _factor(path, change.before, change.after)
    action: Literal["scale", "set"] = "scale" if factor is not None else "set"
    return RememberedChange(
        path=path,
        container=container,
        action=action,
        before=change.before,
        after=change.after,
        factor=factor,
    )


def _factor(path: str, before: Any, after: Any) -> float | None:
    if not path.endswith((".memory", ".cpu")):
        return None
    try:
        old, new = parse_quantity(before), parse_quantity(after)
    except QuantityError:
        return None
    return float(new / old) if old > 0 else None


_ABSENT = object()


def _healthy_value(evidence: Evidence, path: str, container: str | None) -> Any:
    """The value at a generalised path in the last healthy template, or _ABSENT."""
    template = evidence.last_healthy_template
    if template is None:
        return _ABSENT
    if container is None:
        if not path.startswith("spec.template."):
            return _ABSENT
        return manifests.get_path(template, path.removeprefix("spec.template."))
    healthy = containers_by_name(pod_spec(template)).get(container)
    if healthy is None:
        return _ABSENT
    return manifests.get_path(healthy, _rest(path))


def _rest(path: str) -> str:
    """What follows `containers[*].` in a generalised path."""
    return path.removeprefix(f"{CONTAINERS}[*].")


# -- replaying -------------------------------------------------------------------------------


def replay(record: MemoryRecord, evidence: Evidence) -> FixProposal | None:
    """A past fix applied to the live Deployment; None where any of its changes does not fit.

    Pure: reads the record and the evidence only. Each change must resolve its
    container (by name, else the only one) and keep its intent: a `restore` needs a
    last healthy value that differs from the live one, a `scale` a live quantity, a
    `set` a live value equal to the one the fix once replaced.
    """
    base = manifests.clean(evidence.deployment)
    manifest = copy.deepcopy(base)
    for change in record.fix:
        path = _concrete(change, base)
        if path is None:
            return None
        value = _replayed_value(change, manifests.get_path(base, path), evidence)
        if value is _ABSENT:
            return None
        manifests.set_path(manifest, path, copy.deepcopy(value))
    changes = manifests.diff(base, manifest)
    if not changes:
        return None
    when = record.time.strftime("%Y-%m-%d")
    return FixProposal(
        source="playbook",
        strategy=f"remembered:{record.fix_strategy or 'fix'}",
        rationale=(
            f"The same change verified on a past {record.failure_class} incident of "
            f"{record.workload} ({when}): {_clip(record.diagnosis, 200)}"
        ),
        manifest=manifest,
        changes=changes,
    )


def _concrete(change: RememberedChange, base: dict[str, Any]) -> str | None:
    if "[*]" not in change.path:
        return change.path
    containers = manifests.get_path(base, CONTAINERS) or []
    names = [c.get("name") for c in containers]
    if change.container in names:
        index = names.index(change.container)
    elif len(containers) == 1:
        index = 0
    else:
        return None
    return change.path.replace("[*]", f"[{index}]", 1)


def _replayed_value(change: RememberedChange, live: Any, evidence: Evidence) -> Any:
    if change.action == "restore":
        # The live container's own name: the past one's may differ on another workload.
        healthy = _healthy_value(evidence, change.path, _only_name(evidence, change))
        return healthy if healthy is not _ABSENT and healthy != live else _ABSENT
    if change.action == "scale":
        return _scaled(live, change.factor or 0.0, change.path)
    return change.after if live == change.before else _ABSENT


def _only_name(evidence: Evidence, change: RememberedChange) -> str | None:
    containers = manifests.get_path(evidence.deployment, CONTAINERS) or []
    names = [c.get("name") for c in containers]
    if change.container in names or len(names) != 1:
        return change.container
    return names[0]


def _scaled(live: Any, factor: float, path: str) -> Any:
    """`live` times `factor`, rounded up the way a person writes it; _ABSENT if not larger."""
    try:
        current = parse_quantity(live)
    except QuantityError:
        return _ABSENT
    target = current * Decimal(str(factor))
    if target <= current:
        return _ABSENT
    if path.endswith(".memory"):
        return f"{math.ceil(target / MEMORY_STEP) * MEMORY_STEP // MEBIBYTE}Mi"
    return f"{math.ceil(target * 1000)}m"


# -- scoring ---------------------------------------------------------------------------------


def _scores(query: list[float] | None, vectors: list[list[float] | None]) -> list[float | None]:
    """Cosine of `query` with each vector; None where either is missing or they differ in size."""
    if query is None:
        return [None] * len(vectors)
    usable = {i: v for i, v in enumerate(vectors) if v is not None and len(v) == len(query)}
    out: list[float | None] = [None] * len(vectors)
    if not usable:
        return out
    if numpy is not None:
        matrix = numpy.asarray(list(usable.values()), dtype=numpy.float32)
        q = numpy.asarray(query, dtype=numpy.float32)
        norms = numpy.linalg.norm(matrix, axis=1) * numpy.linalg.norm(q)
        cosines = (matrix @ q) / numpy.where(norms == 0, 1, norms)
        values = [float(c) for c in cosines]
    else:
        values = [_cosine(query, v) for v in usable.values()]
    for i, value in zip(usable, values, strict=True):
        out[i] = max(0.0, min(1.0, value))
    return out


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def overlap(text: str, failure_class: str, record: MemoryRecord) -> float:
    """The fallback score: half for the same failure class, half the words' Jaccard index."""
    a, b = set(_WORD.findall(text.lower())), set(_WORD.findall(record.symptoms.lower()))
    jaccard = len(a & b) / len(a | b) if a | b else 0.0
    return 0.5 * (record.failure_class == failure_class) + 0.5 * jaccard


def _pack(vector: list[float]) -> str:
    return base64.b64encode(array("f", vector).tobytes()).decode("ascii")


def _unpack(raw: str | bytes) -> list[float]:
    return array("f", base64.b64decode(raw)).tolist()


# -- prompt examples -------------------------------------------------------------------------


def example_lines(past: list[PastIncident]) -> list[str]:
    """One short line per past incident close enough to be worth the model's time."""
    return [_example(p) for p in past if p.similarity >= EXAMPLE_MIN_SIMILARITY]


def _example(past: PastIncident) -> str:
    r = past.record
    fix = "; ".join(
        f"{_short(c.path)} {_clip(c.before, 40)} -> {_clip(c.after, 40)}" for c in r.fix[:3]
    )
    return _clip(
        f"{r.failure_class}: {_clip(r.diagnosis, 160)} Fix: {fix or 'none applied'}. "
        f"Outcome: {r.outcome}.",
        320,
    )


# -- small helpers ---------------------------------------------------------------------------


def _short(path: str) -> str:
    """A path as a person reads it; template diffs may be rooted at the Deployment or the template."""
    return path.removeprefix("spec.template.").removeprefix("spec.")


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unique(items) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
