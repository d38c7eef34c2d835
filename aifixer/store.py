"""The incident record in Redis: the one owner of an incident's state.

Celery messages carry an incident's id, never its manifests or logs; every stage loads
the record, acts, and saves it with the stage it reached. Whatever a worker loses (a
SIGKILL, a lost message, a whole machine), the record says where the incident stood,
and the watchdog can finish it.

An incident id names one occurrence: the fingerprint (cluster, namespace, kind, name,
failure class) and the millisecond it opened. Every side effect that must happen at
most once is keyed by it: the rollback snapshot, each dialled number, the pull
request's branch.

Keys, under `aifixer:`:
- `incident:<id>` — the IncidentState (JSON); `incidents` — every id, by opening time;
- `open` — the ids not yet closed, scored by their last progress (the watchdog's view);
- `calls:<id>` — the calls that ended, appended by whoever saw them end;
- `snapshot:<id>` — the Deployment before aifixer's first write (SET NX: taken once);
- `gitops:<id>` — the GitOps controller's self-heal paused for the fix (SET NX: once);
  `gitops-paused` — the ids whose pause is not restored yet (the watchdog's view);
- `copy:<id>` — the temporary copy of the Deployment the fix is verified on where
  self-heal may not be paused (SET NX: once); `copies` — the ids whose copy is not
  removed yet, by deadline (the watchdog's view);
- `dialed:<id>:<number>` — a number dialled for this incident (SET NX: dialled once);
- `lock:<cluster>:<ns>:<name>` — the one open incident of a workload (its id); the name is
  <Kind>/<name> for a StatefulSet or DaemonSet; on the default cluster, one under its
  previous name (`previous_cluster`) counts too;
- `done:<fingerprint>` — the generation an incident of this failure ended on (cooldown);
- `cursor:loki:<cluster>`, `cursor:events:<cluster>` — where each cluster's polls resume
  (`cursor:loki`, `cursor:events` before: read once for the default cluster);
- `verify:<id>` — verification progress between non-blocking checks;
- `escalated:<id>` — the phone escalation ended (someone said yes, or nobody is left).

Every Redis failure leaves here as a `TransientError("redis", ...)`, so a stage retries
a Redis restart like any other outage.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

import redis as redis_lib

from .adapters.errors import TransientError
from .models import (
    DEFAULT_CLUSTER,
    STORED,
    CallRecord,
    GitOpsPause,
    IncidentState,
    Manifest,
    Record,
    Snapshot,
    VerifyCopy,
    stored,
)

PREFIX = "aifixer:"
_INCIDENT_ID = re.compile(r"[0-9a-f]{16}-[0-9]{13}")  # fingerprint-openedms, see models
_PAGE = 500
SYSTEM = "redis"
KEEP_S = 7 * 86400  # how long per-incident keys outlive the incident

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=Record)


def _translated(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except redis_lib.RedisError as exc:
            raise TransientError(SYSTEM, f"{fn.__name__}: {exc}") from exc

    return wrapper


# The farm's call budget: a sliding hour of placed calls, checked and taken at once.
_CALL_SLOT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return 1
"""


class Store:
    """Incident records and their at-most-once keys, in Redis.

    Args:
        redis: a `redis.Redis` with `decode_responses=True`.
        lock_ttl_s: how long a workload's lock lives without progress; every save
            renews it, so a slow incident never loses its lock to a twin.
        default_cluster: the cluster a record stored without one is about.
        previous_cluster: the name the default cluster had in a farm of one cluster,
            when the clusters file names it otherwise: a workload's lock taken under
            that name (an incident open at the switch) also holds the workload on the
            default cluster, so it is never worked on twice.

    The client decodes, so its replies are strings: redis-py types them `bytes | str`
    (one type for both kinds of client), hence the casts.
    """

    def __init__(
        self,
        redis: redis_lib.Redis,
        lock_ttl_s: float,
        default_cluster: str = DEFAULT_CLUSTER,
        previous_cluster: str | None = None,
    ) -> None:
        self.redis = redis
        self.lock_ttl_s = int(lock_ttl_s)
        self.stored = stored(default_cluster)
        self.default_cluster = default_cluster
        self.previous_cluster = previous_cluster if previous_cluster != default_cluster else None

    @staticmethod
    def key(*parts: str) -> str:
        return PREFIX + ":".join(parts)

    # -- the record -------------------------------------------------------------------

    @_translated
    def create(self, state: IncidentState, lock: str) -> bool:
        """Open the incident if its workload has none open; False if one is.

        `lock` is the workload's lock key; its value is the incident id.
        """
        w = state.incident.workload
        if self.held(w.cluster, [(w.namespace, w.kind, w.name)]):
            return False  # also under the default cluster's previous name
        if not self.redis.set(lock, state.incident.id, nx=True, ex=self.lock_ttl_s):
            return False
        state.updated_at = time.time()
        self._write(state, create=True)
        return True

    @_translated
    def save(self, state: IncidentState, stage: str | None = None) -> None:
        """Write the record; `stage` is what it just reached (shown by `aifixer incidents`).

        Optimistic: the write lands only if nobody saved the record since it was loaded
        (its `version`); otherwise `StaleRecord`, and the caller loads it again. A slow
        stage can never undo what the watchdog or another stage recorded meanwhile.
        """
        if stage is not None:
            state.stage = stage
        state.updated_at = time.time()
        self._write(state)

    def _write(self, state: IncidentState, *, create: bool = False) -> None:
        inc = state.incident
        expected = state.version
        state.version = expected + 1
        ok = self._save_script(
            keys=[
                self.key("incident", inc.id),
                self.key("incidents"),
                self.key("open"),
                self.lock_key(state),
            ],
            args=[
                inc.id,
                expected,
                state.model_dump_json(),
                inc.opened_at.timestamp(),
                state.updated_at,
                1 if state.closed_at is None else 0,
                self.lock_ttl_s,
                1 if create else 0,
            ],
        )
        if not ok:
            state.version = expected
            raise StaleRecord(SYSTEM, f"incident {inc.id} was saved by someone else meanwhile")

    @functools.cached_property
    def _save_script(self):
        return self.redis.register_script(_SAVE)

    @_translated
    def touch(self, state: IncidentState) -> None:
        """Progress without a new record (a verify check): the watchdog and the lock see it."""
        pipe = self.redis.pipeline()
        pipe.zadd(self.key("open"), {state.incident.id: time.time()}, xx=True)
        pipe.expire(self.lock_key(state), self.lock_ttl_s)
        pipe.execute()

    @_translated
    def forget_open(self, incident_id: str) -> None:
        self.redis.zrem(self.key("open"), incident_id)

    def lock_key(self, state: IncidentState) -> str:
        w = state.incident.workload
        return self.key("lock", w.cluster, w.namespace, locked_name(w.kind, w.name))

    @_translated
    def load(self, incident_id: str) -> IncidentState | None:
        """The incident's record, with every call recorded on it so far.

        Calls live in their own list, appended by whoever saw a call end, so a stage
        saving the record at the same moment can never drop one.
        """
        raw = self.redis.get(self.key("incident", incident_id))
        if not raw:
            return None
        state = IncidentState.model_validate_json(raw, context=self.stored)
        calls: dict[str, CallRecord] = {}
        for item in self.redis.lrange(self.key("calls", incident_id), 0, -1):
            call = CallRecord.model_validate_json(item, context=STORED)
            calls[call.call_sid or f"attempt-{call.attempt}"] = call
        state.calls = sorted(calls.values(), key=lambda c: c.attempt)
        return state

    @_translated
    def all_ids(self) -> list[str]:
        return list(cast("list[str]", self.redis.zrange(self.key("incidents"), 0, -1)))

    @_translated
    def stalled(self, older_than_s: float) -> list[str]:
        """Open incidents that made no progress for `older_than_s` seconds."""
        due = self.redis.zrangebyscore(self.key("open"), "-inf", time.time() - older_than_s)
        return list(cast("list[str]", due))

    @_translated
    def waiting(self, incident_ids: list[str], queue_keys: list[str]) -> set[str]:
        """Those of `incident_ids` with a message still waiting in one of `queue_keys`.

        The broker's queues are Redis lists of JSON messages whose headers name the
        task's arguments (`argsrepr`), so an incident whose next stage is merely queued
        behind a burst of others is told apart from one whose message was lost. Read in
        pages, only when some incident looks stalled.
        """
        wanted, found = set(incident_ids), set[str]()
        other = {i for i in wanted if not _INCIDENT_ID.fullmatch(i)}  # ids given by hand
        for key in queue_keys:
            start = 0
            while wanted - found:
                page = cast("list[str]", self.redis.lrange(key, start, start + _PAGE - 1))
                for message in page:
                    found.update(i for i in _INCIDENT_ID.findall(message) if i in wanted)
                    found.update(i for i in other if i in message)
                if len(page) < _PAGE:
                    break
                start += _PAGE
        return found

    @_translated
    def add_call(self, incident_id: str, record: CallRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.rpush(self.key("calls", incident_id), record.model_dump_json())
        pipe.expire(self.key("calls", incident_id), KEEP_S)
        pipe.execute()

    @_translated
    def release(self, state: IncidentState, done_generation: int | None, cooldown_s: float) -> None:
        """Free the workload (if this incident still holds it); remember the revision."""
        inc = state.incident
        lock = self.lock_key(state)
        pipe = self.redis.pipeline()
        if done_generation is not None:
            pipe.set(self.key("done", inc.fingerprint), str(done_generation), ex=int(cooldown_s))
        pipe.zrem(self.key("open"), inc.id)
        pipe.execute()
        # Only our own lock: a compare-and-delete, so a late finalize never frees a twin's.
        self.redis.eval(_DELETE_IF_EQUAL, 1, lock, inc.id)

    # -- at most once -----------------------------------------------------------------

    @_translated
    def snapshot_once(self, incident_id: str, snapshot: Snapshot) -> Snapshot:
        """The rollback snapshot: `snapshot` if none was taken yet, else the first one."""
        key = self.key("snapshot", incident_id)
        if self.redis.set(key, snapshot.model_dump_json(), nx=True, ex=KEEP_S):
            return snapshot
        # The SET NX was refused: the first snapshot is there.
        return Snapshot.model_validate_json(cast("str", self.redis.get(key)), context=STORED)

    @_translated
    def snapshot(self, incident_id: str) -> Snapshot | None:
        raw = self.redis.get(self.key("snapshot", incident_id))
        return None if raw is None else Snapshot.model_validate_json(raw, context=STORED)

    @_translated
    def pause_once(self, incident_id: str, pause: GitOpsPause) -> GitOpsPause:
        """The incident's self-heal pause: `pause` if none was recorded yet, else the first.

        Recorded before the controller is touched, and listed as pending until
        `resumed`: a worker lost right after pausing leaves it for the watchdog.
        """
        return self._once("gitops", "gitops-paused", incident_id, pause, time.time())

    def gitops_pause(self, incident_id: str) -> GitOpsPause | None:
        return self._recorded("gitops", incident_id, GitOpsPause)

    def resumed(self, incident_id: str, pause: GitOpsPause) -> None:
        """The pause is over (`pause.restored_at` set): recorded, no longer pending."""
        self._ended("gitops", "gitops-paused", incident_id, pause)

    def resumed_nothing(self, incident_id: str) -> None:
        """A pending id without a pause record (expired): no longer pending."""
        self._ended("gitops", "gitops-paused", incident_id, None)

    def paused(self) -> list[str]:
        """The incidents whose paused self-heal is not restored yet, oldest first."""
        return self._pending("gitops-paused")

    def copy_once(self, incident_id: str, record: VerifyCopy) -> VerifyCopy:
        """The incident's verification copy: `record` if none was recorded yet, else the first.

        Recorded before the copy is created, and listed as pending (by its deadline)
        until `copy_removed`: a worker lost right after creating it leaves it for the
        watchdog, which finds it by this record.
        """
        return self._once("copy", "copies", incident_id, record, record.deadline)

    def verify_copy(self, incident_id: str) -> VerifyCopy | None:
        return self._recorded("copy", incident_id, VerifyCopy)

    def copy_removed(self, incident_id: str, record: VerifyCopy | None) -> None:
        """The copy is gone (`record.removed_at` set): recorded, no longer pending."""
        self._ended("copy", "copies", incident_id, record)

    def copies(self) -> list[str]:
        """The incidents whose verification copy is not removed yet, earliest deadline first."""
        return self._pending("copies")

    # -- a side effect outside the farm, recorded once and pending until undone

    @_translated
    def _once(self, kind: str, pending: str, incident_id: str, record: R, score: float) -> R:
        key = self.key(kind, incident_id)
        with self.redis.pipeline() as pipe:
            pipe.set(key, record.model_dump_json(), nx=True, ex=KEEP_S)
            pipe.zadd(self.key(pending), {incident_id: score}, nx=True)
            first, _ = pipe.execute()
        if first:
            return record
        return type(record).model_validate_json(cast("str", self.redis.get(key)), context=STORED)

    @_translated
    def _recorded(self, kind: str, incident_id: str, model: type[R]) -> R | None:
        raw = self.redis.get(self.key(kind, incident_id))
        return None if raw is None else model.model_validate_json(raw, context=STORED)

    @_translated
    def _ended(self, kind: str, pending: str, incident_id: str, record: Record | None) -> None:
        with self.redis.pipeline() as pipe:
            if record is not None:
                pipe.set(self.key(kind, incident_id), record.model_dump_json(), xx=True, ex=KEEP_S)
            pipe.zrem(self.key(pending), incident_id)
            pipe.execute()

    @_translated
    def _pending(self, pending: str) -> list[str]:
        return cast("list[str]", self.redis.zrange(self.key(pending), 0, _PAGE - 1))

    @_translated
    def take_call_slot(self, incident_id: str, number: str, per_hour: int) -> bool:
        """True if a call may be placed now: fewer than `per_hour` in the last hour.

        One budget for the whole farm, whatever the incidents: a flood of failures (or
        someone making an application fail on purpose) cannot turn into a flood of calls.
        """
        script = self.redis.register_script(_CALL_SLOT)
        member = f"{incident_id}:{number}"
        return bool(
            script(keys=[self.key("calls-placed")], args=[time.time(), 3600, per_hour, member])
        )

    def claim_dial(self, incident_id: str, number: str) -> bool:
        """True once per (incident, number): the right to dial it."""
        key = self.key("dialed", incident_id, number)
        return bool(self.redis.set(key, json.dumps({"at": time.time()}), nx=True, ex=KEEP_S))

    @contextlib.contextmanager
    def dialling(self, incident_id: str, ttl_s: float = 60.0) -> Iterator[None]:
        """One dialler per incident at a time (a lease that ends by itself if its holder dies).

        Raises:
            Busy: another worker is dialling for this incident; retry shortly.
        """
        key, token = self.key("dialling", incident_id), uuid.uuid4().hex
        try:
            taken = self.redis.set(key, token, nx=True, ex=int(ttl_s))
        except redis_lib.RedisError as exc:
            raise TransientError(SYSTEM, f"dialling: {exc}") from exc
        if not taken:
            left = self.redis.ttl(key)
            raise Busy(
                "aifixer",
                f"another worker is dialling for incident {incident_id}",
                retry_after=float(max(1, min(left, 10))) if left and left > 0 else 5.0,
            )
        try:
            yield
        finally:
            try:
                self.redis.eval(_DELETE_IF_EQUAL, 1, key, token)
            except redis_lib.RedisError:
                pass  # the lease ends by itself

    @_translated
    def own_call(self, call_sid: str, incident_id: str) -> None:
        self.redis.set(self.key("callsid", call_sid), incident_id, ex=KEEP_S)

    @_translated
    def call_owner(self, call_sid: str) -> str | None:
        """The incident a call was placed for, if aifixer recorded it."""
        return cast("str | None", self.redis.get(self.key("callsid", call_sid)))

    @_translated
    def mark_escalation_done(self, incident_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.key("escalated", incident_id), "1", ex=KEEP_S)
        pipe.zrem(self.key("escalating"), incident_id)
        pipe.execute()

    @_translated
    def watch_escalation(self, incident_id: str, due_in_s: float) -> None:
        """The escalation should have moved on (a call ended) within `due_in_s`."""
        self.redis.zadd(self.key("escalating"), {incident_id: time.time() + due_in_s})

    @_translated
    def escalations_due(self) -> list[str]:
        due = self.redis.zrangebyscore(self.key("escalating"), "-inf", time.time())
        return list(cast("list[str]", due))

    @_translated
    def escalation_done(self, incident_id: str) -> bool:
        return bool(self.redis.exists(self.key("escalated", incident_id)))

    # -- small shared values ----------------------------------------------------------

    # -- pull requests whose fate (merged, closed unmerged) is still to be read

    @_translated
    def watch_pull(self, incident_id: str) -> None:
        """The incident has a pull request for the periodic check to follow."""
        self.redis.zadd(self.key("pulls"), {incident_id: 0}, nx=True)

    @_translated
    def pulls_to_check(self, limit: int) -> list[str]:
        """At most `limit` incidents with a pull request to check, least recently checked first."""
        return list(cast("list[str]", self.redis.zrange(self.key("pulls"), 0, max(0, limit - 1))))

    @_translated
    def checked_pull(self, incident_id: str) -> None:
        """Checked now (still open): the others go first next round."""
        self.redis.zadd(self.key("pulls"), {incident_id: time.time()}, xx=True)

    @_translated
    def forget_pull(self, incident_id: str) -> None:
        self.redis.zrem(self.key("pulls"), incident_id)

    @_translated
    def get(self, *parts: str) -> str | None:
        return cast("str | None", self.redis.get(self.key(*parts)))

    @_translated
    def set(self, value: str, *parts: str, ttl_s: float | None = None) -> None:
        self.redis.set(self.key(*parts), value, ex=int(ttl_s) if ttl_s else None)

    @_translated
    def take_turn(self, every_s: float, *parts: str) -> bool:
        """True for the first caller in each `every_s` window, across every worker (SET
        NX with that expiry): a periodic chore shared by the farm runs once a window."""
        key = self.key("turn", *parts)
        return bool(self.redis.set(key, "1", nx=True, px=max(1, int(every_s * 1000))))

    @_translated
    def delete(self, *parts: str) -> None:
        self.redis.delete(self.key(*parts))

    @_translated
    def hgetall(self, *parts: str) -> dict[str, Any]:
        return cast("dict[str, Any]", self.redis.hgetall(self.key(*parts)))

    @_translated
    def hset(self, mapping: dict[str, Any], *parts: str, ttl_s: float) -> None:
        pipe = self.redis.pipeline()
        # redis-py's Mapping[FieldT, EncodableT] is invariant in its key union: it refuses
        # every dict[str, ...], though it accepts one at run time.
        pipe.hset(self.key(*parts), mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(self.key(*parts), int(ttl_s))
        pipe.execute()

    @_translated
    def lock_holder(
        self, cluster: str, namespace: str, name: str, kind: str = "Deployment"
    ) -> str | None:
        key = self.key("lock", cluster, namespace, locked_name(kind, name))
        return cast("str | None", self.redis.get(key))

    @_translated
    def held(
        self, cluster: str, workloads: list[tuple[str, str, str]]
    ) -> builtins.set[tuple[str, str, str]]:  # `set` here is the method above
        """Those (namespace, kind, name) whose workload lock an open incident holds: one MGET.

        On the default cluster, a lock under its previous name (`previous_cluster`) holds
        the workload too.
        """
        if not workloads:
            return set()
        names = [cluster]
        if cluster == self.default_cluster and self.previous_cluster is not None:
            names.append(self.previous_cluster)
        keys = [
            self.key("lock", c, ns, locked_name(kind, n))
            for c in names
            for ns, kind, n in workloads
        ]
        holders = self.redis.mget(keys)
        return {
            workloads[i % len(workloads)] for i, holder in enumerate(holders) if holder is not None
        }

    @_translated
    def locks(self) -> dict[str, str]:
        """Every workload lock and the incident id it holds."""
        out: dict[str, str] = {}
        for key in self.redis.scan_iter(match=self.key("lock", "*"), count=500):
            value = cast("str | None", self.redis.get(key))
            if value is not None:
                out[key] = value
        return out

    @_translated
    def drop_lock(self, key: str, incident_id: str) -> None:
        self.redis.eval(_DELETE_IF_EQUAL, 1, key, incident_id)


def locked_name(kind: str, name: str) -> str:
    """A workload's part of its lock key: the name for a Deployment (the keys of records
    from before other kinds were watched), <Kind>/<name> for the others, so a Deployment
    and a StatefulSet of one name never share a lock."""
    return name if kind == "Deployment" else f"{kind}/{name}"


class Busy(TransientError):
    """Another worker holds a lease on this work; retry after `retry_after` (not an error)."""


class StaleRecord(TransientError):
    """The record changed since it was loaded: load it again and redo the step."""


# KEYS: record, index, open set, lock. ARGV: id, expected version, JSON, opened-at,
# updated-at, still open (1/0), lock TTL, create (1/0). The version lives inside the JSON
# record itself ("version": n), read back with cjson.
_SAVE = """
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[8] == '1' then return 0 end
  local version = cjson.decode(current)['version'] or 0
  if tostring(version) ~= ARGV[2] then return 0 end
elseif ARGV[2] ~= '0' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
"""

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def snapshot_of(live: Manifest) -> Snapshot:
    """The rollback snapshot of a live Deployment."""
    from . import manifests

    meta = live.get("metadata") or {}
    return Snapshot(
        manifest=manifests.clean(live),
        generation=int(meta.get("generation") or 0),
        taken_at=time.time(),
    )
